/* COM1's interrupt handler stub for uartirq.c. */
    .text
    .code32
    .globl isr_uart
isr_uart:
    pushal
    call uart_interrupt
    popal
    iret
