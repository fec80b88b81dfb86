/* The TSC-deadline timer's handler for tscdeadline.c: note when it ran, count, EOI, 32-bit IRET. */
    .text
    .code32
    .globl isr_timer
isr_timer:
    pushl %eax
    pushl %edx
    rdtsc
    movl %eax, fired_at
    movl %edx, fired_at+4
    incl ticks
    movl $0, 0xfee000b0
    popl %edx
    popl %eax
    iret
