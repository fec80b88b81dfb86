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
