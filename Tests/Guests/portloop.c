/* The exit-cost loop: at CPL3 with IOPL 3, iters=N device accesses timed with RDTSC, then prints
 * "cycles=C iters=N" and exits with status 0 through debug-exit. Built as a 32-bit (portloop.elf, paging off)
 * and a 64-bit guest (portloop64.elf, its own user-accessible identity map).
 *   op=in (default) reads port=P (default the UART's LSR, 0x3fd); op=out writes 0 to it instead;
 *   op=read reads the 32-bit register at addr=A (default the local APIC's version register, 0xfee00030);
 *   op=write writes 0 to it (e.g. addr=4273995776, the IOAPIC's register select, a posted write). */
#include "guest.h"

static uint64_t iterations;
static uint16_t port;
static volatile uint32_t *mmio;
static char op;
static uint8_t user_stack[8192] __attribute__((aligned(16)));

static void user_loop(void) {
    uint64_t start = rdtsc();
    switch (op) {
    case 'o': for (uint64_t i = 0; i < iterations; i++) outb(port, 0); break;
    case 'r': for (uint64_t i = 0; i < iterations; i++) (void)*mmio; break;
    case 'w': for (uint64_t i = 0; i < iterations; i++) *mmio = 0; break;
    default: for (uint64_t i = 0; i < iterations; i++) (void)inb(port); break;
    }
    uint64_t cycles = rdtsc() - start;
    puts("cycles=");
    put_dec(cycles);
    puts(" iters=");
    put_dec(iterations);
    puts("\n");
    guest_exit(0);
    for (;;) { }
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *o = cmdline_arg(cmdline, "op");
    iterations = parse_u64(cmdline_arg(cmdline, "iters"));
    port = cmdline_arg(cmdline, "port") ? (uint16_t)parse_u64(cmdline_arg(cmdline, "port")) : COM1 + 5;
    mmio = (volatile uint32_t *)(uintptr_t)(cmdline_arg(cmdline, "addr") ? parse_u64(cmdline_arg(cmdline, "addr")) : 0xfee00030u);
    /* in, out, read, write: told apart by their first letter ("in" is the default). */
    op = o ? o[0] : 'i';
    puts("portloop: ready\n");
    enter_user(user_loop, user_stack + sizeof user_stack);
}
