/* Interrupt handlers for traps64.c: count, then return with IRETQ. */
    .text
    .code64
    .globl isr_breakpoint, isr_software
isr_breakpoint:
    incq breakpoints(%rip)
    iretq
isr_software:
    incq software_interrupts(%rip)
    iretq
