/* Timer handler for irqlatency.c: takes the TSC first thing, then EOI and a 32-bit IRET. */
    .text
    .code32
    .globl isr_timer
isr_timer:
    push %eax
    push %edx
    rdtsc
    mov %eax, fired_lo
    mov %edx, fired_hi
    movl $0, 0xfee000b0
    pop %edx
    pop %eax
    iret
