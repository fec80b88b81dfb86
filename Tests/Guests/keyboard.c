/* The i8042 keyboard's interrupt: enables the keyboard and its interrupt in the controller's command byte, routes
 * IRQ 1 (IOAPIC pin 1) to vector 0x21, says "keyboard: ready" and waits in HLT. Each interrupt reads the status
 * port (the output buffer must be full) and one scancode from port 0x60. After the 11 bytes of Ctrl-Alt-Delete
 * pressed and released (the VMM's SendCtrlAltDel) it prints them in hex with the interrupt count and exits with
 * status 1 when they are the expected set-2 codes, one interrupt each, 2 otherwise. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static volatile uint32_t *const ioapic = (volatile uint32_t *)0xfec00000;
static const uint8_t expected[] = {0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14};
#define COUNT ((int)sizeof expected)
static volatile uint8_t codes[COUNT];
static volatile int received, interrupts, empty;

void isr_keyboard(void);

void keyboard_interrupt(void) {
    interrupts++;
    if (inb(0x64) & 1) {
        uint8_t code = inb(0x60);
        if (received < COUNT) codes[received] = code;
        received++;
    } else {
        empty++;                                      /* an interrupt without a byte */
    }
    lapic[0xb0 / 4] = 0;                              /* EOI */
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    idt_set_gate(0x21, isr_keyboard);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;
    ioapic[0] = 0x10 + 2 * 1;
    ioapic[0x10 / 4] = 0x21;                          /* edge, active high, fixed, unmasked */
    outb(0x64, 0x60);                                 /* write the command byte: */
    outb(0x60, 0x01);                                 /* keyboard interrupt on, keyboard enabled, no XLATE */
    puts("keyboard: ready\n");
    while (received < COUNT) __asm__ volatile("sti; hlt; cli");

    int ok = interrupts == COUNT && empty == 0;
    puts("keyboard:");
    for (int i = 0; i < COUNT; i++) {
        putc(' ');
        putc("0123456789abcdef"[codes[i] >> 4]);
        putc("0123456789abcdef"[codes[i] & 0xf]);
        if (codes[i] != expected[i]) ok = 0;
    }
    puts(" interrupts="); put_dec(interrupts);
    puts("\n");
    guest_exit(ok ? 1 : 2);
}
