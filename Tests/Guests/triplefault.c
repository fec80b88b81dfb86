/* Prints a line, then takes an exception with no IDT: #UD -> #DF -> triple fault. */
#include "guest.h"

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    puts("about to triple fault\n");
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idt = { 0, 0 };
    __asm__ volatile("lidt %0; ud2" : : "m"(idt));
}
