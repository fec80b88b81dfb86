/* windows.c's instruction sequences and handlers: the sequences must be exactly these instructions. */
    .text
    .code32
    .globl sti_nop_cli, sti_int41, isr_50, isr_60, isr_41, isr_51
sti_nop_cli:
    sti
    mov trace_len, %ecx         /* in the STI shadow: nothing may have arrived yet (this stands for the NOP) */
    cli
    mov trace_len, %eax         /* what arrived before the CLI */
    shl $16, %ecx
    or %ecx, %eax
    ret
sti_int41:
    sti
    int $0x41
    ret
isr_51:
    push %eax
    push %edx
    rdtsc                       /* the third instruction: two pushes ahead of it */
    mov %eax, t_handler_lo
    mov %edx, t_handler_hi
    movl $1, got51
    movl $0, 0xfee000b0         /* EOI */
    pop %edx
    pop %eax
    iret
.macro traced vector
isr_\vector:
    pushal
    push $0x\vector
    call on_vector
    add $4, %esp
    popal
    iret
.endm
    traced 50
    traced 60
    traced 41
