/* 32-bit protected-mode kernel code that executes INT3, INTO (with OF set), INT 0x80 and FWAIT; the handlers
 * return with a 32-bit IRET. Prints "traps32: int3=N into=M int80=K" and exits with status 0. */
#include "guest.h"

volatile uint32_t breakpoints, overflows, software_interrupts;
void isr_breakpoint(void);
void isr_overflow(void);
void isr_software(void);


void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    idt_set_gate(3, isr_breakpoint);
    idt_set_gate(4, isr_overflow);
    idt_set_gate(0x80, isr_software);
    idt_load();
    __asm__ volatile("int3");
    __asm__ volatile("movb $0x7f, %%al; addb $1, %%al; into" : : : "eax", "cc");
    __asm__ volatile("int $0x80");
    __asm__ volatile("fwait");
    puts("traps32: int3=");
    put_dec(breakpoints);
    puts(" into=");
    put_dec(overflows);
    puts(" int80=");
    put_dec(software_interrupts);
    puts("\n");
    guest_exit(0);
}
