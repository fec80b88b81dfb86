/* tpr64.c's probe and handler in assembly, so that "the next instruction" is exactly one instruction. */
    .text
    .code64
    .globl lower_cr8_and_look, isr_51
lower_cr8_and_look:
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, t_write(%rip)
    mov %rdi, %cr8              /* the CR8 write */
    mov taken(%rip), %rax       /* the next instruction: has the handler run? */
    ret
isr_51:
    push %rax
    push %rdx
    rdtsc                       /* the third instruction: two pushes ahead of it */
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, t_handler(%rip)
    incq taken(%rip)
    mov $0xfee000b0, %eax
    movl $0, (%rax)             /* EOI */
    pop %rdx
    pop %rax
    iretq
