/* Lowering the TPR makes a pending interrupt of a higher class deliverable at once, 32-bit kernel code with IF set
 * (the vector is 0x51, class 5; the xAPIC TPR at 0xfee00080):
 *   held:    0x51 sent to itself while the TPR is 0xf0 stays pending (across 100 UART reads);
 *   raise:   0x51 made pending with IF clear (the irqchip offers it to the vCPU at once), then the TPR raised to
 *            0x50: after STI it stays pending, though it was offered before the raise; lowering to 0 delivers it;
 *   partial: lowered from 0xf0 to 0x50 (class 5, not above it): still pending; to 0x40: taken before the next
 *            instruction;
 *   lower:   rounds=N (default 200) times: TPR 0xf0, 0x51 sent to itself, TPR lowered to 0, and the instruction
 *            right after that write reads whether the handler has run; rdtsc just before the write and as the
 *            handler's first instruction give the delay.
 * Prints "tpr: held=1 raise=1 partial=1 lower=N/N" (the last: rounds whose handler ran before the next
 * instruction) and "tpr: delay min=A mean=B max=C" (guest TSC cycles), and exits with status 0. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
volatile uint32_t taken;
volatile uint32_t t_write_lo, t_write_hi, t_handler_lo, t_handler_hi;

void isr_51(void);
/* Writes `tpr` to the TPR and returns `taken` as the very next instruction read it. */
uint32_t lower_tpr_and_look(uint32_t tpr);

static void self_ipi(uint8_t vector) { lapic[0x300 / 4] = (1u << 18) | vector; }
static void set_tpr(uint32_t tpr) { lapic[0x80 / 4] = tpr; }
static void wait_taken(uint32_t n) {
    /* Bounded: a lost interrupt shows in the counts instead of hanging the guest. */
    for (int i = 0; i < 2000 && taken < n; i++) (void)inb(COM1 + 5);
}
static uint64_t tsc(volatile uint32_t *lo, volatile uint32_t *hi) { return ((uint64_t)*hi << 32) | *lo; }

void guest_main(uint32_t magic, uint32_t info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    const char *r = cmdline_arg(cmdline, "rounds");
    uint32_t rounds = r ? (uint32_t)parse_u64(r) : 200;
    idt_set_gate(0x51, isr_51);
    idt_load();
    lapic[0xf0 / 4] = 0x1ff;
    __asm__ volatile("sti");

    set_tpr(0xf0);
    self_ipi(0x51);
    for (int i = 0; i < 100; i++) (void)inb(COM1 + 5);
    uint32_t held = taken == 0;
    uint32_t seen = lower_tpr_and_look(0);
    wait_taken(1);

    __asm__ volatile("cli");
    self_ipi(0x51);
    set_tpr(0x50);
    __asm__ volatile("sti; nop");
    for (int i = 0; i < 100; i++) (void)inb(COM1 + 5);
    uint32_t raise = taken == 1;
    set_tpr(0);
    wait_taken(2);
    raise = raise && taken == 2;

    set_tpr(0xf0);
    self_ipi(0x51);
    set_tpr(0x50);
    for (int i = 0; i < 100; i++) (void)inb(COM1 + 5);
    uint32_t partial = taken == 2;
    partial = partial && lower_tpr_and_look(0x40) == 3;
    wait_taken(3);

    uint32_t in_time = 0, done = 0;
    uint64_t min = ~0ull, max = 0, sum = 0;
    for (uint32_t i = 0; i < rounds; i++) {
        uint32_t before = taken;
        set_tpr(0xf0);
        self_ipi(0x51);
        if (lower_tpr_and_look(0) == before + 1) in_time++;
        wait_taken(before + 1);
        if (taken != before + 1) continue;
        done++;
        uint64_t d = tsc(&t_handler_lo, &t_handler_hi) - tsc(&t_write_lo, &t_write_hi);
        if (d < min) min = d;
        if (d > max) max = d;
        sum += d;
    }
    (void)seen;
    puts("tpr: held="); put_dec(held);
    puts(" raise="); put_dec(raise);
    puts(" partial="); put_dec(partial);
    puts(" lower="); put_dec(in_time); puts("/"); put_dec(rounds);
    puts("\n");
    uint32_t n = done ? done : 1;  /* 32-bit code: no 64-bit division without libgcc */
    puts("tpr: delay min="); put_dec(done ? min : 0);
    puts(" mean="); put_dec((uint32_t)(sum >> 8) / n * 256 + (uint32_t)(sum >> 8) % n * 256 / n);
    puts(" max="); put_dec(max);
    puts("\n");
    guest_exit(0);
}
