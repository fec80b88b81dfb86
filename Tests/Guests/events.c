/* Guest events a Linux guest produces, without Linux: do=boot writes the boot-timer marker (123 to port 0x3f0)
 * and exits through debug-exit; do=flood writes the marker 20000 times, then exits; do=reset pulses the i8042's reset line (0xfe to port 0x64); do=panic prints the
 * line a panicking kernel prints and spins. */
#include "guest.h"

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *what = cmdline_arg(multiboot_cmdline(magic, (uintptr_t)info), "do");
    if (what && what[0] == 'b') {
        outb(0x3f0, 123);
        puts("events: booted\n");
        guest_exit(0);
    }
    if (what && what[0] == 'f') {
        for (int i = 0; i < 20000; i++) outb(0x3f0, 123);
        puts("events: flooded\n");
        guest_exit(0);
    }
    if (what && what[0] == 'r') {
        outb(0x64, 0xfe);
        for (;;) __asm__ volatile("pause");
    }
    if (what && what[0] == 'p') {
        puts("[    1.000000] Kernel panic - not syncing: Attempted to kill init!\n");
        for (;;) __asm__ volatile("pause");
    }
    guest_exit(1);
}
