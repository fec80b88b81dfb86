/* apicbase.c's handler for vector 0x52: counts, EOIs through whichever page the APIC is at (the C code keeps it
 * at the default page whenever 0x52 can arrive there, and moved only around its own send), returns. */
    .text
    .code32
    .globl isr_52, isr_gp
isr_gp:                               /* #GP from a WRMSR (2 bytes): count it, skip it */
    incl gp_count
    addl $2, 4(%esp)                  /* the error code, then EIP */
    add $4, %esp
    iret
isr_52:
    incl got52
    push %eax
    mov $0xfed00000, %eax
    cmpl $0xffffffff, 0xfee00020      /* the default page is not the APIC: it was moved */
    je 1f
    mov $0xfee00000, %eax
1:  movl $0, 0xb0(%eax)               /* EOI */
    pop %eax
    iret
