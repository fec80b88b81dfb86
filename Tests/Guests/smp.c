/* Two vCPUs: reads the MP table (checksums, enabled processors, the IOAPIC's ID), starts the application
 * processor with INIT, INIT de-assert and two start-up IPIs (the second must be ignored: it is running), then
 * exchanges fixed IPIs both ways. Prints "smp: cpus=2 ioapic=2 started=1 apid=1 ipi=1,1" and exits with status 0;
 * with end=halt it parks itself instead (cli; hlt, as the AP does), which must end the VM as a halt. With pingpong=N
 * the two then exchange N more IPIs each, one at a time, and it also prints "smp: pingpong=N doubled=D" (D: IPIs
 * that arrived more often than sent); a lost IPI hangs it. With nmipairs=N the AP then sends the BSP N pairs of NMIs,
 * the two of a pair back to back, each pair once the BSP has returned from the last one's handler: the CPU delivers one and latches the
 * second whatever the timing, so the BSP must count exactly 2N. The BSP meanwhile reads a UART port in a loop (each
 * read is a round trip out of KVM, where NMIs wait for the vCPU to take them). Prints "smp: nmipairs=N nmis=M".
 * With shorthands=1 the BSP sends vector 0x53 by shorthand all-including-self, all-excluding-self, physical
 * broadcast 0xff, logical flat broadcast 0xff (logical IDs 1 and 2), shorthand self and logical destination 2, and
 * prints which CPUs took each as "smp: shorthands=11,01,11,11,10,01" (BSP then AP). */
#include "guest.h"

void isr_from_ap(void);
void isr_from_bsp(void);
void isr_nmi_count(void);
void isr_short(void);
extern const uint8_t ap_trampoline[], ap_trampoline_end[];
volatile uint32_t from_ap, from_bsp, ap_started, ap_id, ap_got, pingpong, doubled;
volatile uint32_t nmi_pairs, nmis, nmis_done;
volatile uint32_t nmis_returned;  /* nmis as the BSP's loop saw it: outside the handler, so after its IRET */
volatile uint32_t shorthands, short_done, short_got[2];

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
#define TRAMPOLINE 0x7000

static void send_ipi(uint8_t apic_id, uint32_t low) {
    lapic[0x310 / 4] = (uint32_t)apic_id << 24;
    lapic[0x300 / 4] = low;
}

static uint8_t sum(const volatile uint8_t *p, uint32_t n) {
    uint8_t s = 0;
    while (n--) s += *p++;
    return s;
}

void ap_main(void) {
    ap_started++;
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;
    ap_id = lapic[0x20 / 4] >> 24;
    lapic[0xe0 / 4] = 0xffffffff;                 /* flat logical model, logical ID 2 */
    lapic[0xd0 / 4] = 0x02000000;
    send_ipi(0, 0x50);                            /* fixed, physical, to the BSP */
    while (!from_bsp) __asm__ volatile("sti; hlt; cli");
    ap_got = from_bsp;
    /* Round i: the BSP's i-th IPI arrives, then this CPU answers with its i-th. */
    for (uint32_t i = 2; i <= pingpong + 1; i++) {
        while (from_bsp < i) __asm__ volatile("sti; hlt; cli");
        if (from_bsp != i) doubled++;
        send_ipi(0, 0x50);
    }
    for (uint32_t i = 1; i <= nmi_pairs; i++) {
        /* The next pair only once the BSP is back from the last handler's IRET: sent while it is still in the
         * handler (between its count and its IRET, a window a preempted vCPU thread makes long), the first NMI
         * would be latched and the second would collapse, as on a CPU. */
        uint32_t before = nmis_returned;
        send_ipi(0, 0x400);                       /* NMI, physical, to the BSP */
        send_ipi(0, 0x400);
        /* Bounded (by TSC, a few seconds; a pause count's time varies a hundredfold with the host's load): a lost
         * NMI shows in the count instead of hanging, and costs this pair's wait only. */
        uint64_t start = rdtsc();
        while (nmis_returned < before + 2 && rdtsc() - start < 10000000000ull) __asm__ volatile("pause");
    }
    if (nmi_pairs) {                              /* a late extra one shows */
        uint64_t start = rdtsc();
        while (rdtsc() - start < 300000000ull) __asm__ volatile("pause");
    }
    nmis_done = 1;
    while (shorthands && !short_done) __asm__ volatile("sti; hlt; cli");
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *end = cmdline_arg(cmdline, "end");
    int park = end && end[0] == 'h';
    const char *rounds = cmdline_arg(cmdline, "pingpong");
    pingpong = rounds ? (uint32_t)parse_u64(rounds) : 0;
    const char *pairs = cmdline_arg(cmdline, "nmipairs");
    nmi_pairs = pairs ? (uint32_t)parse_u64(pairs) : 0;
    shorthands = cmdline_arg(cmdline, "shorthands") != 0;

    uint32_t cpus = 0, ioapic = 0xff;
    const volatile uint8_t *mp = (const volatile uint8_t *)0x9fc00;
    if (mp[0] == '_' && mp[1] == 'M' && mp[2] == 'P' && mp[3] == '_' && sum(mp, 16) == 0) {
        const volatile uint8_t *cfg = (const volatile uint8_t *)(uintptr_t)*(const volatile uint32_t *)(mp + 4);
        uint16_t length = *(const volatile uint16_t *)(cfg + 4), count = *(const volatile uint16_t *)(cfg + 34);
        if (cfg[0] == 'P' && cfg[1] == 'C' && cfg[2] == 'M' && cfg[3] == 'P' && sum(cfg, length) == 0) {
            const volatile uint8_t *e = cfg + 44;
            for (uint16_t i = 0; i < count; i++) {
                if (e[0] == 0) { cpus += e[3] & 1; e += 20; continue; }
                if (e[0] == 2) ioapic = e[1];
                e += 8;
            }
        }
    }

    idt_set_gate(0x50, isr_from_ap);
    idt_set_gate(0x51, isr_from_bsp);
    idt_set_gate(2, isr_nmi_count);
    idt_set_gate(0x53, isr_short);
    lapic[0xe0 / 4] = 0xffffffff;                 /* flat logical model, logical ID 1 */
    lapic[0xd0 / 4] = 0x01000000;
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;
    volatile uint8_t *dst = (volatile uint8_t *)TRAMPOLINE;
    for (const uint8_t *p = ap_trampoline; p < ap_trampoline_end; p++) *dst++ = *p;

    send_ipi(1, 0xc500);                          /* INIT, level, assert */
    send_ipi(1, 0x8500);                          /* INIT de-assert: nothing to deliver */
    send_ipi(1, 0x0600 | (TRAMPOLINE >> 12));     /* start-up */
    send_ipi(1, 0x0600 | (TRAMPOLINE >> 12));     /* the second start-up IPI of the MP protocol */
    while (!from_ap) __asm__ volatile("sti; hlt; cli");
    send_ipi(1, 0x51);
    while (!ap_got) __asm__ volatile("pause");

    puts("smp: cpus="); put_dec(cpus);
    puts(" ioapic="); put_dec(ioapic);
    puts(" started="); put_dec(ap_started);
    puts(" apid="); put_dec(ap_id);
    puts(" ipi="); put_dec(from_ap); puts(","); put_dec(ap_got);
    puts("\n");
    if (pingpong) {
        for (uint32_t i = 2; i <= pingpong + 1; i++) {
            send_ipi(1, 0x51);
            while (from_ap < i) __asm__ volatile("sti; hlt; cli");
            if (from_ap != i) doubled++;
        }
        puts("smp: pingpong="); put_dec(pingpong);
        puts(" doubled="); put_dec(doubled);
        puts("\n");
    }
    if (nmi_pairs) {
        while (!nmis_done) {
            inb(COM1 + 5);
            nmis_returned = nmis;
        }
        puts("smp: nmipairs="); put_dec(nmi_pairs);
        puts(" nmis="); put_dec(nmis);
        puts("\n");
    }
    if (shorthands) {
        /* Destination, command, and the CPUs meant to take it (bit 0: BSP, bit 1: AP). */
        static const uint32_t cases[][3] = {
            { 0, (2u << 18) | 0x53, 3 },          /* all including self */
            { 0, (3u << 18) | 0x53, 2 },          /* all excluding self */
            { 0xff000000, 0x53, 3 },              /* physical broadcast */
            { 0xff000000, (1u << 11) | 0x53, 3 }, /* logical broadcast */
            { 0, (1u << 18) | 0x53, 1 },          /* self */
            { 0x02000000, (1u << 11) | 0x53, 2 }, /* logical ID 2 */
        };
        puts("smp: shorthands=");
        __asm__ volatile("sti");
        for (uint32_t c = 0; c < 6; c++) {
            short_got[0] = short_got[1] = 0;
            lapic[0x310 / 4] = cases[c][0];
            lapic[0x300 / 4] = cases[c][1];
            /* Until the CPUs meant to take it have (the AP waits in HLT with IF set; its wake-up can take
             * milliseconds on a busy host), at most about a second, then as long again as a delivery usually
             * takes, in which a wrong or doubled one shows. */
            for (uint32_t i = 0; i < 100000 && ((short_got[0] ? 1u : 0u) | (short_got[1] ? 2u : 0u)) != cases[c][2]; i++)
                (void)inb(COM1 + 5);
            for (int i = 0; i < 300; i++) (void)inb(COM1 + 5);
            put_dec(short_got[0]);
            put_dec(short_got[1]);
            if (c < 5) puts(",");
        }
        __asm__ volatile("cli");
        puts("\n");
        short_done = 1;
        send_ipi(1, 0x51);                        /* wakes the AP's wait */
    }
    if (park) for (;;) __asm__ volatile("cli; hlt");
    guest_exit(0);
}
