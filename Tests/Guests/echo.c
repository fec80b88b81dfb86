/* Reads bytes from the UART by polling LSR.DR and echoes them back until it sees a '.'; exits with status 0. */
#include "guest.h"

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    puts("echo: ready\n");
    for (;;) {
        while (!(inb(COM1 + 5) & 1)) { }
        char c = (char)inb(COM1);
        putc(c);
        if (c == '.') break;
    }
    puts("\n");
    guest_exit(0);
}
