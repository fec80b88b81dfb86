/* Handler stubs for apicprio.c: each calls its C handler (which records and EOIs), then a 32-bit IRET. */
    .text
    .code32
    .globl isr_50, isr_55, isr_60, isr_24
isr_50:
    pushal
    call on_50
    popal
    iret
isr_55:
    pushal
    call on_55
    popal
    iret
isr_60:
    pushal
    call on_60
    popal
    iret
isr_24:
    pushal
    call on_24
    popal
    iret
