/* Multiboot v1 entry for the 32-bit test guests. Built with -DFLAT the header carries the a.out-kludge
 * address fields, so the image also boots as a flat binary. */
#define MB_MAGIC 0x1BADB002
#ifdef FLAT
#define MB_FLAGS 0x00010003
#else
#define MB_FLAGS 0x00000003
#endif
    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
#ifdef FLAT
    .long mb_header, __image_start, __load_end, __bss_end, _start
#endif

    .text
    .code32
    .globl _start
_start:
    mov $__stack_top, %esp
    push %ebx
    push %eax
    call guest_main
1:  cli
    hlt
    jmp 1b

    /* enter_user(fn, stack): drop to CPL3 with IOPL 3 through SYSEXIT (KVM's instruction emulator, which runs
     * guest kernel code on these hosts, cannot do a protected-mode IRET or an outer-privilege far return). */
    .globl enter_user
enter_user:
    lgdt gdt_descriptor
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ss
    pushf
    orl $0x3000, (%esp)         /* IOPL 3: port I/O allowed at CPL3 */
    popf
    mov $0x174, %ecx            /* IA32_SYSENTER_CS = 0x08: SYSEXIT loads CS = 0x18|3, SS = 0x20|3 */
    mov $0x08, %eax
    xor %edx, %edx
    wrmsr
    mov $0x23, %ax
    mov %ax, %ds
    mov %ax, %es
    mov 4(%esp), %edx           /* EIP after SYSEXIT */
    mov 8(%esp), %ecx           /* ESP after SYSEXIT */
    sysexit

    .section .rodata
    .align 8
gdt:
    .quad 0                     /* null */
    .quad 0x00cf9a000000ffff    /* 0x08 kernel code */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cffa000000ffff    /* 0x18 user code, DPL 3 */
    .quad 0x00cff2000000ffff    /* 0x20 user data, DPL 3 */
gdt_descriptor:
    .word gdt_descriptor - gdt - 1
    .long gdt

    .section .bss
    .align 16
    .space 16384
__stack_top:
