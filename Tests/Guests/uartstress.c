/* UART round trips for crash-isolation tests: for each of lines=N (default 1000) lines, writes four values to the
 * scratch register and reads each back, then prints "line I". Ends with "uartstress: done N lines, M scratch
 * mismatches" and exits with code 0 (1 with a mismatch). The pio process may be killed and replaced under it any
 * number of times: the lines must still come out once each, in order, and the scratch register must keep its
 * value. Runs at CPL3 (IOPL 3), so its loop is not slowed by emulated kernel mode. */
#include "guest.h"

static uint64_t lines;
static uint8_t user_stack[8192] __attribute__((aligned(16)));

static void user_loop(void) {
    uint64_t mismatches = 0;
    for (uint64_t i = 0; i < lines; i++) {
        for (int k = 0; k < 4; k++) {
            uint8_t v = (uint8_t)(i * 4 + k);
            outb(COM1 + 7, v);
            if (inb(COM1 + 7) != v) mismatches++;
        }
        puts("line ");
        put_dec(i);
        puts("\n");
    }
    puts("uartstress: done ");
    put_dec(lines);
    puts(" lines, ");
    put_dec(mismatches);
    puts(" scratch mismatches\n");
    guest_exit(mismatches ? 1 : 0);
    for (;;) { }
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *n = cmdline_arg(cmdline, "lines");
    lines = n ? parse_u64(n) : 1000;
    puts("uartstress: ready\n");
    enter_user(user_loop, user_stack + sizeof user_stack);
}
