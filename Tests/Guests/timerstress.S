/* The timer handler for timerstress.c: counts a delivery the LAPIC does not show in service, counts the tick, EOI,
 * 32-bit IRET. */
    .text
    .code32
    .globl isr_timer
isr_timer:
    testl $1, 0xfee00120
    jnz 1f
    incl isr_missing
1:  incl ticks
    movl $0, 0xfee000b0
    iret
