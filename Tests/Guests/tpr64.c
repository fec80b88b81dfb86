/* CR8, the TPR's class in 64-bit mode, in long-mode kernel code with IF set (vector 0x51, class 5):
 *   sync:    a TPR register write of 0x50 reads back as CR8 5; CR8 written 3 reads back as TPR 0x30;
 *   held:    0x51 sent to itself while CR8 is 15 stays pending (across 100 UART reads);
 *   partial: CR8 lowered to 5 (class 5, not above it): still pending; next: lowered to 4, taken before the next
 *            instruction; arrived: that one and every round's were taken at all;
 *   lower:   rounds=N (default 200) times: CR8 15, 0x51 sent to itself, CR8 lowered to 0, and the instruction
 *            right after the MOV to CR8 reads whether the handler has run; rdtsc just before the MOV and at the
 *            handler's start give the delay.
 * Prints "tpr64: sync=1 held=1 partial=1 arrived=1 next=1 lower=N/N" and "tpr64: delay min=A mean=B max=C" (guest TSC cycles) and
 * exits with status 0. */
#include "guest.h"

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
volatile uint64_t taken, t_write, t_handler;

void isr_51(void);
/* Writes `cr8` to CR8 and returns `taken` as the very next instruction read it. */
uint64_t lower_cr8_and_look(uint64_t cr8);

struct gate64 { uint16_t off0, selector; uint8_t ist, attr; uint16_t off1; uint32_t off2, zero; } __attribute__((packed));
static struct gate64 idt[256] __attribute__((aligned(16)));

static void set_gate(int vector, void (*handler)(void)) {
    uint64_t a = (uint64_t)(uintptr_t)handler;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector] = (struct gate64){ (uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}

static void self_ipi(uint8_t vector) { lapic[0x300 / 4] = (1u << 18) | vector; }
static void set_cr8(uint64_t v) { __asm__ volatile("mov %0, %%cr8" : : "r"(v)); }
static uint64_t get_cr8(void) { uint64_t v; __asm__ volatile("mov %%cr8, %0" : "=r"(v)); return v; }
static void wait_taken(uint64_t n) {
    for (int i = 0; i < 2000 && taken < n; i++) (void)inb(COM1 + 5);  /* bounded: a lost one shows in the counts */
}
static void uart_reads(int n) { for (int i = 0; i < n; i++) (void)inb(COM1 + 5); }

void guest_main(uint32_t magic, uint32_t info) {
    const char *cmdline = multiboot_cmdline(magic, info);
    const char *r = cmdline_arg(cmdline, "rounds");
    uint64_t rounds = r ? parse_u64(r) : 200;
    set_gate(0x51, isr_51);
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    lapic[0xf0 / 4] = 0x1ff;
    __asm__ volatile("sti");

    lapic[0x80 / 4] = 0x50;
    uint64_t sync = get_cr8() == 5;
    set_cr8(3);
    uart_reads(1);  /* an exit: a MOV to CR8 that raises it need not leave the guest */
    sync = sync && lapic[0x80 / 4] == 0x30;
    set_cr8(0);

    set_cr8(15);
    self_ipi(0x51);
    uart_reads(100);
    uint64_t held = taken == 0;
    set_cr8(5);
    uart_reads(100);
    uint64_t partial = taken == 0;
    uint64_t next = lower_cr8_and_look(4) == 1;
    wait_taken(1);
    uint64_t arrived = taken == 1;

    uint64_t in_time = 0, done = 0, min = ~0ull, max = 0, sum = 0;
    for (uint64_t i = 0; i < rounds; i++) {
        uint64_t before = taken;
        set_cr8(15);
        self_ipi(0x51);
        if (lower_cr8_and_look(0) == before + 1) in_time++;
        wait_taken(before + 1);
        if (taken != before + 1) { arrived = 0; continue; }
        done++;
        uint64_t d = t_handler - t_write;
        if (d < min) min = d;
        if (d > max) max = d;
        sum += d;
    }
    puts("tpr64: sync="); put_dec(sync);
    puts(" held="); put_dec(held);
    puts(" partial="); put_dec(partial);
    puts(" arrived="); put_dec(arrived);
    puts(" next="); put_dec(next);
    puts(" lower="); put_dec(in_time); puts("/"); put_dec(rounds);
    puts("\n");
    puts("tpr64: delay min="); put_dec(done ? min : 0);
    puts(" mean="); put_dec(done ? sum / done : 0);
    puts(" max="); put_dec(max);
    puts("\n");
    guest_exit(0);
}
