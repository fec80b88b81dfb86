/* ELF64 entry: the VMM starts us in long mode with identity-mapped memory, RAX = multiboot magic,
 * RBX = multiboot info. */
    .text
    .code64
    .globl _start
_start:
    lea __stack_top(%rip), %rsp
    mov %eax, %edi
    mov %ebx, %esi
    call guest_main
1:  cli
    hlt
    jmp 1b
    .section .bss
    .align 16
    .space 16384
__stack_top:
