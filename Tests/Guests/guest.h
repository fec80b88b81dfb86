/* Freestanding helpers shared by the test guests: port I/O, the UART, the debug-exit port, the command line. */
#ifndef GUEST_H
#define GUEST_H
#include <stdint.h>

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }

struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4], mmap_length, mmap_addr;
};

void putc(char c);
void puts(const char *s);
void put_dec(uint64_t v);
void put_hex(uint64_t v);
/* Ends the VM through QEMU's isa-debug-exit convention: the VMM exits with (code << 1) | 1. */
void guest_exit(uint8_t code);
/* The command line the loader passed (multiboot magic in EAX, info in EBX), or "" without one. */
const char *multiboot_cmdline(uint32_t magic, uintptr_t info);
/* The value of "key=" in the command line (up to the next space), or 0. */
const char *cmdline_arg(const char *cmdline, const char *key);
uint64_t parse_u64(const char *s);
/* Copies the word at s (up to a space or the end) into out, at most n-1 bytes. */
void copy_word(char *out, const char *s, int n);
/* Continues in fn at CPL3 with IOPL 3 and interrupts off, on the given stack. Never returns. 64-bit guests get
 * their own user-accessible identity map of the first 4 GiB for it. */
void enter_user(void (*fn)(void), void *stack_top);
#ifndef __x86_64__
/* 32-bit guests: an interrupt gate for `vector` in the guest's IDT (current CS), and loading that IDT. */
void idt_set_gate(int vector, void (*handler)(void));
void idt_load(void);
#endif
#endif
