/* The keyboard's interrupt handler stub for keyboard.c. */
    .text
    .code32
    .globl isr_keyboard
isr_keyboard:
    pushal
    call keyboard_interrupt
    popal
    iret
