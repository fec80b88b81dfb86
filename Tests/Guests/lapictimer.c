/* The local APIC timer at 1 GHz input (divide by 1): first one-shot, sleeping in HLT until it fires, then
 * periodic with period=NS for ticks=N ticks, each waited for in HLT. Prints
 * "lapictimer: oneshot=1 ticks=N cycles=C" and exits with status 0. */
#include "guest.h"

volatile uint32_t ticks;
void isr_timer(void);

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    uint32_t period = (uint32_t)parse_u64(cmdline_arg(cmdline, "period"));
    uint32_t wanted = (uint32_t)parse_u64(cmdline_arg(cmdline, "ticks"));
    idt_set_gate(0x40, isr_timer);
    idt_load();

    lapic[0xf0 / 4] = 0x1ff;            /* enable */
    lapic[0x3e0 / 4] = 0xb;             /* divide by 1 */
    lapic[0x320 / 4] = 0x40;            /* one-shot, vector 0x40 */
    lapic[0x380 / 4] = period;
    while (ticks == 0) __asm__ volatile("sti; hlt; cli");
    uint32_t oneshot = ticks;

    ticks = 0;
    uint64_t start = rdtsc();
    lapic[0x320 / 4] = (1 << 17) | 0x40; /* periodic */
    lapic[0x380 / 4] = period;
    while (ticks < wanted) __asm__ volatile("sti; hlt; cli");
    uint64_t cycles = rdtsc() - start;
    lapic[0x380 / 4] = 0;               /* stop */

    puts("lapictimer: oneshot="); put_dec(oneshot);
    puts(" ticks="); put_dec(ticks);
    puts(" cycles="); put_dec(cycles);
    puts("\n");
    guest_exit(0);
}
