/* Page-fault error codes as the guest's own #PF handler receives them. Long mode, own page tables with one
 * test page per permission combination at 0x40000000, CR0.WP and EFER.NXE on; probes reads, writes and fetches
 * at CPL0 and CPL3, records CR2 and the error code of each fault, returns to the kernel through a fault at
 * DONE_ADDRESS, prints
 * "pf va=0x... kind=r|w|x cpl=0|3 code=0x..." per fault and "pagefaults: done N", exits with status 0.
 * syscall=1: a system-call entry on a supervisor page in the kernel half (LSTAR), one real SYSCALL from CPL3 and
 * three forged entries: user-mode jumps to LSTAR with RCX and R11 set up as a SYSCALL would leave them, each wrong
 * in one way (R11 with IOPL 3 / RCX after no SYSCALL instruction / both). Prints "syscall: genuine=G forged_entries=E forged_faults=F" and exits with 0 when the real one
 * entered (G=1) and no forged one did (E=0, each a page fault instead: F=3). On hosts whose SYSCALL from user mode
 * faults at LSTAR (PVM), the VMM's fix-up must tell the real one from the forged ones. */
#include "guest.h"

#define P 1ull
#define RW 2ull
#define US 4ull
#define PS 0x80ull
#define XD (1ull << 63)
#define TEST_BASE 0x40000000ull
#define DONE_ADDRESS (TEST_BASE + 0x800)  /* inside the not-present page */

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd_low[512] __attribute__((aligned(4096)));
static uint64_t pdpt_high[512] __attribute__((aligned(4096)));
static uint64_t pd_test[512] __attribute__((aligned(4096)));
static uint64_t pt_test[512] __attribute__((aligned(4096)));
static uint8_t frames[6][4096] __attribute__((aligned(4096)));
static uint8_t kernel_stack[8192] __attribute__((aligned(16)));
static uint8_t user_stack[8192] __attribute__((aligned(16)));

struct gate64 { uint16_t off0, selector; uint8_t ist, attr; uint16_t off1; uint32_t off2, zero; } __attribute__((packed));
static struct gate64 idt[256] __attribute__((aligned(16)));
static struct { uint32_t r0; uint64_t rsp0, rsp1, rsp2, r1, ist[7], r2; uint16_t r3, iomap; } __attribute__((packed)) tss;
static uint64_t gdt[7] = {
    0, 0x00af9a000000ffffull, 0x00cf92000000ffffull,  /* 0x08 kernel code, 0x10 kernel data */
    0x00cff2000000ffffull, 0x00affa000000ffffull,      /* 0x18 user data, 0x20 user code (RPL 3 selectors) */
    0, 0,                                              /* 0x28 TSS (16 bytes) */
};

volatile uint64_t resume_rip;
static volatile uint64_t fault_va[32], fault_code[32];
static volatile char fault_kind[32], fault_cpl[32];
static volatile int faults;
static char current_kind;

void isr_page_fault(void);
void reload_segments(void);
void finish(void);

static int sse_switch;
static uint8_t fx_area[512] __attribute__((aligned(64)));
static uint8_t other_area[512] __attribute__((aligned(64)));
void finish(void);

void on_page_fault(uint64_t *frame) {
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    if (cr2 == DONE_ADDRESS) finish();  /* the user-mode part is done (INT n from CPL3 faults on these hosts) */
    if (sse_switch) {
        /* What Linux does when it switches tasks in between: the user's registers saved to memory, other values in
         * the registers, then the user's put back before the return. */
        __asm__ volatile("fxsave64 %0" : "=m"(fx_area) : : "memory");
        *(uint32_t *)(other_area + 24) = 0x1f80;  /* another task's state: zeros, default MXCSR */
        __asm__ volatile("fxrstor64 %0" : : "m"(other_area) : "memory");
        __asm__ volatile("fxrstor64 %0" : : "m"(fx_area) : "memory");
    }
    if (faults < 32) {
        fault_va[faults] = cr2;
        fault_code[faults] = frame[0];
        fault_kind[faults] = current_kind;
        fault_cpl[faults] = (char)(frame[2] & 3);
        faults++;
    }
    frame[1] = resume_rip;
}

/* Each probe sets the place to resume at, then makes one access that may fault. */
static void probe_read(uint64_t va) {
    current_kind = 'r';
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); mov (%0), %%rax; 1:" : : "r"(va) : "rax", "memory");
}
static void probe_write(uint64_t va) {
    current_kind = 'w';
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); movq $1, (%0); 1:" : : "r"(va) : "rax", "memory");
}
static int syscall_mode;
volatile uint64_t syscall_entries, syscall_genuine, lstar_alias;
void syscall_entry(void);
void user_syscall_site(void);
void user_after_syscall(void);
#define KERNEL_ALIAS 0xffffffff80000000ull

/* A real SYSCALL, then jumps to LSTAR that only look like one; each resumes at its local label, through SYSRET
 * (RCX, which user_after_syscall follows to resume_rip) if the entry ran, through the #PF handler if not. */
static void user_syscall(void) {
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); jmp user_syscall_site; 1:"
                     : : : "rax", "rcx", "r11", "memory");
    uint64_t genuine = syscall_entries;
    current_kind = 'x';
    /* R11 with IOPL 3 (SYSRET would hand the user port I/O), RCX right after a real SYSCALL instruction. */
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); lea user_after_syscall(%%rip), %%rcx;"
                     "mov $0x3202, %%r11; jmp *%0; 1:" : : "r"(lstar_alias) : "rax", "rcx", "r11", "memory");
    /* The user's own flags, RCX after no SYSCALL. */
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); lea 1f(%%rip), %%rcx;"
                     "pushfq; pop %%r11; jmp *%0; 1:" : : "r"(lstar_alias) : "rax", "rcx", "r11", "memory");
    /* RCX after a real SYSCALL and the user's own flags with IOPL 3 added. */
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); lea user_after_syscall(%%rip), %%rcx;"
                     "pushfq; pop %%r11; or $0x3000, %%r11; jmp *%0; 1:" : : "r"(lstar_alias) : "rax", "rcx", "r11", "memory");
    syscall_entries -= genuine;  /* what the forged ones added */
    syscall_genuine = genuine;
    (void)*(volatile uint64_t *)DONE_ADDRESS;  /* back to the kernel */
    for (;;) { }
}

static void probe_fetch(uint64_t va) {
    current_kind = 'x';
    __asm__ volatile("lea 1f(%%rip), %%rax; mov %%rax, resume_rip(%%rip); jmp *%0; 1:" : : "r"(va) : "rax", "memory");
}

static uint64_t page(int k) { return TEST_BASE + (uint64_t)k * 4096; }

static void user_main(void) {
    probe_read(page(1));   /* supervisor page */
    probe_write(page(3));  /* read-only user page */
    probe_read(page(0));   /* not present */
    probe_fetch(page(4));  /* execute-disabled user page */
    probe_read(page(2));   /* allowed: no fault */
    (void)*(volatile uint64_t *)DONE_ADDRESS;  /* back to the kernel */
    for (;;) { }
}

/* sse=N: N rounds of XMM0-7 filled with a pattern, a user-mode write to the not-present page (a #PF into this
 * guest's kernel, which resumes after the write), and a check of the registers: "pagefaults: sse N rounds, M
 * clobbered" (exit code 1 if M > 0). The guest kernel here never touches XMM, so a change can only come from the
 * VMM or the host. */
static uint64_t sse_rounds, sse_clobbered;
static uint32_t pattern[32] __attribute__((aligned(16)));
static uint32_t after[32] __attribute__((aligned(16)));

static void user_sse(void) {
    for (uint64_t r = 0; r < sse_rounds; r++) {
        for (int i = 0; i < 32; i++) pattern[i] = (uint32_t)(r * 2654435761u) ^ (uint32_t)(i * 0x9e3779b9u) ^ 0xa5a5a5a5u;
        current_kind = 'w';
        __asm__ volatile(
            "movdqa 0(%0), %%xmm0\n movdqa 16(%0), %%xmm1\n movdqa 32(%0), %%xmm2\n movdqa 48(%0), %%xmm3\n"
            "movdqa 64(%0), %%xmm4\n movdqa 80(%0), %%xmm5\n movdqa 96(%0), %%xmm6\n movdqa 112(%0), %%xmm7\n"
            "lea 1f(%%rip), %%rax\n mov %%rax, resume_rip(%%rip)\n movq $1, (%2)\n 1:\n"
            "movdqa %%xmm0, 0(%1)\n movdqa %%xmm1, 16(%1)\n movdqa %%xmm2, 32(%1)\n movdqa %%xmm3, 48(%1)\n"
            "movdqa %%xmm4, 64(%1)\n movdqa %%xmm5, 80(%1)\n movdqa %%xmm6, 96(%1)\n movdqa %%xmm7, 112(%1)\n"
            : : "r"(pattern), "r"(after), "r"(TEST_BASE) : "rax", "memory");
        for (int i = 0; i < 32; i++) {
            if (after[i] != pattern[i]) { sse_clobbered++; break; }
        }
    }
    (void)*(volatile uint64_t *)DONE_ADDRESS;  /* back to the kernel */
    for (;;) { }
}

void finish(void) {
    if (syscall_mode) {
        uint64_t forged_faults = 0;
        for (int i = 0; i < faults; i++) forged_faults += fault_va[i] == lstar_alias && fault_cpl[i] == 3;
        puts("syscall: genuine="); put_dec(syscall_genuine);
        puts(" forged_entries="); put_dec(syscall_entries);
        puts(" forged_faults="); put_dec(forged_faults);
        puts("\n");
        guest_exit(syscall_genuine == 1 && syscall_entries == 0 && forged_faults == 3 ? 0 : 1);
        for (;;) { }
    }
    if (sse_rounds) {
        puts("pagefaults: sse ");
        put_dec(sse_rounds);
        puts(" rounds, ");
        put_dec(sse_clobbered);
        puts(" clobbered\n");
        guest_exit(sse_clobbered ? 1 : 0);
        for (;;) { }
    }
    for (int i = 0; i < faults; i++) {
        puts("pf va="); put_hex(fault_va[i]);
        puts(" kind="); putc(fault_kind[i]);
        puts(" cpl="); put_dec((uint64_t)fault_cpl[i]);
        puts(" code="); put_hex(fault_code[i]);
        puts("\n");
    }
    puts("pagefaults: done ");
    put_dec((uint64_t)faults);
    puts("\n");
    guest_exit(0);
}

static void set_gate(int vector, void (*handler)(void), int dpl) {
    uint64_t a = (uint64_t)(uintptr_t)handler;
    idt[vector] = (struct gate64){ (uint16_t)a, 0x08, 0, (uint8_t)(0x8e | (dpl << 5)), (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}

void guest_main(uint32_t magic, uint32_t info) {
    const char *sse = cmdline_arg(multiboot_cmdline(magic, (uintptr_t)info), "sse");
    sse_rounds = sse ? parse_u64(sse) : 0;
    sse_switch = cmdline_arg(multiboot_cmdline(magic, (uintptr_t)info), "switch") != 0;
    syscall_mode = cmdline_arg(multiboot_cmdline(magic, (uintptr_t)info), "syscall") != 0;
    if (sse_rounds) {
        uint64_t cr0, cr4;  /* SSE on: CR0.EM off, CR0.MP on, CR4.OSFXSR and OSXMMEXCPT on */
        __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
        __asm__ volatile("mov %0, %%cr0" : : "r"((cr0 & ~4ull) | 2ull));
        __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
        __asm__ volatile("mov %0, %%cr4" : : "r"(cr4 | (1ull << 9) | (1ull << 10)));
    }
    /* Identity map of the first GiB with 2 MiB pages; the one holding this image is user-accessible. */
    for (int i = 0; i < 512; i++) pd_low[i] = ((uint64_t)i << 21) | P | RW | PS | (i == 1 ? US : 0);
    pml4[0] = (uint64_t)(uintptr_t)pdpt | P | RW | US;
    pdpt[0] = (uint64_t)(uintptr_t)pd_low | P | RW | US;
    pdpt[1] = (uint64_t)(uintptr_t)pd_test | P | RW | US;
    pd_test[0] = (uint64_t)(uintptr_t)pt_test | P | RW | US;
    /* The first GiB again at KERNEL_ALIAS, supervisor only: where LSTAR points, as a kernel's entry would be. */
    pml4[511] = (uint64_t)(uintptr_t)pdpt_high | P | RW;
    pdpt_high[510] = (uint64_t)(uintptr_t)pd_low | P | RW;
    uint64_t f[6];
    for (int k = 0; k < 6; k++) { f[k] = (uint64_t)(uintptr_t)frames[k]; frames[k][0] = 0xc3; }
    pt_test[0] = 0;                          /* not present */
    pt_test[1] = f[1] | P;                   /* read-only, supervisor */
    pt_test[2] = f[2] | P | RW | US;         /* read-write, user */
    pt_test[3] = f[3] | P | US;              /* read-only, user */
    pt_test[4] = f[4] | P | RW | US | XD;    /* user, execute-disabled */
    pt_test[5] = f[5] | P | RW | XD;         /* supervisor, execute-disabled */

    uint64_t t = (uint64_t)(uintptr_t)&tss;
    tss.rsp0 = (uint64_t)(uintptr_t)(kernel_stack + sizeof kernel_stack);
    tss.iomap = sizeof tss;
    gdt[5] = (sizeof tss - 1) | ((t & 0xffffff) << 16) | (0x89ull << 40) | (((t >> 24) & 0xff) << 56);
    gdt[6] = t >> 32;
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdtr = { sizeof gdt - 1, (uint64_t)(uintptr_t)gdt };
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    reload_segments();
    __asm__ volatile("ltr %w0" : : "r"(0x28));
    set_gate(14, isr_page_fault, 0);
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));

    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xc0000080));
    lo |= 1u << 11;  /* EFER.NXE */
    __asm__ volatile("wrmsr" : : "a"(lo), "d"(hi), "c"(0xc0000080));
    uint64_t cr0;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 |= 1u << 16;  /* WP */
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0));
    __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)(uintptr_t)pml4) : "memory");

    if (syscall_mode) {
        lstar_alias = KERNEL_ALIAS + (uint64_t)(uintptr_t)syscall_entry;
        __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xc0000080));
        __asm__ volatile("wrmsr" : : "a"(lo | 1u), "d"(hi), "c"(0xc0000080));  /* EFER.SCE */
        /* STAR: kernel CS 0x08 (SS 0x10); SYSRET to CS 0x20|3 and SS 0x18|3 (base 0x10). */
        __asm__ volatile("wrmsr" : : "a"(0), "d"(0x00100008u), "c"(0xc0000081));
        __asm__ volatile("wrmsr" : : "a"((uint32_t)lstar_alias), "d"((uint32_t)(lstar_alias >> 32)), "c"(0xc0000082));
        __asm__ volatile("wrmsr" : : "a"(0x4700u), "d"(0), "c"(0xc0000084));  /* FMASK as Linux's: TF, IF, DF, IOPL, NT, AC */
        /* Exits for a while, so that a VMM watching this IDT's #PF entry has looked at it. */
        for (uint64_t t0 = rdtsc(); rdtsc() - t0 < 300000000ull;) (void)inb(0x61);
    }
    probe_read(page(0));   /* not present */
    probe_write(page(1));  /* read-only with CR0.WP */
    probe_read(page(1));   /* allowed */
    probe_fetch(page(4));  /* execute-disabled */
    probe_fetch(page(5));  /* execute-disabled */
    probe_write(page(3));  /* read-only user page, supervisor write */

    /* To CPL3 with IRETQ: SS, RSP, RFLAGS, CS, RIP. */
    __asm__ volatile("pushq $0x1b; pushq %0; pushq $0x2; pushq $0x23; pushq %1; iretq"
                     : : "r"((uint64_t)(uintptr_t)(user_stack + sizeof user_stack)),
                         "r"((uint64_t)(uintptr_t)(syscall_mode ? user_syscall : sse_rounds ? user_sse : user_main)) : "memory");
}
