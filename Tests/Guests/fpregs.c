/* Guest SSE registers across exits: at CPL3 (IOPL 3), fills XMM0-7 with a pattern that changes every round,
 * makes a port access that exits to the VMM (a UART scratch-register read), and checks the registers still hold
 * the pattern. rounds=N (default 10000). Prints "fpregs: N rounds, M clobbered" and exits with code 0 (1 if any
 * register changed: the VMM's or the host's register contents leaked into the guest). */
#include "guest.h"

static uint64_t rounds;
static uint8_t user_stack[8192] __attribute__((aligned(16)));
static uint32_t pattern[32] __attribute__((aligned(16)));
static uint32_t after[32] __attribute__((aligned(16)));

static void user_loop(void) {
    uint64_t clobbered = 0;
    for (uint64_t r = 0; r < rounds; r++) {
        for (int i = 0; i < 32; i++) pattern[i] = (uint32_t)(r * 2654435761u) ^ (uint32_t)(i * 0x9e3779b9u) ^ 0x5a5a5a5au;
        __asm__ volatile(
            "movdqa 0(%0), %%xmm0\n movdqa 16(%0), %%xmm1\n movdqa 32(%0), %%xmm2\n movdqa 48(%0), %%xmm3\n"
            "movdqa 64(%0), %%xmm4\n movdqa 80(%0), %%xmm5\n movdqa 96(%0), %%xmm6\n movdqa 112(%0), %%xmm7\n"
            "movw $0x3ff, %%dx\n inb %%dx, %%al\n"
            "movdqa %%xmm0, 0(%1)\n movdqa %%xmm1, 16(%1)\n movdqa %%xmm2, 32(%1)\n movdqa %%xmm3, 48(%1)\n"
            "movdqa %%xmm4, 64(%1)\n movdqa %%xmm5, 80(%1)\n movdqa %%xmm6, 96(%1)\n movdqa %%xmm7, 112(%1)\n"
            : : "r"(pattern), "r"(after) : "eax", "edx", "memory");  /* XMM: the guest is built without SSE, so nothing else uses them */
        for (int i = 0; i < 32; i++) {
            if (after[i] != pattern[i]) { clobbered++; break; }
        }
    }
    puts("fpregs: ");
    put_dec(rounds);
    puts(" rounds, ");
    put_dec(clobbered);
    puts(" clobbered\n");
    guest_exit(clobbered ? 1 : 0);
    for (;;) { }
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *n = cmdline_arg(cmdline, "rounds");
    rounds = n ? parse_u64(n) : 10000;
    /* SSE on: CR0.EM off, CR0.MP on, CR4.OSFXSR and OSXMMEXCPT on. */
    uint32_t cr0, cr4;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %0, %%cr0" : : "r"((cr0 & ~4u) | 2u));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4 | (1u << 9) | (1u << 10)));
    puts("fpregs: ready\n");
    enter_user(user_loop, user_stack + sizeof user_stack);
}
