/* Entry stubs for pagefaults.c: the #PF handler (records, then resumes where the probe said) and a far return
 * that reloads CS after LGDT. */
    .text
    .code64
    .globl isr_page_fault, reload_segments, syscall_entry, user_syscall_site, user_after_syscall
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

/* syscall=1: the kernel's system-call entry (run through its KERNEL_ALIAS address): counts, keeps R11, SYSRET. */
syscall_entry:
    incq syscall_entries(%rip)
    sysretq
/* A real SYSCALL in user mode, and where its SYSRET returns: on to resume_rip. */
user_syscall_site:
    syscall
user_after_syscall:
    jmp *resume_rip(%rip)
