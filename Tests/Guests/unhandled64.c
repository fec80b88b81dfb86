/* Kernel code that executes an instruction outside the emulation fallback's set (XRSTOR on an all-zero area,
 * which the host's emulator cannot run): the VMM must stop with a crash report, not hang. */
#include "guest.h"

static uint8_t area[4096] __attribute__((aligned(64)));

void guest_main(uint32_t magic, uint32_t info) {
    (void)magic; (void)info;
    puts("unhandled64: about to run xrstor\n");
    __asm__ volatile("xrstor %0" : : "m"(area), "a"(0), "d"(0));
    puts("unhandled64: still running\n");
    guest_exit(0);
}
