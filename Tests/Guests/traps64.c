/* Long-mode kernel code that executes INT3 and INT 0x80 with handlers that return (IRETQ), then carries on.
 * Prints "traps64: int3=N int80=M" and exits with status 0 through debug-exit. */
#include "guest.h"

volatile uint64_t breakpoints, software_interrupts;
void isr_breakpoint(void);
void isr_software(void);

struct gate64 { uint16_t off0, selector; uint8_t ist, attr; uint16_t off1; uint32_t off2, zero; } __attribute__((packed));
static struct gate64 idt[256] __attribute__((aligned(16)));

static void set_gate(int vector, void (*handler)(void)) {
    uint64_t a = (uint64_t)(uintptr_t)handler;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector] = (struct gate64){ (uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}

void guest_main(uint32_t magic, uint32_t info) {
    (void)magic; (void)info;
    set_gate(3, isr_breakpoint);
    set_gate(0x80, isr_software);
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    __asm__ volatile("int3");
    __asm__ volatile("int $0x80");
    __asm__ volatile("int3");
    puts("traps64: int3=");
    put_dec(breakpoints);
    puts(" int80=");
    put_dec(software_interrupts);
    puts("\n");
    guest_exit(0);
}
