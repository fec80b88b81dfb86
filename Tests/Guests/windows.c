/* Interrupt windows and priorities at instruction boundaries, 32-bit kernel code (SDM vol. 3, 6.8.3, 6.9, 6.10):
 *   pair:   0x50 and 0x60 made pending with IF clear; then "sti; mov; cli": nothing arrives before the MOV (the
 *           STI shadow covers it; it reads the trace), then the CPU takes 0x60, and 0x50 at the boundary after 0x60's
 *           IRET, both before the CLI;
 *   intsti: 0x50 pending with IF clear; "sti; int $0x41": the INT comes first (it is the instruction in the
 *           shadow), 0x50 after its IRET;
 *   wait:   rounds=N (default 100) times: 0x51 pending with IF clear, then STI and a loop of PAUSEs: the TSC just
 *           before the STI against the handler's start is how long a pending interrupt waits once the guest opens
 *           the window (0 instructions on the CPU).
 * Prints "windows: pair=60,50 in_shadow=0 before_cli=2 intsti=41,50" and "windows: wait min=A mean=B max=C lost=L" (guest TSC
 * cycles; L rounds whose interrupt did not come within the loop) and exits with status 0. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static char trace[32];
volatile uint32_t trace_len, got51;
volatile uint32_t t_handler_lo, t_handler_hi;

void isr_50(void);
void isr_60(void);
void isr_41(void);
void isr_51(void);
/* STI, a MOV in its shadow, then CLI: returns the trace length the CLI's next instruction saw, and in bits 16-31
 * the one the MOV saw. */
uint32_t sti_nop_cli(void);
void sti_int41(void);

void on_vector(uint32_t v) {
    const char *hex = "0123456789abcdef";
    if (trace_len < sizeof trace - 3) {
        trace[trace_len++] = hex[(v >> 4) & 15];
        trace[trace_len++] = hex[v & 15];
        trace[trace_len++] = ',';
    }
    if (v != 0x41) lapic[0xb0 / 4] = 0;  /* EOI (INT 0x41 is not from the APIC) */
}

static void self_ipi(uint8_t vector) { lapic[0x300 / 4] = (1u << 18) | vector; }
static void print_trace(void) { for (uint32_t i = 0; i + 1 < trace_len; i++) putc(trace[i]); }
static void settle(void) {
    __asm__ volatile("sti");
    for (int i = 0; i < 200; i++) (void)inb(COM1 + 5);
    __asm__ volatile("cli");
}

void guest_main(uint32_t magic, uint32_t info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *r = cmdline_arg(cmdline, "rounds");
    uint32_t rounds = r ? (uint32_t)parse_u64(r) : 100;
    idt_set_gate(0x50, isr_50);
    idt_set_gate(0x60, isr_60);
    idt_set_gate(0x41, isr_41);
    idt_set_gate(0x51, isr_51);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;

    self_ipi(0x50);
    self_ipi(0x60);
    uint32_t seen = sti_nop_cli();
    uint32_t before_cli = (seen & 0xffff) / 3, in_shadow = (seen >> 16) / 3;
    settle();
    puts("windows: pair=");
    print_trace();
    puts(" in_shadow="); put_dec(in_shadow);
    puts(" before_cli="); put_dec(before_cli);

    trace_len = 0;
    self_ipi(0x50);
    sti_int41();
    settle();
    puts(" intsti=");
    print_trace();
    puts("\n");

    uint64_t min = ~0ull, max = 0, sum = 0;
    uint32_t lost = 0, done = 0;
    for (uint32_t i = 0; i < rounds; i++) {
        got51 = 0;
        self_ipi(0x51);
        uint64_t t0 = rdtsc();
        __asm__ volatile("sti");
        for (int spin = 0; spin < 20000 && !got51; spin++) __asm__ volatile("pause");
        __asm__ volatile("cli");
        if (!got51) { lost++; settle(); continue; }
        uint64_t d = (((uint64_t)t_handler_hi << 32) | t_handler_lo) - t0;
        if (d < min) min = d;
        if (d > max) max = d;
        sum += d;
        done++;
    }
    uint32_t n = done ? done : 1;  /* 32-bit code: no 64-bit division without libgcc */
    puts("windows: wait min="); put_dec(done ? min : 0);
    puts(" mean="); put_dec((uint32_t)(sum >> 8) / n * 256 + (uint32_t)(sum >> 8) % n * 256 / n);
    puts(" max="); put_dec(max);
    puts(" lost="); put_dec(lost);
    puts("\n");
    guest_exit(0);
}
