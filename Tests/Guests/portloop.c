/* The exit-cost loop: at CPL3 with IOPL 3, iters=N port accesses timed with RDTSC, then prints
 * "cycles=C iters=N" and exits with status 0 through debug-exit.
 *   op=in (default) reads port=P (default the UART's LSR, 0x3fd); op=out writes 0 to it instead. */
#include "guest.h"

static uint64_t iterations;
static uint16_t port;
static int write_op;
static uint8_t user_stack[8192] __attribute__((aligned(16)));

static void user_loop(void) {
    uint64_t start = rdtsc();
    if (write_op) {
        for (uint64_t i = 0; i < iterations; i++) outb(port, 0);
    } else {
        for (uint64_t i = 0; i < iterations; i++) (void)inb(port);
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
    const char *op = cmdline_arg(cmdline, "op");
    iterations = parse_u64(cmdline_arg(cmdline, "iters"));
    port = cmdline_arg(cmdline, "port") ? (uint16_t)parse_u64(cmdline_arg(cmdline, "port")) : COM1 + 5;
    write_op = op && op[0] == 'o' && op[1] == 'u' && op[2] == 't';
    puts("portloop: ready\n");
    enter_user(user_loop, user_stack + sizeof user_stack);
}
