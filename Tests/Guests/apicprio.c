/* Local APIC priorities through self-IPIs, and a level-triggered IOAPIC pin:
 *   order: 0x50 and 0x60 raised with IF clear are taken highest first;
 *   nest:  0x60 raised inside the 0x50 handler (with IF set) preempts it;
 *   tpr:   0x55 stays pending while TPR is 0x60 and arrives once TPR drops;
 *   level: COM1's line on pin 4, level-triggered, fires again after each EOI until the handler clears the cause
 *          (on its third call).
 * Prints "apicprio: order=60,50 nest=50,60,50e tpr=held,taken level=3" and exits with status 0. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static volatile uint32_t *const ioapic = (volatile uint32_t *)0xfec00000;
static char trace[64];
static volatile int trace_len, nest_mode;
static volatile uint32_t got55, level_calls;

void isr_50(void);
void isr_55(void);
void isr_60(void);
void isr_24(void);

static void record(const char *s) { while (*s && trace_len < 63) trace[trace_len++] = *s++; }
static void eoi(void) { lapic[0xb0 / 4] = 0; }
static void self_ipi(uint8_t vector) { lapic[0x300 / 4] = (1u << 18) | vector; }
static void wait_for_interrupt(void) { __asm__ volatile("sti; hlt; cli"); }

void on_60(void) { record("60,"); eoi(); }
void on_55(void) { got55 = 1; eoi(); }
void on_50(void) {
    record("50,");
    if (nest_mode) {
        self_ipi(0x60);
        while (trace_len < 6) wait_for_interrupt();  /* 0x60 preempts: "50,60," */
        record("50e,");
    }
    eoi();
}
void on_24(void) {
    level_calls++;
    if (level_calls == 3) outb(COM1 + 1, 0);  /* clear the cause: THR-empty interrupts off */
    eoi();
}

static void print_trace(const char *label) {
    puts(label);
    for (int i = 0; i < trace_len - 1; i++) putc(trace[i]);  /* without the last comma */
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    (void)magic; (void)info;
    idt_set_gate(0x50, isr_50); idt_set_gate(0x55, isr_55); idt_set_gate(0x60, isr_60); idt_set_gate(0x24, isr_24);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;

    self_ipi(0x50);
    self_ipi(0x60);
    while (trace_len < 6) wait_for_interrupt();
    char order[8];
    for (int i = 0; i < 6; i++) order[i] = trace[i];
    trace_len = 0;

    nest_mode = 1;
    self_ipi(0x50);
    while (trace_len < 10) wait_for_interrupt();
    nest_mode = 0;

    lapic[0x80 / 4] = 0x60;  /* TPR: classes 6 and below wait */
    self_ipi(0x55);
    __asm__ volatile("sti");
    for (int i = 0; i < 100; i++) (void)inb(COM1 + 5);
    __asm__ volatile("cli");
    uint32_t held = !got55;
    lapic[0x80 / 4] = 0;
    while (!got55) wait_for_interrupt();

    ioapic[0] = 0x10 + 2 * 4;
    ioapic[0x10 / 4] = 0x24 | (1u << 15);  /* level-triggered, unmasked */
    outb(COM1 + 4, 0x08);                  /* OUT2 */
    outb(COM1 + 1, 0x02);                  /* THRI: the line goes up and stays up */
    while (level_calls < 3) wait_for_interrupt();
    for (int i = 0; i < 50; i++) (void)inb(COM1 + 5);  /* room for a wrong fourth call */

    puts("apicprio: order=");
    for (int i = 0; i < 5; i++) putc(order[i]);
    print_trace(" nest=");
    puts(held ? " tpr=held," : " tpr=early,");
    puts(got55 ? "taken" : "lost");
    puts(" level="); put_dec(level_calls);
    puts("\n");
    guest_exit(0);
}
