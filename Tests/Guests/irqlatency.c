/* Interrupt latency: the local APIC timer armed one-shot for delay=NS nanoseconds, samples=N times, the guest
 * waiting in HLT; each sample is the TSC from arming to the first instruction of the handler. Prints
 * "irqlat: samples=N delay=NS min=C total=C" (cycles) and exits with status 0. The delay is subtracted by
 * whoever knows the TSC rate. warmup=W takes W samples first and prints them apart, before the others, as
 * "irqlat-warmup: samples=W delay=NS min=C total=C": a VM's first few hundred milliseconds are noisier than what
 * follows. dump=1 also prints each measured sample's cycles, one line "irqlat-samples: c1,c2,..." (at most the
 * first 4096), to look at the spread. */
#include "guest.h"

volatile uint32_t fired_lo, fired_hi;
void isr_timer(void);
static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static uint64_t each[4096];

/* One sample: the TSC from arming the timer to its handler's first instruction. */
static uint64_t sample(uint32_t delay) {
    fired_lo = fired_hi = 0;
    uint64_t start = rdtsc();
    lapic[0x380 / 4] = delay;
    while (!fired_lo && !fired_hi) __asm__ volatile("sti; hlt; cli");
    return (((uint64_t)fired_hi << 32) | fired_lo) - start;
}

static void report(const char *prefix, uint32_t samples, uint32_t delay, uint64_t min, uint64_t total) {
    puts(prefix); put_dec(samples);
    puts(" delay="); put_dec(delay);
    puts(" min="); put_dec(min);
    puts(" total="); put_dec(total);
    puts("\n");
}

/* Takes `count` samples and reports them after `prefix`; `keep`: where the first 4096 go, if anywhere. */
static void measure(const char *prefix, uint32_t count, uint32_t delay, uint64_t *keep) {
    uint64_t total = 0, min = ~0ull;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t took = sample(delay);
        total += took;
        if (keep && i < 4096) keep[i] = took;
        if (took < min) min = took;
    }
    report(prefix, count, delay, min, total);
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    uint32_t samples = (uint32_t)parse_u64(cmdline_arg(cmdline, "samples"));
    uint32_t delay = (uint32_t)parse_u64(cmdline_arg(cmdline, "delay"));
    uint32_t warmup = (uint32_t)parse_u64(cmdline_arg(cmdline, "warmup"));
    int dump = parse_u64(cmdline_arg(cmdline, "dump")) != 0;
    idt_set_gate(0x40, isr_timer);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;
    lapic[0x3e0 / 4] = 0xb;   /* divide by 1: one tick per ns at 1 GHz */
    lapic[0x320 / 4] = 0x40;  /* one-shot */
    if (warmup) measure("irqlat-warmup: samples=", warmup, delay, 0);
    measure("irqlat: samples=", samples, delay, each);
    if (dump) {
        puts("irqlat-samples: ");
        for (uint32_t i = 0; i < samples && i < 4096; i++) {
            if (i) puts(",");
            put_dec(each[i]);
        }
        puts("\n");
    }
    guest_exit(0);
}
