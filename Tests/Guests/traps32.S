/* Interrupt handlers for traps32.c: count, then return with a 32-bit IRET. */
    .text
    .code32
    .globl isr_breakpoint, isr_overflow, isr_software
isr_breakpoint:
    incl breakpoints
    iret
isr_overflow:
    incl overflows
    iret
isr_software:
    incl software_interrupts
    iret
