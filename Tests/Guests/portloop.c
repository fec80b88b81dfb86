/* The exit-cost loop: at CPL3 with IOPL 3, iters=N device accesses timed with RDTSC, then prints
 * "cycles=C iters=N" and exits with status 0 through debug-exit. Built as a 32-bit (portloop.elf, paging off)
 * and a 64-bit guest (portloop64.elf, its own user-accessible identity map).
 *   op=in (default) reads port=P (default the UART's LSR, 0x3fd); op=out writes 0 to it instead;
 *   op=read reads the 32-bit register at addr=A (default the local APIC's version register, 0xfee00030);
 *   op=write writes 0 to it (e.g. addr=4273995776, the IOAPIC's register select, a posted write).
 * warmup=N makes N accesses before the timed ones (the VMM's start-up, its processes settling, is then over).
 * window=W also times each run of W accesses and prints them after the total, as "window=W cycles=C1,C2,...", for
 * a figure that host interruptions (whole windows that run long) do not move: the median window. With windows, it
 * also says "portloop: timing" as the timed accesses begin and prints "start=T" (the TSC they began at) last, so
 * that a host that pauses and resumes the guest can place each window in time (the benchmark's interleaved group). */
#include "guest.h"

static uint64_t iterations;
static uint16_t port;
static volatile uint32_t *mmio;
static char op;
static uint8_t user_stack[8192] __attribute__((aligned(16)));

static uint64_t warmup, window;
#define MAX_WINDOWS 4096
static uint64_t windows[MAX_WINDOWS];

static void accesses(uint64_t n) {
    switch (op) {
    case 'o': for (uint64_t i = 0; i < n; i++) outb(port, 0); break;
    case 'r': for (uint64_t i = 0; i < n; i++) (void)*mmio; break;
    case 'w': for (uint64_t i = 0; i < n; i++) *mmio = 0; break;
    default: for (uint64_t i = 0; i < n; i++) (void)inb(port); break;
    }
}

static void user_loop(void) {
    uint64_t count = 0;
    accesses(warmup);
    if (window) puts("portloop: timing\n");
    uint64_t start = rdtsc();
    if (window) {
        /* Whole windows only, at most MAX_WINDOWS of them: the rest of the iterations run untimed by window. */
        uint64_t last = start, done = 0;
        for (; done + window <= iterations && count < MAX_WINDOWS; done += window) {
            accesses(window);
            uint64_t now = rdtsc();
            windows[count++] = now - last;
            last = now;
        }
        accesses(iterations - done);
    } else {
        accesses(iterations);
    }
    uint64_t cycles = rdtsc() - start;
    puts("cycles=");
    put_dec(cycles);
    puts(" iters=");
    put_dec(iterations);
    puts("\n");
    if (count) {
        puts("window=");
        put_dec(window);
        puts(" cycles=");
        for (uint64_t i = 0; i < count; i++) {
            if (i) puts(",");
            put_dec(windows[i]);
        }
        puts("\nstart=");
        put_dec(start);
        puts("\n");
    }
    guest_exit(0);
    for (;;) { }
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *o = cmdline_arg(cmdline, "op");
    iterations = parse_u64(cmdline_arg(cmdline, "iters"));
    window = cmdline_arg(cmdline, "window") ? parse_u64(cmdline_arg(cmdline, "window")) : 0;
    warmup = cmdline_arg(cmdline, "warmup") ? parse_u64(cmdline_arg(cmdline, "warmup")) : 0;
    port = cmdline_arg(cmdline, "port") ? (uint16_t)parse_u64(cmdline_arg(cmdline, "port")) : COM1 + 5;
    mmio = (volatile uint32_t *)(uintptr_t)(cmdline_arg(cmdline, "addr") ? parse_u64(cmdline_arg(cmdline, "addr")) : 0xfee00030u);
    /* in, out, read, write: told apart by their first letter ("in" is the default). */
    op = o ? o[0] : 'i';
    puts("portloop: ready\n");
    enter_user(user_loop, user_stack + sizeof user_stack);
}
