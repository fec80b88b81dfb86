/* The virtio device's interrupt handler stub for virtio.c. */
    .text
    .code32
    .globl isr_virtio
isr_virtio:
    pushal
    call virtio_interrupt
    popal
    iret
