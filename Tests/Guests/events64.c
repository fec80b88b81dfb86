/* Event delivery corner cases in long mode (Intel SDM vol. 3 ch. 6.12-6.15): software interrupts through bad
 * gates and segments at CPL0 (where KVM's emulator fails on INT n and the VMM's fallback delivers) and at CPL3
 * (native on the test hosts), and faults during delivery (the double-fault classes). Each case runs from a probe
 * that records every event its handlers see (vector, error code, CPL interrupted, CR2 for #PF) and returns to the
 * probe; prints "NAME: v=0x.. e=0x.. cpl=N [cr2=0x..] ..." per case (the events in order, "none" if none).
 * case=NAME runs one case, else all but the triple faults (which end the VM); exits with status 0. */
#include "guest.h"

#define P 1ull
#define RW 2ull
#define US 4ull
#define PS 0x80ull
#define UNMAPPED 0x40000000ull      /* a not-present 4 KiB page */
#define IST_BAD (UNMAPPED + 0x2000) /* a stack on a not-present page */

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd_low[512] __attribute__((aligned(4096)));
static uint64_t pd_test[512] __attribute__((aligned(4096)));
static uint64_t pt_test[512] __attribute__((aligned(4096)));
static uint8_t kernel_stack[8192] __attribute__((aligned(16)));
static uint8_t user_stack[8192] __attribute__((aligned(16)));
static uint8_t df_stack[8192] __attribute__((aligned(16)));

struct gate64 { uint16_t off0, selector; uint8_t ist, attr; uint16_t off1; uint32_t off2, zero; } __attribute__((packed));
#define IDT_ENTRIES 0x50  /* vectors from 0x50 up are beyond the IDT limit */
static struct gate64 idt[256] __attribute__((aligned(16)));
static struct { uint32_t r0; uint64_t rsp0, rsp1, rsp2, r1, ist[7], r2; uint16_t r3, iomap; } __attribute__((packed)) tss;
static uint64_t gdt[8] = {
    0, 0x00af9a000000ffffull, 0x00cf92000000ffffull,  /* 0x08 kernel code, 0x10 kernel data */
    0x00cff2000000ffffull, 0x00affa000000ffffull,      /* 0x18 user data, 0x20 user code */
    0, 0,                                              /* 0x28 TSS */
    0x00af1a000000ffffull,                             /* 0x38 kernel code, not present */
};

void reload_segments(void);
void isr_3(void), isr_6(void), isr_8(void), isr_10(void), isr_11(void), isr_12(void), isr_13(void), isr_14(void);
void isr_0x40(void), isr_0x41(void), isr_0x42(void), isr_0x43(void), isr_0x44(void), isr_0x45(void), isr_0x46(void),
    isr_0x47(void), isr_0x48(void), isr_0x49(void);

volatile uint64_t resume_rip, resume_rsp;
static volatile uint64_t ev_vec[8], ev_err[8], ev_cpl[8], ev_cr2[8];
static volatile int events;

void on_event(uint64_t *frame) {
    if (events < 8) {
        uint64_t cr2 = 0;
        if (frame[0] == 14) __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        ev_vec[events] = frame[0];
        ev_err[events] = frame[1];
        ev_cpl[events] = frame[3] & 3;
        ev_cr2[events] = cr2;
        events++;
    }
    frame[2] = resume_rip;
    frame[3] = 0x08;
    frame[5] = resume_rsp;
    frame[6] = 0x10;
}

static void set_gate(int vector, void (*handler)(void), uint16_t selector, int attr, int ist) {
    uint64_t a = (uint64_t)(uintptr_t)handler;
    idt[vector] = (struct gate64){ (uint16_t)a, selector, (uint8_t)ist, (uint8_t)attr, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}
static void default_gates(void) {
    set_gate(3, isr_3, 0x08, 0x8e, 0);
    set_gate(6, isr_6, 0x08, 0x8e, 0);
    set_gate(8, isr_8, 0x08, 0x8e, 2);  /* #DF on a stack of its own */
    set_gate(10, isr_10, 0x08, 0x8e, 0);
    set_gate(11, isr_11, 0x08, 0x8e, 0);
    set_gate(12, isr_12, 0x08, 0x8e, 0);
    set_gate(13, isr_13, 0x08, 0x8e, 0);
    set_gate(14, isr_14, 0x08, 0x8e, 0);
    set_gate(0x40, isr_0x40, 0x08, 0x8e, 0);          /* fine */
    set_gate(0x41, isr_0x41, 0x08, 0x6e, 0);          /* DPL3, not present */
    set_gate(0x42, isr_0x42, 0x08, 0x85, 0);          /* task gate: no such thing in long mode */
    set_gate(0x43, isr_0x43, 0x38, 0x8e, 0);          /* target code segment not present */
    set_gate(0x44, isr_0x44, 0x00, 0x8e, 0);          /* null target selector */
    set_gate(0x45, isr_0x45, 0x10, 0x8e, 0);          /* target is a data segment */
    set_gate(0x46, isr_0x46, 0x08, 0x8e, 1);          /* IST1: a stack on a not-present page */
    set_gate(0x47, isr_0x47, 0x08, 0x8e, 0);          /* DPL0 */
    set_gate(0x48, isr_0x48, 0x08, 0xee, 0);          /* DPL3 */
    set_gate(0x49, isr_0x49, 0x08, 0x8c, 0);          /* 64-bit call gate type: not an interrupt gate */
}

/* Kernel probes: the resume point is after the instruction, on the current stack. */
#define KPROBE(insn) __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); mov %%rsp, resume_rsp(%%rip);" \
                                      insn "; 1:" : : : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory")
/* User probes: to CPL3 at a stub that runs the instruction; the handler brings us back. */
#define USTUB(name, insn) void name(void); __asm__(".text; " #name ": " insn "; 2: jmp 2b");
USTUB(u_int47, "int $0x47") USTUB(u_int48, "int $0x48") USTUB(u_int3, "int3") USTUB(u_int60, "int $0x60")
USTUB(u_int41, "int $0x41") USTUB(u_int40, "int $0x40")
static void uprobe(void (*fn)(void)) {
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); mov %%rsp, resume_rsp(%%rip);"
                     "pushq $0x1b; pushq %0; pushq $0x3002; pushq $0x23; pushq %1; iretq; 1:"
                     : : "r"((uint64_t)(uintptr_t)(user_stack + sizeof user_stack)), "r"((uint64_t)(uintptr_t)fn)
                     : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory");
}

static void report(const char *name) {
    puts(name);
    puts(":");
    if (!events) puts(" none");
    for (int i = 0; i < events; i++) {
        puts(" v="); put_hex(ev_vec[i]);
        puts(" e="); put_hex(ev_err[i]);
        puts(" cpl="); put_dec(ev_cpl[i]);
        if (ev_vec[i] == 14) { puts(" cr2="); put_hex(ev_cr2[i]); }
    }
    puts("\n");
}

static const char *only;
static int selected(const char *name) {
    if (!only) return name[0] != 't';  /* the triple faults end the VM: only on their own */
    const char *a = only, *b = name;
    while (*b && *a == *b) { a++; b++; }
    return !*b && (!*a || *a == ' ');
}
#define CASE(name, setup, body) if (selected(name)) { default_gates(); setup; events = 0; body; default_gates(); report(name); }

void guest_main(uint32_t magic, uint32_t info) {
    only = cmdline_arg(multiboot_cmdline(magic, (uintptr_t)info), "case");
    for (int i = 0; i < 512; i++) pd_low[i] = ((uint64_t)i << 21) | P | RW | PS | US;
    pml4[0] = (uint64_t)(uintptr_t)pdpt | P | RW | US;
    pdpt[0] = (uint64_t)(uintptr_t)pd_low | P | RW | US;
    pdpt[1] = (uint64_t)(uintptr_t)pd_test | P | RW | US;
    pd_test[0] = (uint64_t)(uintptr_t)pt_test | P | RW | US;  /* every PTE 0: not present */
    uint64_t t = (uint64_t)(uintptr_t)&tss;
    tss.rsp0 = (uint64_t)(uintptr_t)(kernel_stack + sizeof kernel_stack);
    tss.ist[0] = IST_BAD;
    tss.ist[1] = (uint64_t)(uintptr_t)(df_stack + sizeof df_stack);
    tss.iomap = sizeof tss;
    gdt[5] = (sizeof tss - 1) | ((t & 0xffffff) << 16) | (0x89ull << 40) | (((t >> 24) & 0xff) << 56);
    gdt[6] = t >> 32;
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdtr = { sizeof gdt - 1, (uint64_t)(uintptr_t)gdt };
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    reload_segments();
    __asm__ volatile("ltr %w0" : : "r"(0x28));
    default_gates();
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = { IDT_ENTRIES * 16 - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)(uintptr_t)pml4) : "memory");

    /* Software interrupts at CPL0 (KVM's emulator fails on INT n and INT3: the VMM's fallback delivers them). */
    CASE("k-ok", , KPROBE("int $0x40"))
    CASE("k-int3", , KPROBE("int3"))
    CASE("k-limit", , KPROBE("int $0x60"))
    CASE("k-notpresent", , KPROBE("int $0x41"))
    CASE("k-tasktype", , KPROBE("int $0x42"))
    CASE("k-calltype", , KPROBE("int $0x49"))
    CASE("k-cs-notpresent", , KPROBE("int $0x43"))
    CASE("k-cs-null", , KPROBE("int $0x44"))
    CASE("k-cs-data", , KPROBE("int $0x45"))
    CASE("k-stack-pf", , KPROBE("int $0x46"))
    /* The same from CPL3 (native on the test hosts). */
    CASE("u-ok", , uprobe(u_int48))
    CASE("u-dpl", , uprobe(u_int47))
    CASE("u-int3-dpl", , uprobe(u_int3))
    CASE("u-limit", , uprobe(u_int60))
    CASE("u-notpresent", , uprobe(u_int41))
    CASE("u-dpl0-ok-gate", , uprobe(u_int40))
    /* Faults while delivering (SDM table 6-5). */
    CASE("gp-then-np", idt[13].attr &= 0x7f, KPROBE("int $0x60"))          /* contributory, contributory: #DF */
    CASE("np-then-pf", idt[11].ist = 1, KPROBE("int $0x41"))                /* #PF while delivering #NP: #PF */
    CASE("gp-then-pf", idt[13].ist = 1, KPROBE("int $0x60"))                /* contributory, then #PF: #PF */
    CASE("pf-then-pf", idt[14].ist = 1, KPROBE("mov 0x40000800, %%rax"))    /* #PF, #PF: #DF */
    CASE("pf-then-gp", idt[14].attr &= 0x7f, KPROBE("mov 0x40000800, %%rax")) /* #PF, #NP: #DF */
    /* A #GP KVM raises itself (a non-canonical load at CPL0) whose stack is not mapped: #PF architecturally. */
    CASE("kvm-gp-then-pf", idt[13].ist = 1, KPROBE("mov $0x8000000000000000, %%rax; mov (%%rax), %%rax"))
    /* A fault while delivering #DF: shutdown (the VMM reports a triple fault). */
    CASE("triple", (idt[14].ist = 1, idt[8].ist = 1), KPROBE("mov 0x40000800, %%rax"))
    /* The same with the fallback delivering: #GP, #NP (#DF), then #DF's gate not present. */
    CASE("triple-fallback", (idt[13].attr &= 0x7f, idt[8].attr &= 0x7f), KPROBE("int $0x60"))
    puts("events64: done\n");
    guest_exit(0);
}
