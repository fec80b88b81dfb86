/* The local APIC timer's handler for lapictimer.c: count, EOI, 32-bit IRET. */
    .text
    .code32
    .globl isr_timer
isr_timer:
    incl ticks
    movl $0, 0xfee000b0
    iret
