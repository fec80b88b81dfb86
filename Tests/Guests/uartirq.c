/* Interrupt-driven UART output through the IOAPIC: COM1's THR-empty interrupt (IRQ 4, IOAPIC pin 4, vector
 * 0x24) sends a message one byte per interrupt. First the pin stays masked while the UART asserts its line: no
 * interrupt may arrive. Then it is unmasked. Prints (from the handler) "uartirq: sent by IRQ 4\n", then
 * "uartirq: while masked=N interrupts=M" and exits with status 0. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static volatile uint32_t *const ioapic = (volatile uint32_t *)0xfec00000;
static const char message[] = "uartirq: sent by IRQ 4\n";
static volatile int position, done;
static volatile uint32_t interrupts;

void isr_uart(void);

void uart_interrupt(void) {
    interrupts++;
    uint8_t iir = inb(COM1 + 2);
    if ((iir & 0x0f) == 0x02) {                       /* THR empty */
        if (message[position]) outb(COM1, (uint8_t)message[position++]);
        else { outb(COM1 + 1, 0); done = 1; }         /* all sent: THRI off */
    }
    lapic[0xb0 / 4] = 0;                              /* EOI */
}

static void redirect_pin4(int masked) {
    ioapic[0] = 0x10 + 2 * 4;
    ioapic[0x10 / 4] = 0x24 | (masked ? 1u << 16 : 0);
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    idt_set_gate(0x24, isr_uart);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;

    redirect_pin4(1);
    outb(COM1 + 4, 0x08);                             /* MCR: OUT2 gates the IRQ */
    outb(COM1 + 1, 0x02);                             /* IER: THRI, asserted at once (THR is empty) */
    __asm__ volatile("sti");
    for (int i = 0; i < 200; i++) (void)inb(COM1 + 5);
    __asm__ volatile("cli");
    uint32_t while_masked = interrupts;

    redirect_pin4(0);
    outb(COM1 + 1, 0x00);                             /* a fresh rising edge: line down ... */
    outb(COM1 + 1, 0x02);                             /* ... and up */
    while (!done) __asm__ volatile("sti; hlt; cli");

    puts("uartirq: while masked="); put_dec(while_masked);
    puts(" interrupts="); put_dec(interrupts);
    puts("\n");
    guest_exit(0);
}
