/* Entry stubs for pagefaults.c: the #PF handler (records, then resumes where the probe said) and a far return
 * that reloads CS after LGDT. */
    .text
    .code64
    .globl isr_page_fault, reload_segments
isr_page_fault:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    lea 72(%rsp), %rdi          /* -> error code, RIP, CS, RFLAGS, RSP, SS */
    call on_page_fault
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $8, %rsp                /* the error code */
    iretq
reload_segments:
    pushq $0x08
    lea 1f(%rip), %rax
    push %rax
    lretq
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    ret
