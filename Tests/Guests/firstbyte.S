/* The start-up benchmark's guest: its first instruction after the register set-up the loader did is a write of
 * '!' to COM1, then it exits through debug-exit with status 0. "Start-up to the first UART byte" with this guest
 * stops at the guest's first instructions: no guest code runs before the byte. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003
    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

    .text
    .code32
    .globl _start
_start:
    mov $0x3f8, %dx
    mov $0x21, %al
    out %al, %dx
    mov $0x0a, %al
    out %al, %dx
    xor %al, %al
    out %al, $0xf4
1:  cli
    hlt
    jmp 1b
