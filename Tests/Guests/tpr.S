/* tpr.c's probe and handler in assembly, so that "the next instruction" is exactly one instruction: the TSC is
 * read just before the TPR write and at the handler's start (after saving the two registers RDTSC writes). */
    .text
    .code32
    .globl lower_tpr_and_look, isr_51
lower_tpr_and_look:
    mov 4(%esp), %ecx
    rdtsc
    mov %eax, t_write_lo
    mov %edx, t_write_hi
    mov %ecx, 0xfee00080        /* the TPR write */
    mov taken, %eax             /* the next instruction: has the handler run? */
    ret
isr_51:
    push %eax
    push %edx
    rdtsc                       /* the third instruction: two pushes ahead of it */
    mov %eax, t_handler_lo
    mov %edx, t_handler_hi
    incl taken
    movl $0, 0xfee000b0         /* EOI */
    pop %edx
    pop %eax
    iret
