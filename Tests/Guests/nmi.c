/* NMIs sent to itself through the LAPIC's ICR (delivery mode NMI, shorthand self), 32-bit kernel code.
 * 1. Blocking and latching: the first NMI's handler sends three more; none may arrive inside the handler, exactly
 *    one is delivered after its IRET, before the next instruction of the code the first one interrupted.
 * 2. count=N (default 100000): N self-NMIs, each sent after the previous one's handler ran; none may be lost
 *    (a lost one hangs), none doubled. Prints
 *    "nmi: nested=A latched=B after_iret=C", "nmi: iret_fault gp=1 error=0x50 unblocked=1 handled=2", "nmi: sent=N handled=M cycles=T" (guest TSC) and
 *    "nmi: to_handler=X handler_and_iret=Y" (mean cycles from the ICR write to the handler, and from there until
 *    the sender runs again) and exits with status 0. */
#include "guest.h"

void isr_nmi(void);
void isr_gp(void);
static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
volatile uint32_t handled, nested, resend, marker, seen_marker, in_handler;
volatile uint64_t entered_at;
/* 3. The NMI handler's IRET faults (#GP: its CS is beyond the GDT): that IRET already ended the blocking (SDM
 *    vol. 3, 6.7.1; VMX's "NMI unblocking due to IRET"), so an NMI sent in the #GP handler arrives there; the #GP
 *    handler then repairs the frame and the IRET runs again. */
volatile uint32_t fault_iret, good_cs, gp_seen, gp_error, unblocked_in_gp;

static void self_nmi(void) { lapic[0x300 / 4] = 0x00044400; }  /* self shorthand, level assert, NMI */

void on_nmi(uint32_t *regs) {
    entered_at = rdtsc();
    if (fault_iret) {
        fault_iret = 0;
        good_cs = regs[9];
        regs[9] = 0x50;
    }
    if (in_handler) nested++;
    in_handler = 1;
    handled++;
    if (handled == 2) seen_marker = marker;  /* 0: delivered right after the first handler's IRET */
    if (resend) {
        resend = 0;
        uint32_t before = handled;
        self_nmi();
        self_nmi();
        self_nmi();
        for (int i = 0; i < 100; i++) __asm__ volatile("pause");
        if (handled != before) nested++;
    }
    in_handler = 0;
}

void on_gp(uint32_t *regs) {
    gp_seen++;
    gp_error = regs[8];
    if (regs[13] == 0x50) regs[13] = good_cs;  /* the NMI frame the IRET was popping */
    uint32_t before = handled;
    self_nmi();
    for (int i = 0; i < 100; i++) __asm__ volatile("pause");
    unblocked_in_gp = handled != before;
}

void guest_main(uint32_t magic, uint32_t info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *c = cmdline_arg(cmdline, "count");
    uint64_t count = c ? parse_u64(c) : 100000;
    idt_set_gate(2, isr_nmi);
    idt_set_gate(13, isr_gp);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;

    resend = 1;
    marker = 0;
    self_nmi();
    marker = 1;
    for (int i = 0; i < 1000; i++) __asm__ volatile("pause");  /* a late extra NMI would show here */
    puts("nmi: nested="); put_dec(nested);
    puts(" latched="); put_dec(handled - 1);
    puts(" after_iret="); put_dec(handled >= 2 && seen_marker == 0);
    puts("\n");

    fault_iret = 1;
    uint32_t before = handled;
    self_nmi();
    for (int i = 0; i < 1000; i++) __asm__ volatile("pause");
    puts("nmi: iret_fault gp="); put_dec(gp_seen);
    puts(" error="); put_hex(gp_error);
    puts(" unblocked="); put_dec(unblocked_in_gp);
    puts(" handled="); put_dec(handled - before);
    puts("\n");

    uint32_t base = handled;
    uint64_t to_handler = 0, back = 0;
    uint64_t t0 = rdtsc();
    for (uint64_t i = 1; i <= count; i++) {
        uint64_t sent = rdtsc();
        self_nmi();
        while (handled - base < i) __asm__ volatile("pause");
        uint64_t now = rdtsc();
        to_handler += entered_at - sent;
        back += now - entered_at;
    }
    uint64_t cycles = rdtsc() - t0;
    for (int i = 0; i < 1000; i++) __asm__ volatile("pause");
    puts("nmi: sent="); put_dec(count);
    puts(" handled="); put_dec(handled - base);
    puts(" cycles="); put_dec(cycles);
    puts("\n");
    /* Where the time goes, per NMI: from the ICR write to the handler, and from there back to the sender. */
    uint32_t n = count ? (uint32_t)count : 1;  /* 32-bit code: no 64-bit division without libgcc */
    puts("nmi: to_handler="); put_dec((uint32_t)(to_handler >> 10) / n * 1024 + (uint32_t)(to_handler >> 10) % n * 1024 / n);
    puts(" handler_and_iret="); put_dec((uint32_t)(back >> 10) / n * 1024 + (uint32_t)(back >> 10) % n * 1024 / n);
    puts("\n");
    guest_exit(0);
}
