/* smp.c's application-processor start: a real-mode trampoline the BSP copies below 1 MiB (the start-up IPI's
 * vector says where), which loads the loader's GDT, enters protected mode and calls ap_main on its own stack;
 * and the two IPI handlers. */
    .text
    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl ap_gdt_descriptor - ap_trampoline
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x10, $ap_protected
    .align 4
ap_gdt_descriptor:
    .word 31
    .long 0x500                 /* the GDT the loader wrote: 0x10 code, 0x18 data */
ap_trampoline_end:

    .code32
ap_protected:
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov $ap_stack_top, %esp
    call ap_main
1:  cli
    hlt
    jmp 1b

    .globl isr_from_ap, isr_from_bsp, isr_nmi_count, isr_short
isr_short:                      /* counts per APIC ID (0: BSP, 1: AP) */
    push %eax
    mov 0xfee00020, %eax
    shr $24, %eax
    and $1, %eax
    incl short_got(,%eax,4)
    movl $0, 0xfee000b0
    pop %eax
    iret
isr_nmi_count:
    incl nmis
    iret
isr_from_ap:
    incl from_ap
    movl $0, 0xfee000b0
    iret
isr_from_bsp:
    incl from_bsp
    movl $0, 0xfee000b0
    iret

    .section .bss
    .align 16
    .space 8192
ap_stack_top:
