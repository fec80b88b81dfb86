/* Entry stubs for events64.c: one per vector the guest watches, all into one recorder (on_event), which sends
 * the guest back to the probe's resume point on the kernel stack. */
    .text
    .code64
    .macro stub vector, has_error
    .globl isr_\vector
isr_\vector:
    .if \has_error == 0
    pushq $-1
    .endif
    pushq $\vector
    jmp common
    .endm
    stub 3, 0
    stub 6, 0
    stub 8, 1
    stub 10, 1
    stub 11, 1
    stub 12, 1
    stub 13, 1
    stub 14, 1
    stub 0x40, 0
    stub 0x41, 0
    stub 0x42, 0
    stub 0x43, 0
    stub 0x44, 0
    stub 0x45, 0
    stub 0x46, 0
    stub 0x47, 0
    stub 0x48, 0
    stub 0x49, 0
common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    lea 72(%rsp), %rdi          /* -> vector, error code, RIP, CS, RFLAGS, RSP, SS */
    call on_event
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

    .globl reload_segments
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
