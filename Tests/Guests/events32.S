/* Entry stubs for events32.c: one per vector the guest watches, all into one recorder (on_event), which sends
 * the guest back to the probe's resume point (same privilege: the stack is where the probe left it). */
    .text
    .code32
    .macro stub vector, has_error
    .globl isr_\vector
isr_\vector:
    .if \has_error == 0
    pushl $-1
    .endif
    pushl $\vector
    jmp common
    .endm
    stub 3, 0
    stub 4, 0
    stub 6, 0
    stub 8, 1
    stub 10, 1
    stub 11, 1
    stub 12, 1
    stub 13, 1
    stub 0x40, 0
    stub 0x41, 0
    stub 0x42, 0
    stub 0x43, 0
    stub 0x45, 0
common:
    pusha
    lea 32(%esp), %eax          /* -> vector, error code, EIP, CS, EFLAGS */
    push %eax
    call on_event
    add $4, %esp
    popa
    add $8, %esp
    iret

    .globl reload_segments
reload_segments:
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    ret
