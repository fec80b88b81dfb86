/* Event delivery corner cases in 32-bit protected mode at CPL0, where KVM's emulator fails on INT n, INT3 and
 * INTO and the VMM's fallback delivers them: bad gates and target segments, and a fault while delivering. Prints
 * "NAME: v=0x.. e=0x.. cpl=N ..." per case as events64 does; case=NAME runs one (task: a task gate, which the
 * fallback cannot switch to: the VM stops with a crash report); exits with status 0. */
#include "guest.h"

struct gate32 { uint16_t off0, selector; uint8_t zero, attr; uint16_t off1; } __attribute__((packed));
#define IDT_ENTRIES 0x50
static struct gate32 idt[256] __attribute__((aligned(8)));
static uint64_t gdt[5] __attribute__((aligned(8))) = {
    0, 0x00cf9a000000ffffull, 0x00cf92000000ffffull,  /* 0x08 code, 0x10 data */
    0x00cf1a000000ffffull,                             /* 0x18 code, not present */
    0x0000850000000000ull | (0x28ull << 16),           /* 0x20 a task gate's TSS would go here: never reached */
};

void reload_segments(void);
void isr_3(void), isr_4(void), isr_6(void), isr_8(void), isr_10(void), isr_11(void), isr_12(void), isr_13(void);
void isr_0x40(void), isr_0x41(void), isr_0x42(void), isr_0x43(void), isr_0x45(void);

volatile uint32_t resume_eip;
static volatile uint32_t ev_vec[8], ev_err[8], ev_cpl[8];
static volatile int events;

void on_event(uint32_t *frame) {
    if (events < 8) {
        ev_vec[events] = frame[0];
        ev_err[events] = frame[1];
        ev_cpl[events] = frame[3] & 3;
        events++;
    }
    frame[2] = resume_eip;
}

static void set_gate(int vector, void (*handler)(void), uint16_t selector, int attr) {
    uint32_t a = (uint32_t)(uintptr_t)handler;
    idt[vector] = (struct gate32){ (uint16_t)a, selector, 0, (uint8_t)attr, (uint16_t)(a >> 16) };
}
static void default_gates(void) {
    set_gate(3, isr_3, 0x08, 0x8e);
    set_gate(4, isr_4, 0x08, 0x8e);
    set_gate(6, isr_6, 0x08, 0x8e);
    set_gate(8, isr_8, 0x08, 0x8e);
    set_gate(10, isr_10, 0x08, 0x8e);
    set_gate(11, isr_11, 0x08, 0x8e);
    set_gate(12, isr_12, 0x08, 0x8e);
    set_gate(13, isr_13, 0x08, 0x8e);
    set_gate(0x40, isr_0x40, 0x08, 0x8e);  /* fine */
    set_gate(0x41, isr_0x41, 0x08, 0x0e);  /* not present */
    set_gate(0x42, isr_0x42, 0x08, 0x8c);  /* a call gate: not for the IDT */
    set_gate(0x43, isr_0x43, 0x18, 0x8e);  /* target code segment not present */
    set_gate(0x44, 0, 0x20, 0x85);         /* a task gate */
    set_gate(0x45, isr_0x45, 0x10, 0x8e);  /* target is a data segment */
}

#define KPROBE(insn) __asm__ volatile("movl $1f, resume_eip; " insn "; 1:" : : : "eax", "ecx", "edx", "memory")

static void report(const char *name) {
    puts(name);
    puts(":");
    if (!events) puts(" none");
    for (int i = 0; i < events; i++) {
        puts(" v="); put_hex(ev_vec[i]);
        puts(" e="); put_hex(ev_err[i] == 0xffffffffu ? ~0ull : ev_err[i]);
        puts(" cpl="); put_dec(ev_cpl[i]);
    }
    puts("\n");
}

static const char *only;
static int selected(const char *name) {
    if (!only) return name[0] != 't';  /* the task gate stops the VM: only on its own */
    const char *a = only, *b = name;
    while (*b && *a == *b) { a++; b++; }
    return !*b && (!*a || *a == ' ');
}
#define CASE(name, setup, body) if (selected(name)) { default_gates(); setup; events = 0; body; default_gates(); report(name); }

void guest_main(uint32_t magic, uint32_t info) {
    only = cmdline_arg(multiboot_cmdline(magic, (uintptr_t)info), "case");
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) gdtr = { sizeof gdt - 1, (uint32_t)(uintptr_t)gdt };
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    reload_segments();
    default_gates();
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = { IDT_ENTRIES * 8 - 1, (uint32_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));

    CASE("p-ok", , KPROBE("int $0x40"))
    CASE("p-int3", , KPROBE("int3"))
    CASE("p-into", , KPROBE("mov $0x7f, %%al; add $1, %%al; into"))
    CASE("p-limit", , KPROBE("int $0x60"))
    CASE("p-notpresent", , KPROBE("int $0x41"))
    CASE("p-calltype", , KPROBE("int $0x42"))
    CASE("p-cs-notpresent", , KPROBE("int $0x43"))
    CASE("p-cs-data", , KPROBE("int $0x45"))
    CASE("p-into-notpresent", idt[4].attr &= 0x7f, KPROBE("mov $0x7f, %%al; add $1, %%al; into"))
    CASE("p-gp-then-np", idt[13].attr &= 0x7f, KPROBE("int $0x60"))  /* contributory, contributory: #DF */
    CASE("task", , KPROBE("int $0x44"))
    puts("events32: done\n");
    guest_exit(0);
}
