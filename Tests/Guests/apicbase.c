/* IA32_APIC_BASE, SVR software-disable, IPI destinations and the timer's count across mode changes, with one
 * vCPU, 32-bit kernel code (SDM vol. 3, 10.4.3, 10.4.7, 10.5.4, 10.6):
 *   msr:    the MSR reads 0xfee00900 (enabled, BSP) and CPUID.1:EDX.APIC is set; x2apic: setting EXTD (bit 10)
 *           with x2APIC hidden from CPUID raises #GP(0) and changes nothing;
 *   off:    cleared enable bit: CPUID.APIC clear, the page reads all-ones (not the APIC), an ICR write there sends
 *           nothing;
 *   reset:  enabled again: the registers are at their power-up values (SVR 0xff, TPR 0, LDR 0, LVT masked, IRR
 *           empty though a vector was pending before), the ID kept;
 *   moved:  the base moved to 0xfed00000: the APIC answers there (ID, a self-IPI through its ICR is delivered),
 *           the old page reads all-ones; back: at 0xfee00000 again;
 *   svr:    SVR bit 8 clear masks every LVT entry and keeps it masked against writes;
 *   short:  vector 0x52 to itself by shorthand self, all-including-self, all-excluding-self, physical broadcast
 *           0xff, logical flat broadcast 0xff with LDR bit 0, and logical 0xff with LDR 0: "1,1,0,1,1,0";
 *   timer:  one-shot counting, switched to periodic: the count goes on (below the initial count, not 0); to
 *           TSC-deadline: disarmed, initial and current count 0.
 * Prints "apicbase: msr=1 x2apic=1 off=1 reset=1 moved=1 back=1 svr=1 short=1,1,0,1,1,0 timer=1" and exits with status 0. */
#include "guest.h"

#define DEFAULT_BASE 0xfee00000u
#define MOVED_BASE 0xfed00000u
volatile uint32_t got52, gp_count;
void isr_52(void);
void isr_gp(void);

static inline uint64_t rdmsr(uint32_t m) {
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(m));
    return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t m, uint64_t v) { __asm__ volatile("wrmsr" : : "c"(m), "a"((uint32_t)v), "d"((uint32_t)(v >> 32))); }
static uint32_t cpuid_apic(void) {
    uint32_t a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return (d >> 9) & 1;
}
static volatile uint32_t *page(uint32_t base) { return (volatile uint32_t *)(uintptr_t)base; }
static uint32_t reg(uint32_t base, uint32_t offset) { return page(base)[offset / 4]; }
static void set(uint32_t base, uint32_t offset, uint32_t v) { page(base)[offset / 4] = v; }
/* Sends vector 0x52 (ICR low bits beyond the vector given) and returns how many times it arrived. */
static uint32_t send52(uint32_t base, uint32_t high, uint32_t low) {
    uint32_t before = got52;
    set(base, 0x310, high);
    set(base, 0x300, low | 0x52);
    for (int i = 0; i < 50; i++) (void)inb(COM1 + 5);  /* IF is set: it arrives here at the latest */
    return got52 - before;
}

void guest_main(uint32_t magic, uint32_t info) {
    (void)magic; (void)info;
    idt_set_gate(0x52, isr_52);
    idt_set_gate(13, isr_gp);
    idt_load();
    uint32_t b = DEFAULT_BASE;
    uint32_t msr = rdmsr(0x1b) == 0xfee00900 && cpuid_apic();
    wrmsr(0x1b, 0xfee00d00);           /* EXTD: a reserved bit while CPUID hides x2APIC */
    uint32_t x2apic = gp_count == 1 && rdmsr(0x1b) == 0xfee00900;
    set(b, 0xf0, 0x1ff);
    __asm__ volatile("sti");

    /* A vector left pending (TPR above it), then the APIC disabled. */
    set(b, 0x80, 0xf0);
    set(b, 0xd0, 0x01000000);
    set(b, 0x320, 0x40);
    set(b, 0x300, (1u << 18) | 0x52);
    wrmsr(0x1b, 0xfee00100);
    uint32_t off = !cpuid_apic() && reg(b, 0x20) == 0xffffffff && reg(b, 0xf0) == 0xffffffff;
    set(b, 0x300, (1u << 18) | 0x52);  /* nobody's page: goes nowhere */
    for (int i = 0; i < 50; i++) (void)inb(COM1 + 5);
    off = off && got52 == 0;

    wrmsr(0x1b, 0xfee00900);
    uint32_t reset = cpuid_apic() && reg(b, 0x20) == 0 && reg(b, 0xf0) == 0xff && reg(b, 0x80) == 0
        && reg(b, 0xd0) == 0 && reg(b, 0x320) == 0x10000 && reg(b, 0x200 + 0x20) == 0 && got52 == 0;
    set(b, 0xf0, 0x1ff);
    for (int i = 0; i < 50; i++) (void)inb(COM1 + 5);
    reset = reset && got52 == 0;  /* the old pending vector is gone for good */

    wrmsr(0x1b, MOVED_BASE | 0x900);
    uint32_t moved = rdmsr(0x1b) == (MOVED_BASE | 0x900) && reg(DEFAULT_BASE, 0x20) == 0xffffffff
        && reg(MOVED_BASE, 0x20) == 0 && reg(MOVED_BASE, 0xf0) == 0x1ff;
    moved = moved && send52(MOVED_BASE, 0, 1u << 18) == 1;
    wrmsr(0x1b, DEFAULT_BASE | 0x900);
    uint32_t back = reg(MOVED_BASE, 0x20) == 0xffffffff && reg(DEFAULT_BASE, 0xf0) == 0x1ff
        && send52(DEFAULT_BASE, 0, 1u << 18) == 1;

    set(b, 0x350, 0x30);               /* LINT0 unmasked */
    set(b, 0xf0, 0xff);                /* software-disabled */
    uint32_t svr = reg(b, 0x350) & 0x10000;
    set(b, 0x320, 0x40);               /* unmasked write while disabled */
    svr = svr && (reg(b, 0x320) & 0x10000) && (reg(b, 0x350) & 0x10000);
    set(b, 0xf0, 0x1ff);
    svr = svr && (reg(b, 0x350) & 0x10000);  /* stays masked once enabled again, until written */

    uint32_t s[6];
    s[0] = send52(b, 0, 1u << 18);               /* self */
    s[1] = send52(b, 0, 2u << 18);               /* all including self */
    s[2] = send52(b, 0, 3u << 18);               /* all excluding self */
    s[3] = send52(b, 0xff000000, 0);             /* physical broadcast */
    set(b, 0xe0, 0xffffffff);                    /* flat model */
    set(b, 0xd0, 0x01000000);
    s[4] = send52(b, 0xff000000, 1u << 11);      /* logical broadcast */
    set(b, 0xd0, 0);
    s[5] = send52(b, 0xff000000, 1u << 11);      /* logical broadcast, no logical ID */

    set(b, 0x3e0, 0xb);                          /* divide by 1: one tick per ns */
    set(b, 0x320, 0x10040);                      /* one-shot, masked */
    set(b, 0x380, 2000000000);                   /* 2 s */
    uint32_t c1 = reg(b, 0x390);
    set(b, 0x320, 0x30040);                      /* periodic */
    uint32_t c2 = reg(b, 0x390);
    uint32_t timer = c1 > 0 && c1 < 2000000000 && c2 > 0 && c2 <= c1 && reg(b, 0x380) == 2000000000;
    set(b, 0x320, 0x50040);                      /* TSC-deadline */
    timer = timer && reg(b, 0x380) == 0 && reg(b, 0x390) == 0;

    puts("apicbase: msr="); put_dec(msr);
    puts(" x2apic="); put_dec(x2apic);
    puts(" off="); put_dec(off);
    puts(" reset="); put_dec(reset);
    puts(" moved="); put_dec(moved);
    puts(" back="); put_dec(back);
    puts(" svr="); put_dec(svr != 0);
    puts(" short=");
    for (int i = 0; i < 6; i++) { put_dec(s[i]); if (i < 5) puts(","); }
    puts(" timer="); put_dec(timer);
    puts("\n");
    guest_exit(0);
}
