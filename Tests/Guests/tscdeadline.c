/* The local APIC timer in TSC-deadline mode (IA32_TSC_DEADLINE, MSR 0x6e0): checks CPUID offers it, arms
 * rounds=N deadlines delay=C TSC cycles ahead, each waited for in HLT, and checks none fires early; reads the MSR
 * back while armed and after it fired (0); arms one far away, disarms it with 0 and re-arms a near one. Prints
 * "tscdeadline: cpuid=1 rounds=N early=0 armed=1 cleared=1 rearm=1 late=L" (L: cycles from deadline to handler,
 * summed over the rounds) and exits with status 0. */
#include "guest.h"

volatile uint32_t ticks;
volatile uint64_t fired_at;
void isr_timer(void);

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;

static void wrmsr(uint32_t msr, uint64_t v) {
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}
static uint64_t rdmsr(uint32_t msr) {
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    uint64_t delay = parse_u64(cmdline_arg(cmdline, "delay"));
    uint32_t rounds = (uint32_t)parse_u64(cmdline_arg(cmdline, "rounds"));
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    puts("tscdeadline: cpuid="); put_dec((c >> 24) & 1);
    if (!((c >> 24) & 1)) { puts("\n"); guest_exit(1); }

    idt_set_gate(0x40, isr_timer);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;             /* enable */
    lapic[0x320 / 4] = (2 << 17) | 0x40; /* TSC-deadline, vector 0x40 */

    uint32_t early = 0;
    uint64_t late = 0;
    for (uint32_t i = 0; i < rounds; i++) {
        uint32_t before = ticks;
        uint64_t deadline = rdtsc() + delay;
        wrmsr(0x6e0, deadline);
        while (ticks == before) __asm__ volatile("sti; hlt; cli");
        if (fired_at < deadline) early++;
        late += fired_at - deadline;
    }
    uint32_t armed, cleared;
    uint64_t deadline = rdtsc() + delay;
    wrmsr(0x6e0, deadline);
    armed = rdmsr(0x6e0) == deadline;
    uint32_t before = ticks;
    while (ticks == before) __asm__ volatile("sti; hlt; cli");
    cleared = rdmsr(0x6e0) == 0;

    /* A far deadline disarmed by writing 0, then a near one: exactly one interrupt, the near one. */
    before = ticks;
    wrmsr(0x6e0, rdtsc() + delay * 1000);
    wrmsr(0x6e0, 0);
    deadline = rdtsc() + delay;
    wrmsr(0x6e0, deadline);
    while (ticks == before) __asm__ volatile("sti; hlt; cli");
    uint32_t rearm = ticks - before == 1 && fired_at >= deadline && fired_at - deadline < delay * 500;

    puts(" rounds="); put_dec(rounds);
    puts(" early="); put_dec(early);
    puts(" armed="); put_dec(armed);
    puts(" cleared="); put_dec(cleared);
    puts(" rearm="); put_dec(rearm);
    puts(" late="); put_dec(late);
    puts("\n");
    guest_exit(0);
}
