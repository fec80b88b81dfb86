/* Handlers for nmi.c. The NMI handler returns with a 32-bit IRET, which ends the NMI's blocking; on_nmi may
 * corrupt the CS it returns to (the IRET then faults) and the #GP handler puts it right and returns to it. */
    .text
    .code32
    .globl isr_nmi, isr_gp
isr_nmi:
    pusha
    push %esp                   /* -> EDI..EAX, then EIP, CS, EFLAGS */
    call on_nmi
    add $4, %esp
    popa
    iret
isr_gp:
    pusha
    push %esp                   /* -> EDI..EAX, error code, EIP, CS, EFLAGS, then the faulting IRET's frame */
    call on_gp
    add $4, %esp
    popa
    add $4, %esp
    iret
