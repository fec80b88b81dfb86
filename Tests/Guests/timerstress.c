/* The local APIC timer for crash-isolation tests: periodic with period=NS for ticks=N ticks, each waited for in HLT.
 * The handler checks that the LAPIC has the timer's vector in service (a delivery the LAPIC did not account for,
 * e.g. one offered twice, finds ISR clear); between ticks the main loop checks that the vector is no longer in
 * service after its EOI and round-trips the logical destination register (LAPIC state kept across irqchip
 * restarts). Prints "timerstress: ticks=N isr_missing=A isr_stuck=B ldr_mismatch=C cycles=T" and exits with 0 when
 * A, B and C are 0, else 1. */
#include "guest.h"

volatile uint32_t ticks;
volatile uint32_t isr_missing;
void isr_timer(void);

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    uint32_t period = (uint32_t)parse_u64(cmdline_arg(cmdline, "period"));
    uint32_t wanted = (uint32_t)parse_u64(cmdline_arg(cmdline, "ticks"));
    idt_set_gate(0x40, isr_timer);
    idt_load();

    lapic[0xf0 / 4] = 0x1ff;              /* enable */
    lapic[0x3e0 / 4] = 0xb;               /* divide by 1 */
    uint32_t isr_stuck = 0, ldr_mismatch = 0, round = 0;
    uint64_t start = rdtsc();
    lapic[0x320 / 4] = (1 << 17) | 0x40;  /* periodic, vector 0x40 */
    lapic[0x380 / 4] = period;
    while (ticks < wanted) {
        __asm__ volatile("sti; hlt; cli");
        if (lapic[0x120 / 4] & 1) isr_stuck++;  /* ISR bits 32-63: vector 0x40 is bit 0 */
        uint32_t ldr = (++round & 0xff) << 24;
        lapic[0xd0 / 4] = ldr;
        if (lapic[0xd0 / 4] != ldr) ldr_mismatch++;
    }
    uint64_t cycles = rdtsc() - start;
    lapic[0x380 / 4] = 0;                 /* stop */

    puts("timerstress: ticks="); put_dec(ticks);
    puts(" isr_missing="); put_dec(isr_missing);
    puts(" isr_stuck="); put_dec(isr_stuck);
    puts(" ldr_mismatch="); put_dec(ldr_mismatch);
    puts(" cycles="); put_dec(cycles);
    puts("\n");
    guest_exit(isr_missing || isr_stuck || ldr_mismatch ? 1 : 0);
}
