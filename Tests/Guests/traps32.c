/* 32-bit protected-mode kernel code that executes INT3, INTO (with OF set), INT 0x80 and FWAIT; the handlers
 * return with a 32-bit IRET. Prints "traps32: int3=N into=M int80=K" and exits with status 0. */
#include "guest.h"

volatile uint32_t breakpoints, overflows, software_interrupts;
void isr_breakpoint(void);
void isr_overflow(void);
void isr_software(void);

struct gate32 { uint16_t off0, selector; uint8_t zero, attr; uint16_t off1; } __attribute__((packed));
static struct gate32 idt[256] __attribute__((aligned(8)));

static void set_gate(int vector, void (*handler)(void)) {
    uint32_t a = (uint32_t)(uintptr_t)handler;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector] = (struct gate32){ (uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16) };
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    set_gate(3, isr_breakpoint);
    set_gate(4, isr_overflow);
    set_gate(0x80, isr_software);
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint32_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
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
