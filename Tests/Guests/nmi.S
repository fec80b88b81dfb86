/* The NMI handler for nmi.c: everything it does is in C (on_nmi); it returns with a 32-bit IRET, which ends
 * the NMI's blocking. */
    .text
    .code32
    .globl isr_nmi
isr_nmi:
    pusha
    call on_nmi
    popa
    iret
