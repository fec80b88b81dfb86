#include "guest.h"

void putc(char c) {
    while (!(inb(COM1 + 5) & 0x20)) { }
    outb(COM1, (uint8_t)c);
}
void puts(const char *s) { while (*s) putc(*s++); }
void put_dec(uint64_t v) {
    char buf[21]; int i = 20; buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(&buf[i]);
}
void put_hex(uint64_t v) {
    puts("0x");
    for (int s = 60; s >= 0; s -= 4) putc("0123456789abcdef"[(v >> s) & 0xf]);
}
void guest_exit(uint8_t code) { outb(DEBUG_EXIT, code); }
const char *multiboot_cmdline(uint32_t magic, uintptr_t info) {
    const struct multiboot_info *mbi = (const struct multiboot_info *)info;
    return (magic == 0x2BADB002 && (mbi->flags & 4)) ? (const char *)(uintptr_t)mbi->cmdline : "";
}
const char *cmdline_arg(const char *cmdline, const char *key) {
    for (const char *p = cmdline; p && *p; ) {
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k && *q == '=') return q + 1;
        while (*p && *p != ' ') p++;
        while (*p == ' ') p++;
    }
    return 0;
}
uint64_t parse_u64(const char *s) {
    uint64_t v = 0;
    while (s && *s >= '0' && *s <= '9') v = v * 10 + (uint64_t)(*s++ - '0');
    return v;
}
void copy_word(char *out, const char *s, int n) {
    int i = 0;
    while (s && s[i] && s[i] != ' ' && i < n - 1) { out[i] = s[i]; i++; }
    out[i] = 0;
}

#ifndef __x86_64__
struct gate32 { uint16_t off0, selector; uint8_t zero, attr; uint16_t off1; } __attribute__((packed));
static struct gate32 idt[256] __attribute__((aligned(8)));

void idt_set_gate(int vector, void (*handler)(void)) {
    uint32_t a = (uint32_t)(uintptr_t)handler;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector] = (struct gate32){ (uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16) };
}

void idt_load(void) {
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint32_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
}
#endif

#ifdef __x86_64__
/* 64-bit guests: the first 4 GiB identity-mapped with user-accessible 2 MiB pages (the local APIC and IOAPIC
 * included, so that CPL3 loops can reach them), a GDT with 64-bit user segments and a TSS whose I/O bitmap allows every port, then IRETQ to CPL3. */
static uint64_t user_pml4[512] __attribute__((aligned(4096)));
static uint64_t user_pdpt[512] __attribute__((aligned(4096)));
static uint64_t user_pd[4][512] __attribute__((aligned(4096)));
static uint8_t user_kernel_stack[4096] __attribute__((aligned(16)));
static struct { uint32_t r0; uint64_t rsp0, rsp1, rsp2, r1, ist[7], r2; uint16_t r3, iomap; uint8_t bitmap[8192 + 1]; }
    __attribute__((packed)) user_tss;
static uint64_t user_gdt[7] = {
    0, 0x00af9a000000ffffull, 0x00cf92000000ffffull,  /* 0x08 kernel code, 0x10 kernel data */
    0x00cff2000000ffffull, 0x00affa000000ffffull,      /* 0x18 user data, 0x20 user code (RPL 3 selectors) */
    0, 0,                                              /* 0x28 TSS (16 bytes) */
};

void enter_user(void (*fn)(void), void *stack_top) {
    for (uint64_t i = 0; i < 4; i++) {
        user_pdpt[i] = (uint64_t)(uintptr_t)user_pd[i] | 7;
        for (uint64_t j = 0; j < 512; j++) user_pd[i][j] = (i << 30) | (j << 21) | 0x87;  /* P, RW, US, 2 MiB */
    }
    user_pml4[0] = (uint64_t)(uintptr_t)user_pdpt | 7;
    uint64_t t = (uint64_t)(uintptr_t)&user_tss;
    user_tss.rsp0 = (uint64_t)(uintptr_t)(user_kernel_stack + sizeof user_kernel_stack);
    user_tss.iomap = (uint16_t)((uintptr_t)user_tss.bitmap - (uintptr_t)&user_tss);
    user_tss.bitmap[8192] = 0xff;  /* the bitmap's terminator */
    user_gdt[5] = (sizeof user_tss - 1) | ((t & 0xffffff) << 16) | (0x89ull << 40) | (((t >> 24) & 0xff) << 56);
    user_gdt[6] = t >> 32;
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdtr = { sizeof user_gdt - 1, (uint64_t)(uintptr_t)user_gdt };
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    __asm__ volatile("pushq $0x08; lea 1f(%%rip), %%rax; push %%rax; lretq; 1: mov $0x10, %%ax; mov %%ax, %%ds;"
                     "mov %%ax, %%es; mov %%ax, %%ss" : : : "rax", "memory");
    __asm__ volatile("ltr %w0" : : "r"(0x28));
    __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)(uintptr_t)user_pml4) : "memory");
    /* SS, RSP, RFLAGS (IOPL 3, interrupts off), CS, RIP. PVM-style hosts run CPL3 with IOPL 0 whatever RFLAGS
     * says: the TSS's bitmap is what lets the loop's port accesses through there. */
    __asm__ volatile("pushq $0x1b; pushq %0; pushq $0x3002; pushq $0x23; pushq %1; iretq"
                     : : "r"((uint64_t)(uintptr_t)stack_top), "r"((uint64_t)(uintptr_t)fn) : "memory");
    for (;;) { }
}
#endif
