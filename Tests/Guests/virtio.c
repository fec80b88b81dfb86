/* Drives virtio-mmio (version 2) devices directly at CPL0, found only through the command line's
 * `virtio_mmio.device=SIZE@BASE:IRQ` fragments (so the same image runs under QEMU's -M microvm too).
 * `test=NAME` picks the scenario; each prints its results on COM1 and exits through debug-exit with 0
 * (status 1 from the VMM) when it could run to its end, 1 (status 3) when something it needs is missing:
 *   blk      identify, negotiate (VERSION_1 only), queue 0, DRIVER_OK; write a sector (sector=N, default 5) with a
 *            known pattern, read it back, read sector 0 (printed), GET_ID, FLUSH, the capacity from config space;
 *            completions by the device's interrupt (its IOAPIC pin from the command line, level-triggered, the
 *            handler ACKs InterruptStatus), or by polling where the pin is not on the first IOAPIC. With
 *            `spurious=ok` an interrupt without a new used entry is waited past (see tolerate_spurious).
 *   reset    status 0 resets (status, QueueReady, InterruptStatus read 0; a request works after renegotiating);
 *            FEATURES_OK is refused for an unoffered bit or without VERSION_1; DRIVER_OK cannot skip FEATURES_OK.
 *   hostile  one line per hostile request with what it got: NEEDS_RESET (with the config-change bit in
 *            InterruptStatus) or the virtio-blk status byte. The device is reset and renegotiated before each case.
 *            The write to a read-only drive uses the second virtio-blk device.
 *   rng      reads 64 bytes from virtio-rng twice: they differ and are not all zero; rounds=N does that N times
 *            (every round must pass), so that a test's faults have requests to land among.
 *   ackrace  InterruptACK racing a completion the device publishes at the same moment, as in an interrupt handler
 *            (read InterruptStatus, acknowledge it, look at the used ring): per round, with InterruptStatus set by an
 *            earlier completion, a virtio-blk read is notified and, after a delay that grows with the round (0 to a
 *            request's time, so that some acknowledgements arrive while the device is at work; the test slows the
 *            device's queue work down to make that likely), the status is acknowledged; a completion that was not in
 *            the used ring at the look after the acknowledgement must set InterruptStatus again, or a driver that
 *            sleeps until its next interrupt never sees it. Its pin stays masked (polled):
 *              virtio-ackrace: rounds=R late=L request_cycles=C lost=0
 *            (late: completions after the look; C: a request's time by TSC; lost: late ones with status 0)
 *   grow     the host replacing the drive's backing file while the guest runs (PATCH /drives/{id}): queue 0,
 *            DRIVER_OK, sector 0 read, "virtio-grow: ready capacity=N sector0=TEXT"; then ConfigGeneration polled
 *            until it changes (the test's timeout bounds the wait), sector 0 read again:
 *              virtio-grow: capacity=M isr=0x02 sector0=TEXT   (InterruptStatus with the config-change bit)
 *   stress   passes=P blocks=B depth=D: numbered, checksummed sectors written and read back, at CPL3, polled
 *            (see test_stress), for crash-isolation tests; counts I/O errors, lost writes, corrupt sectors and
 *            duplicate completions (a used entry for a request not in flight):
 *              virtio-stress: passes=P blocks=B requests=N ioerrors=0 lost=0 corrupt=0 duplicates=0
 *            A device that stops answering and says DEVICE_NEEDS_RESET ends it with status 2 (vmm: 5).
 *   bench    the block benchmark: queue 0 of 128 descriptors set up at CPL0 (VERSION_1 only, no interrupts:
 *            VRING_AVAIL_F_NO_INTERRUPT), then at CPL3 with IOPL 3 (guest kernel code is emulated on the test hosts)
 *            count=N reads with depth=D (1..32) in flight, completions polled in the used ring, QueueNotify written
 *            from CPL3 (KVM hands it to the device's ioeventfd). mode=randread: 4 KiB at 4 KiB-aligned offsets from
 *            xorshift64 (seed 0x9e3779b97f4a7c15, block = (x >> 32) * blocks >> 32, drawn in submission order);
 *            mode=seqread: 128 KiB after 128 KiB from sector 0, back to 0 before running past the end. Each read's
 *            first 4 bytes must be its 4 KiB block number (how the benchmark fills its image), else it counts as
 *            an error, as does a status other than OK. Prints, timed by RDTSC from the first submission:
 *              virtio-bench: mode=randread depth=1 count=N cycles=C errors=E
 * Completions are polled (used ring and Status) except in `blk`. Code is kept short: guest kernel code is
 * emulated instruction by instruction on the test hosts.
 * Under QEMU: qemu-system-x86_64 -M microvm -global virtio-mmio.force-legacy=false -kernel virtio.elf
 *   -append "test=blk virtio_mmio.device=512@0xfeb02e00:47" -drive id=d0,file=IMG,format=raw,if=none
 *   -device virtio-blk-device,drive=d0,serial=d0 -device isa-debug-exit (QEMU's virtio-mmio is legacy, version 1,
 *   unless told otherwise. QEMU 7.2's microvm has 24 transports from 0xfeb00000, 512 bytes each, GSIs from 24, and
 *   plugs the first -device into the last; it adds them to the command line only for Linux kernels, after a
 *   multiboot image has taken its copy, so they are named here. The guest skips empty ones, device ID 0.) */
#include "guest.h"

enum {
    R_MAGIC = 0x000, R_VERSION = 0x004, R_DEVICE_ID = 0x008, R_DEV_FEATURES = 0x010, R_DEV_FEATURES_SEL = 0x014,
    R_DRV_FEATURES = 0x020, R_DRV_FEATURES_SEL = 0x024, R_QUEUE_SEL = 0x030, R_QUEUE_NUM_MAX = 0x034,
    R_QUEUE_NUM = 0x038, R_QUEUE_READY = 0x044, R_QUEUE_NOTIFY = 0x050, R_ISR = 0x060, R_ISR_ACK = 0x064,
    R_STATUS = 0x070, R_DESC_LO = 0x080, R_DESC_HI = 0x084, R_DRIVER_LO = 0x090, R_DRIVER_HI = 0x094,
    R_DEVICE_LO = 0x0a0, R_DEVICE_HI = 0x0a4, R_CONFIG_GEN = 0x0fc, R_CONFIG = 0x100,
};
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8, S_NEEDS_RESET = 0x40 };
#define F_INDIRECT (1ull << 28)
#define F_VERSION_1 (1ull << 32)
enum { D_NEXT = 1, D_WRITE = 2, D_INDIRECT = 4 };
enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8 };
#define QSZ 8
#define VECTOR 0x30

struct dev { uint32_t base, irq, id; };
static struct dev devs[16];
static int ndevs;

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
static struct desc ring_desc[QSZ] __attribute__((aligned(16)));
static struct desc tables[2][16] __attribute__((aligned(16)));   /* indirect tables */
static struct { uint16_t flags, idx, ring[QSZ], used_event; } avail __attribute__((aligned(4)));
static volatile struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[QSZ]; uint16_t avail_event; } used
    __attribute__((aligned(4)));
static uint16_t used_seen;

static struct { uint32_t type, reserved; uint64_t sector; } header;
static volatile uint8_t blk_status;
static uint8_t out_buf[512], in_buf[512], id_buf[21];
static uint64_t device_features;

static volatile uint32_t *const lapic = (volatile uint32_t *)0xfee00000;
static volatile uint32_t *const ioapic = (volatile uint32_t *)0xfec00000;
static const struct dev *irq_dev;
static volatile uint32_t interrupts, isr_bits, interrupt_pending;

static uint32_t rd(const struct dev *d, uint32_t off) { return *(volatile uint32_t *)(uintptr_t)(d->base + off); }
static void wr(const struct dev *d, uint32_t off, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(d->base + off) = v; }
#define barrier() __asm__ volatile("" ::: "memory")

static void put_hex8(uint32_t v) {
    puts("0x");
    putc("0123456789abcdef"[(v >> 4) & 0xf]);
    putc("0123456789abcdef"[v & 0xf]);
}

static uint64_t parse_num(const char **s) {
    uint64_t v = 0;
    const char *p = *s;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        for (p += 2;; p++) {
            char c = *p;
            int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (digit < 0) break;
            v = v * 16 + (uint64_t)digit;
        }
    } else {
        while (*p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
    }
    *s = p;
    return v;
}

/* Every `virtio_mmio.device=<size>[KMG]@<base>:<irq>[:<id>]` word, in order; the device ID read from each. */
static void find_devices(const char *cmdline) {
    static const char key[] = "virtio_mmio.device=";
    for (const char *p = cmdline; *p && ndevs < 16;) {
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k) {
            (void)parse_num(&q);
            if (*q == 'K' || *q == 'k' || *q == 'M' || *q == 'm' || *q == 'G' || *q == 'g') q++;
            if (*q++ == '@') {
                uint64_t base = parse_num(&q);
                if (*q++ == ':') {
                    struct dev *d = &devs[ndevs++];
                    d->base = (uint32_t)base;
                    d->irq = (uint32_t)parse_num(&q);
                    d->id = rd(d, R_MAGIC) == 0x74726976 ? rd(d, R_DEVICE_ID) : 0;
                }
            }
        }
        while (*p && *p != ' ') p++;
        while (*p == ' ') p++;
    }
}

static const struct dev *find(uint32_t id, int nth) {
    for (int i = 0; i < ndevs; i++)
        if (devs[i].id == id && nth-- == 0) return &devs[i];
    return 0;
}

/* Reset, ACKNOWLEDGE, DRIVER, features (accepting `accept`), FEATURES_OK; returns the Status read back. */
static uint32_t negotiate(const struct dev *d, uint64_t accept) {
    wr(d, R_STATUS, 0);
    wr(d, R_STATUS, S_ACK);
    wr(d, R_STATUS, S_ACK | S_DRIVER);
    wr(d, R_DEV_FEATURES_SEL, 1);
    device_features = (uint64_t)rd(d, R_DEV_FEATURES) << 32;
    wr(d, R_DEV_FEATURES_SEL, 0);
    device_features |= rd(d, R_DEV_FEATURES);
    wr(d, R_DRV_FEATURES_SEL, 0);
    wr(d, R_DRV_FEATURES, (uint32_t)accept);
    wr(d, R_DRV_FEATURES_SEL, 1);
    wr(d, R_DRV_FEATURES, (uint32_t)(accept >> 32));
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    return rd(d, R_STATUS);
}

/* Queue 0 on fresh (zeroed) rings, then DRIVER_OK. Returns QueueNumMax. */
static uint32_t start_queue(const struct dev *d) {
    for (uint32_t i = 0; i < sizeof avail / 2; i++) ((uint16_t *)&avail)[i] = 0;
    used.idx = 0;
    used_seen = 0;
    wr(d, R_QUEUE_SEL, 0);
    uint32_t max = rd(d, R_QUEUE_NUM_MAX);
    wr(d, R_QUEUE_NUM, QSZ);
    wr(d, R_DESC_LO, (uint32_t)(uintptr_t)ring_desc);
    wr(d, R_DESC_HI, 0);
    wr(d, R_DRIVER_LO, (uint32_t)(uintptr_t)&avail);
    wr(d, R_DRIVER_HI, 0);
    wr(d, R_DEVICE_LO, (uint32_t)(uintptr_t)&used);
    wr(d, R_DEVICE_HI, 0);
    wr(d, R_QUEUE_READY, 1);
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    return max;
}

static void set_desc(struct desc *t, int i, const volatile void *addr, uint32_t len, uint16_t flags, uint16_t next) {
    t[i] = (struct desc){ (uint64_t)(uintptr_t)addr, len, flags, next };
}

/* A request header, a data buffer (device-writable for IN) and the status byte as descriptors 0, 1, 2. */
static void blk_chain(uint32_t type, uint64_t sector, void *data, uint32_t len, int data_writable) {
    header.type = type;
    header.sector = sector;
    blk_status = 0xee;
    set_desc(ring_desc, 0, &header, 16, D_NEXT, 1);
    set_desc(ring_desc, 1, data, len, D_NEXT | (data_writable ? D_WRITE : 0), 2);
    set_desc(ring_desc, 2, &blk_status, 1, D_WRITE, 0);
    if (!data) set_desc(ring_desc, 0, &header, 16, D_NEXT, 2);
}

static void notify(const struct dev *d, uint16_t head, uint16_t advance) {
    avail.ring[avail.idx % QSZ] = head;
    barrier();
    avail.idx += advance;
    barrier();
    wr(d, R_QUEUE_NOTIFY, 0);
}

/* Polls until the used ring advances (1) or the device sets DEVICE_NEEDS_RESET (0); -1 after several seconds. */
static int poll_used(const struct dev *d) {
    uint64_t start = rdtsc();
    for (;;) {
        if (used.idx != used_seen) { used_seen++; return 1; }
        if (rd(d, R_STATUS) & S_NEEDS_RESET) return 0;
        if (rdtsc() - start > (1ull << 35)) return -1;
    }
}

/* With `spurious=ok` on the command line, an interrupt that brings no used entry is waited past, as Linux's
 * driver does (a restarted device process raises its interrupt again when it cannot know whether its predecessor
 * did); otherwise it ends the wait. */
static int tolerate_spurious;

/* Sleeps until the device's interrupt arrives (interrupts are enabled only here, so one per request: the
 * handler's ACK lowers the line before its EOI). Returns whether the used ring advanced. */
static int wait_interrupt(void) {
    for (;;) {
        while (!interrupt_pending) __asm__ volatile("sti; hlt; cli" ::: "memory");
        interrupt_pending = 0;
        if (used.idx != used_seen) break;
        if (!tolerate_spurious) return 0;
    }
    used_seen++;
    return 1;
}

void isr_virtio(void);
void virtio_interrupt(void) {
    uint32_t bits = rd(irq_dev, R_ISR);
    wr(irq_dev, R_ISR_ACK, bits);
    isr_bits |= bits;
    interrupts++;
    interrupt_pending = 1;
    lapic[0xb0 / 4] = 0;
}

/* Publishes descriptor 0 and waits for its completion: by interrupt once one is set up, else by polling. */
static int request(const struct dev *d) {
    notify(d, 0, 1);
    if (irq_dev) return wait_interrupt();
    return poll_used(d);
}

/* The benchmark's queue: 32 requests of 3 descriptors (header, data, status) each fit 128 descriptors. Its rings
 * and buffers (4 MiB: 32 x 128 KiB) are zeroed by the loader, so nothing is cleared at CPL0. */
#define BQ 128
#define BENCH_MAX_DEPTH 32
#define BENCH_MAX_LEN (128u << 10)
static struct desc bench_desc[BQ] __attribute__((aligned(16)));
static struct { uint16_t flags, idx, ring[BQ], used_event; } bench_avail __attribute__((aligned(4)));
static volatile struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[BQ]; uint16_t avail_event; } bench_used
    __attribute__((aligned(4)));
static struct { uint32_t type, reserved; uint64_t sector; } bench_header[BENCH_MAX_DEPTH];
static volatile uint8_t bench_status[BENCH_MAX_DEPTH];
static uint8_t bench_buf[BENCH_MAX_DEPTH][BENCH_MAX_LEN] __attribute__((aligned(4096)));
static uint8_t user_stack[8192] __attribute__((aligned(16)));

static const struct dev *bench_dev;
static uint64_t bench_capacity, bench_count, bench_rng = 0x9e3779b97f4a7c15ull, bench_next_sector;
static uint32_t bench_depth, bench_len, bench_random;
static char bench_mode[16];

/* The next request's first sector: a random 4 KiB block, or the next 128 KiB (wrapping before the end). */
static uint64_t bench_sector(void) {
    if (bench_random) {
        uint64_t x = bench_rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bench_rng = x;
        uint32_t blocks = (uint32_t)(bench_capacity >> 3);
        return ((x >> 32) * blocks >> 32) << 3;
    }
    uint64_t sector = bench_next_sector;
    if (sector + (bench_len >> 9) > bench_capacity) sector = 0;
    bench_next_sector = sector + (bench_len >> 9);
    return sector;
}

/* Fills slot `i`'s header for the next read and publishes its head at avail position `at`. */
static void bench_submit(uint32_t i, uint16_t at) {
    bench_header[i].sector = bench_sector();
    bench_status[i] = 0xee;
    bench_avail.ring[at % BQ] = (uint16_t)(3 * i);
}

static void bench_notify(void) {
    __asm__ volatile("mfence" ::: "memory");          /* avail idx visible before we read used->flags */
    if (!(bench_used.flags & 1)) wr(bench_dev, R_QUEUE_NOTIFY, 0);
}

/* CPL3 from here on: every instruction in this loop runs natively. */
static void bench_loop(void) {
    uint32_t depth = bench_depth;
    for (uint32_t i = 0; i < depth; i++) {
        bench_header[i].type = T_IN;
        set_desc(bench_desc, (int)(3 * i), &bench_header[i], 16, D_NEXT, (uint16_t)(3 * i + 1));
        set_desc(bench_desc, (int)(3 * i + 1), bench_buf[i], bench_len, D_NEXT | D_WRITE, (uint16_t)(3 * i + 2));
        set_desc(bench_desc, (int)(3 * i + 2), &bench_status[i], 1, D_WRITE, 0);
    }
    bench_avail.flags = 1;                            /* VRING_AVAIL_F_NO_INTERRUPT */
    uint64_t submitted = 0, completed = 0, errors = 0;
    uint16_t avail_idx = 0, used_seen = 0;
    uint64_t start = rdtsc(), last = start;
    for (uint32_t i = 0; i < depth && submitted < bench_count; i++, submitted++) bench_submit(i, avail_idx++);
    barrier();
    bench_avail.idx = avail_idx;
    bench_notify();
    while (completed < bench_count) {
        uint16_t end = bench_used.idx;
        if (end == used_seen) {
            if (rdtsc() - last > (1ull << 36)) {
                puts("virtio-bench: timeout after "); put_dec(completed);
                puts(" completions\n");
                guest_exit(1);
                for (;;) { }
            }
            continue;
        }
        barrier();
        int more = 0;
        for (; used_seen != end; used_seen++) {
            uint32_t id = bench_used.ring[used_seen % BQ].id, i = id / 3;
            if (id % 3 || i >= depth) { errors++; continue; }
            errors += bench_status[i] != 0 || *(volatile uint32_t *)bench_buf[i] != (uint32_t)(bench_header[i].sector >> 3);
            completed++;
            if (submitted < bench_count) {
                bench_submit(i, avail_idx++);
                submitted++;
                more = 1;
            }
        }
        if (more) {
            barrier();
            bench_avail.idx = avail_idx;
            bench_notify();
        }
        last = rdtsc();
    }
    uint64_t cycles = rdtsc() - start;
    puts("virtio-bench: mode="); puts(bench_mode);
    puts(" depth="); put_dec(depth);
    puts(" count="); put_dec(bench_count);
    puts(" cycles="); put_dec(cycles);
    puts(" errors="); put_dec(errors);
    puts("\n");
    guest_exit(0);
    for (;;) { }
}

/* At CPL0 only what must be: negotiation and the queue's registers (each an exit); the rest runs at CPL3. */
static int test_bench(const struct dev *d, const char *cmdline) {
    copy_word(bench_mode, cmdline_arg(cmdline, "mode"), sizeof bench_mode);
    bench_random = bench_mode[0] != 's';
    bench_len = bench_random ? 4096 : BENCH_MAX_LEN;
    bench_depth = (uint32_t)parse_u64(cmdline_arg(cmdline, "depth"));
    bench_count = parse_u64(cmdline_arg(cmdline, "count"));
    if (bench_depth == 0 || bench_depth > BENCH_MAX_DEPTH) { puts("virtio-bench: depth must be 1..32\n"); return 1; }
    if (!(negotiate(d, F_VERSION_1) & S_FEATURES_OK)) { puts("virtio-bench: FEATURES_OK refused\n"); return 1; }
    bench_capacity = rd(d, R_CONFIG) | (uint64_t)rd(d, R_CONFIG + 4) << 32;
    wr(d, R_QUEUE_SEL, 0);
    if (rd(d, R_QUEUE_NUM_MAX) < BQ || bench_capacity < 256) { puts("virtio-bench: queue or disk too small\n"); return 1; }
    wr(d, R_QUEUE_NUM, BQ);
    wr(d, R_DESC_LO, (uint32_t)(uintptr_t)bench_desc);
    wr(d, R_DESC_HI, 0);
    wr(d, R_DRIVER_LO, (uint32_t)(uintptr_t)&bench_avail);
    wr(d, R_DRIVER_HI, 0);
    wr(d, R_DEVICE_LO, (uint32_t)(uintptr_t)&bench_used);
    wr(d, R_DEVICE_HI, 0);
    wr(d, R_QUEUE_READY, 1);
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    bench_dev = d;
    enter_user(bench_loop, user_stack + sizeof user_stack);
    return 0;
}

/* stress: passes=P over blocks=B (1..1024) numbered, checksummed sectors through the bench's queue at CPL3, depth=D
 * (1..32) requests in flight, polled. A pass writes every sector ({magic, sector number, pass, 124 data words from
 * (sector, pass), a checksum}), then reads every one back and checks it. Batches of up to D requests; a phase
 * (writes, reads) drains before the next, so no read overtakes the write it checks. One sector per request: guest
 * code that touches every word of a buffer is slow on the test hosts even at CPL3. */
#define STRESS_MAGIC 0x4b4c4256u                      /* "VBLK" */
static uint32_t stress_blocks, stress_passes;
static uint8_t stress_busy[BENCH_MAX_DEPTH];
static uint32_t stress_block[BENCH_MAX_DEPTH];
static uint64_t stress_ioerrors, stress_lost, stress_corrupt, stress_duplicates, stress_requests;

static uint32_t stress_word(uint32_t sector, uint32_t pass, uint32_t k) {
    uint32_t x = sector * 0x9e3779b1u ^ pass * 0x85ebca6bu ^ k * 0xc2b2ae35u;
    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    return x ^ (x >> 12);
}

static uint32_t stress_sum(const uint32_t *w) {
    uint32_t sum = 0;
    for (int k = 0; k < 127; k++) sum = (sum << 1 | sum >> 31) ^ w[k];
    return sum;
}

static void stress_fill(uint8_t *buf, uint32_t sector, uint32_t pass) {
    uint32_t *w = (uint32_t *)buf;
    w[0] = STRESS_MAGIC;
    w[1] = sector;
    w[2] = pass;
    for (int k = 3; k < 127; k++) w[k] = stress_word(sector, pass, (uint32_t)k);
    w[127] = stress_sum(w);
}

/* Counts a sector read back in pass `pass`: intact and of this pass, intact but of an earlier pass (a lost write),
 * or anything else (corrupt: a torn, misplaced or never-read sector). */
static void stress_check(const uint8_t *buf, uint32_t sector, uint32_t pass) {
    const uint32_t *w = (const uint32_t *)buf;
    int intact = w[0] == STRESS_MAGIC && w[1] == sector && w[127] == stress_sum(w) && w[2] <= pass;
    for (int k = 3; intact && k < 127; k++) intact = w[k] == stress_word(sector, w[2], (uint32_t)k);
    if (!intact) stress_corrupt++;
    else if (w[2] != pass) stress_lost++;
}

static void stress_loop(void) {
    uint32_t depth = bench_depth;
    uint16_t avail_idx = 0, used_seen = 0;
    for (uint32_t pass = 1; pass <= stress_passes; pass++) {
        for (int writing = 1; writing >= 0; writing--) {
            for (uint32_t next = 0; next < stress_blocks;) {
                uint32_t batch = 0;
                for (; batch < depth && next < stress_blocks; batch++, next++) {
                    uint32_t i = batch;
                    bench_header[i].type = writing ? T_OUT : T_IN;
                    bench_header[i].sector = next;
                    bench_status[i] = 0xee;
                    if (writing) stress_fill(bench_buf[i], next, pass);
                    else *(volatile uint32_t *)bench_buf[i] = 0;   /* a read that never happened reads as corrupt */
                    set_desc(bench_desc, (int)(3 * i), &bench_header[i], 16, D_NEXT, (uint16_t)(3 * i + 1));
                    set_desc(bench_desc, (int)(3 * i + 1), bench_buf[i], 512, D_NEXT | (writing ? 0 : D_WRITE), (uint16_t)(3 * i + 2));
                    set_desc(bench_desc, (int)(3 * i + 2), &bench_status[i], 1, D_WRITE, 0);
                    stress_block[i] = next;
                    stress_busy[i] = 1;
                    bench_avail.ring[avail_idx++ % BQ] = (uint16_t)(3 * i);
                }
                barrier();
                bench_avail.idx = avail_idx;
                bench_notify();
                uint64_t last = rdtsc();
                for (uint32_t done = 0; done < batch;) {
                    uint16_t end = bench_used.idx;
                    if (end == used_seen) {
                        uint64_t waited = rdtsc() - last;
                        /* Stalled for a while: ask the device (a register read, so not on every spin). */
                        if (waited > (1ull << 31) && (rd(bench_dev, R_STATUS) & S_NEEDS_RESET)) {
                            puts("virtio-stress: the device needs a reset (status="); put_hex8(rd(bench_dev, R_STATUS));
                            puts(" isr="); put_hex8(rd(bench_dev, R_ISR));
                            puts(")\n");
                            guest_exit(2);
                            for (;;) { }
                        }
                        if (waited > (1ull << 36)) {
                            puts("virtio-stress: timeout in pass "); put_dec(pass);
                            puts("\n");
                            guest_exit(1);
                            for (;;) { }
                        }
                        continue;
                    }
                    barrier();
                    for (; used_seen != end; used_seen++) {
                        uint32_t id = bench_used.ring[used_seen % BQ].id, i = id / 3;
                        if (id % 3 || i >= depth || !stress_busy[i]) { stress_duplicates++; continue; }
                        stress_busy[i] = 0;
                        done++;
                        stress_requests++;
                        if (bench_status[i] != 0) stress_ioerrors++;
                        else if (!writing) stress_check(bench_buf[i], stress_block[i], pass);
                    }
                    last = rdtsc();
                }
            }
        }
    }
    stress_duplicates += (uint16_t)(bench_used.idx - avail_idx);   /* completions beyond every request made */
    puts("virtio-stress: passes="); put_dec(stress_passes);
    puts(" blocks="); put_dec(stress_blocks);
    puts(" requests="); put_dec(stress_requests);
    puts(" ioerrors="); put_dec(stress_ioerrors);
    puts(" lost="); put_dec(stress_lost);
    puts(" corrupt="); put_dec(stress_corrupt);
    puts(" duplicates="); put_dec(stress_duplicates);
    puts("\n");
    guest_exit(0);
    for (;;) { }
}

/* The bench's queue set-up (CPL0), then the stress loop at CPL3. */
static int test_stress(const struct dev *d, const char *cmdline) {
    bench_depth = (uint32_t)parse_u64(cmdline_arg(cmdline, "depth"));
    stress_blocks = (uint32_t)parse_u64(cmdline_arg(cmdline, "blocks"));
    stress_passes = (uint32_t)parse_u64(cmdline_arg(cmdline, "passes"));
    if (bench_depth == 0 || bench_depth > BENCH_MAX_DEPTH || stress_blocks == 0 || stress_blocks > 1024) {
        puts("virtio-stress: depth must be 1..32, blocks 1..1024\n");
        return 1;
    }
    if (!(negotiate(d, F_VERSION_1) & S_FEATURES_OK)) { puts("virtio-stress: FEATURES_OK refused\n"); return 1; }
    uint64_t capacity = rd(d, R_CONFIG) | (uint64_t)rd(d, R_CONFIG + 4) << 32;
    wr(d, R_QUEUE_SEL, 0);
    if (rd(d, R_QUEUE_NUM_MAX) < BQ || capacity < stress_blocks) { puts("virtio-stress: queue or disk too small\n"); return 1; }
    wr(d, R_QUEUE_NUM, BQ);
    wr(d, R_DESC_LO, (uint32_t)(uintptr_t)bench_desc);
    wr(d, R_DESC_HI, 0);
    wr(d, R_DRIVER_LO, (uint32_t)(uintptr_t)&bench_avail);
    wr(d, R_DRIVER_HI, 0);
    wr(d, R_DEVICE_LO, (uint32_t)(uintptr_t)&bench_used);
    wr(d, R_DEVICE_HI, 0);
    wr(d, R_QUEUE_READY, 1);
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    bench_dev = d;
    bench_avail.flags = 1;                            /* VRING_AVAIL_F_NO_INTERRUPT: completions are polled */
    enter_user(stress_loop, user_stack + sizeof user_stack);
    return 0;
}

static const char *blk_status_name(uint8_t s) {
    return s == 0 ? "OK" : s == 1 ? "IOERR" : s == 2 ? "UNSUPP" : "unknown";
}

static void describe(const struct dev *d, const char *what) {
    puts(what);
    puts(" features=");
    put_hex(device_features);
    puts(" status=");
    put_hex8(rd(d, R_STATUS));
}

static int test_blk(const struct dev *d, uint64_t sector) {
    puts("virtio-blk: magic=");
    uint32_t magic = rd(d, R_MAGIC);
    for (int i = 0; i < 4; i++) putc((char)(magic >> (8 * i)));
    puts(" version="); put_dec(rd(d, R_VERSION));
    puts(" device="); put_dec(rd(d, R_DEVICE_ID));
    puts("\n");
    uint32_t status = negotiate(d, F_VERSION_1);
    if (!(status & S_FEATURES_OK)) { puts("virtio-blk: FEATURES_OK refused\n"); return 1; }
    uint32_t max = start_queue(d);
    describe(d, "virtio-blk:");
    puts(" queue_num_max="); put_dec(max);
    puts("\n");

    if (d->irq < 24) {
        irq_dev = d;
        idt_set_gate(VECTOR, isr_virtio);
        idt_load();
        lapic[0xf0 / 4] = 0x1ff;
        ioapic[0] = 0x11 + 2 * d->irq;
        ioapic[4] = 0;                                   /* destination APIC 0 */
        ioapic[0] = 0x10 + 2 * d->irq;
        ioapic[4] = VECTOR | 1u << 15;                   /* level-triggered, active high, unmasked */
    }

    for (int i = 0; i < 512; i++) out_buf[i] = (uint8_t)(i * 7 + 0x5a);
    blk_chain(T_OUT, sector, out_buf, 512, 0);
    request(d);
    uint8_t write_status = blk_status;
    blk_chain(T_IN, sector, in_buf, 512, 1);
    request(d);
    uint8_t read_status = blk_status;
    uint32_t read_len = used.ring[1].len;
    int match = 1;
    for (int i = 0; i < 512; i++) match &= in_buf[i] == out_buf[i];
    blk_chain(T_IN, 0, in_buf, 512, 1);
    request(d);
    in_buf[16] = 0;
    uint8_t sector0_status = blk_status;
    blk_chain(T_GET_ID, 0, id_buf, 20, 1);
    request(d);
    uint8_t id_status = blk_status;
    blk_chain(T_FLUSH, 0, 0, 0, 0);
    request(d);

    uint32_t generation, lo, hi;
    do {
        generation = rd(d, R_CONFIG_GEN);
        lo = rd(d, R_CONFIG);
        hi = rd(d, R_CONFIG + 4);
    } while (rd(d, R_CONFIG_GEN) != generation);

    puts("virtio-blk: capacity="); put_dec((uint64_t)hi << 32 | lo);
    puts(" id="); puts(id_status == 0 ? (const char *)id_buf : "?");
    puts(" write="); puts(write_status == 0 ? "ok" : blk_status_name(write_status));
    puts(" read="); puts(read_status != 0 ? blk_status_name(read_status) : match && read_len == 513 ? "match" : "MISMATCH");
    puts(" flush="); put_dec(blk_status);
    puts("\nvirtio-blk: sector0=");
    puts(sector0_status == 0 ? (const char *)in_buf : blk_status_name(sector0_status));
    puts(" interrupts="); put_dec(interrupts);
    puts(" isr_bits="); put_hex8(isr_bits);
    puts(" isr_now="); put_hex8(rd(d, R_ISR));
    puts("\n");
    return 0;
}

static uint64_t capacity_of(const struct dev *d) {
    uint32_t generation, lo, hi;
    do {
        generation = rd(d, R_CONFIG_GEN);
        lo = rd(d, R_CONFIG);
        hi = rd(d, R_CONFIG + 4);
    } while (rd(d, R_CONFIG_GEN) != generation);
    return (uint64_t)hi << 32 | lo;
}

static int test_grow(const struct dev *d) {
    if (!(negotiate(d, F_VERSION_1) & S_FEATURES_OK)) return 1;
    start_queue(d);
    uint32_t generation = rd(d, R_CONFIG_GEN);
    blk_chain(T_IN, 0, in_buf, 512, 1);
    request(d);
    in_buf[16] = 0;
    puts("virtio-grow: ready capacity="); put_dec(capacity_of(d));
    puts(" sector0="); puts(blk_status == 0 ? (const char *)in_buf : blk_status_name(blk_status));
    puts("\n");
    wr(d, R_ISR_ACK, rd(d, R_ISR));  /* the read's used-buffer bit: only what comes next is left */
    while (rd(d, R_CONFIG_GEN) == generation) { }
    uint32_t isr = rd(d, R_ISR);
    blk_chain(T_IN, 0, in_buf, 512, 1);
    request(d);
    in_buf[16] = 0;
    puts("virtio-grow: capacity="); put_dec(capacity_of(d));
    puts(" isr="); put_hex8(isr);
    puts(" sector0="); puts(blk_status == 0 ? (const char *)in_buf : blk_status_name(blk_status));
    puts("\n");
    return 0;
}

static uint32_t queue_ready(const struct dev *d) {
    wr(d, R_QUEUE_SEL, 0);
    return rd(d, R_QUEUE_READY);
}

static int test_reset(const struct dev *d) {
    negotiate(d, F_VERSION_1);
    start_queue(d);
    blk_chain(T_IN, 0, in_buf, 512, 1);
    int got = request(d);
    puts("virtio-reset: live status="); put_hex8(rd(d, R_STATUS));
    puts(" queue_ready="); put_dec(queue_ready(d));
    puts(" isr="); put_hex8(rd(d, R_ISR));
    puts(" request="); puts(got == 1 ? blk_status_name(blk_status) : "none");
    puts("\n");

    wr(d, R_STATUS, 0);
    puts("virtio-reset: after status 0: status="); put_hex8(rd(d, R_STATUS));
    puts(" queue_ready="); put_dec(queue_ready(d));
    puts(" isr="); put_hex8(rd(d, R_ISR));
    puts("\n");

    puts("virtio-reset: unoffered feature bit 0: status="); put_hex8(negotiate(d, F_VERSION_1 | 1));
    puts("\nvirtio-reset: unoffered feature bit 63: status="); put_hex8(negotiate(d, F_VERSION_1 | 1ull << 63));
    puts("\nvirtio-reset: without VERSION_1: status="); put_hex8(negotiate(d, 0));
    negotiate(d, F_VERSION_1 | 1);
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
    puts("\nvirtio-reset: DRIVER_OK without FEATURES_OK: status="); put_hex8(rd(d, R_STATUS));
    puts("\nvirtio-reset: VERSION_1 only: status="); put_hex8(negotiate(d, F_VERSION_1));

    start_queue(d);
    blk_chain(T_IN, 0, in_buf, 512, 1);
    got = request(d);
    puts("\nvirtio-reset: renegotiated: status="); put_hex8(rd(d, R_STATUS));
    puts(" request="); puts(got == 1 ? blk_status_name(blk_status) : "none");
    puts("\n");
    return 0;
}

/* The hostile cases. Each sets up descriptors on a freshly negotiated device and returns the head to publish
 * in the avail ring; `advance` is how far avail idx moves (1 but for the jump). */
enum { H_INDEX, H_NEXT_INDEX, H_LOOP, H_LONG, H_INDIRECT_OK, H_NESTED, H_OUTSIDE, H_WRAP, H_READ_AFTER_WRITE,
       H_NO_STATUS, H_ZERO_STATUS, H_SHORT_HEADER, H_UNSUPP, H_BEYOND, H_SECTOR_OVERFLOW, H_AVAIL_JUMP, H_READ_ONLY,
       H_AFTER, H_COUNT };
static const char *const hostile_names[H_COUNT] = {
    "descriptor index out of range", "next index out of range", "descriptor loop", "chain longer than the queue",
    "indirect table (valid)", "indirect inside indirect", "buffer outside guest RAM", "buffer wrapping 2^64",
    "readable after writable", "no status byte", "zero-length status buffer", "short header",
    "unsupported request type", "sector beyond capacity", "sector * 512 overflows", "avail index jump",
    "write to a read-only drive", "a read after all cases",
};

static uint16_t advance;

static uint16_t hostile_case(int c, uint64_t capacity) {
    advance = 1;
    blk_chain(T_IN, 0, in_buf, 512, 1);
    switch (c) {
    case H_INDEX: return 200;
    case H_NEXT_INDEX: ring_desc[1].next = QSZ; break;
    case H_LOOP:
        set_desc(ring_desc, 0, &header, 16, D_NEXT, 1);
        set_desc(ring_desc, 1, out_buf, 16, D_NEXT, 0);
        break;
    case H_LONG:
        for (int i = 0; i < 16; i++) set_desc(tables[0], i, out_buf, 16, i < 15 ? D_NEXT : 0, (uint16_t)(i + 1));
        set_desc(ring_desc, 0, tables[0], sizeof tables[0], D_INDIRECT, 0);
        break;
    case H_INDIRECT_OK:
    case H_NESTED:
        set_desc(tables[0], 0, &header, 16, D_NEXT, 1);
        set_desc(tables[0], 1, in_buf, 512, D_NEXT | D_WRITE, 2);
        set_desc(tables[0], 2, &blk_status, 1, D_WRITE, 0);
        if (c == H_NESTED) {
            set_desc(tables[1], 0, tables[0], 3 * 16, D_INDIRECT, 0);
            set_desc(ring_desc, 0, tables[1], 16, D_INDIRECT, 0);
        } else {
            set_desc(ring_desc, 0, tables[0], 3 * 16, D_INDIRECT, 0);
        }
        break;
    case H_OUTSIDE: ring_desc[1].addr = 0x40000000; break;
    case H_WRAP: ring_desc[1].addr = 0xffffffffffffff00ull; break;
    case H_READ_AFTER_WRITE:
        set_desc(ring_desc, 2, out_buf, 512, D_NEXT, 3);
        set_desc(ring_desc, 3, &blk_status, 1, D_WRITE, 0);
        break;
    case H_NO_STATUS: ring_desc[0].flags = 0; break;
    case H_ZERO_STATUS: ring_desc[2].len = 0; break;
    case H_SHORT_HEADER: ring_desc[0].len = 8; break;
    case H_UNSUPP: header.type = 0xff; break;
    case H_BEYOND: header.sector = capacity; break;
    case H_SECTOR_OVERFLOW: header.sector = 0x0080000000000000ull; break;
    case H_AVAIL_JUMP: advance = QSZ * 2; break;
    case H_READ_ONLY: blk_chain(T_OUT, 0, out_buf, 512, 0); break;
    }
    return 0;
}

static int test_hostile(const struct dev *d, const struct dev *read_only) {
    uint64_t capacity = rd(d, R_CONFIG) | (uint64_t)rd(d, R_CONFIG + 4) << 32;
    for (int c = 0; c < H_COUNT; c++) {
        const struct dev *target = c == H_READ_ONLY ? read_only : d;
        puts("virtio-hostile: ");
        puts(hostile_names[c]);
        puts(" -> ");
        if (!target) { puts("no second virtio-blk device\n"); continue; }
        if (!(negotiate(target, F_VERSION_1 | F_INDIRECT) & S_FEATURES_OK)) { puts("FEATURES_OK refused\n"); continue; }
        start_queue(target);
        uint16_t head = hostile_case(c, capacity);
        notify(target, head, advance);
        int got = poll_used(target);
        uint32_t status = rd(target, R_STATUS), isr = rd(target, R_ISR);
        puts(got == 0 ? "NEEDS_RESET" : got < 0 ? "TIMEOUT" : blk_status_name(blk_status));
        puts(" (status="); put_hex8(status);
        puts(" isr="); put_hex8(isr);
        puts(")\n");
        wr(target, R_STATUS, 0);
    }
    return 0;
}

static int test_rng(const struct dev *d, uint64_t rounds) {
    uint32_t status = negotiate(d, F_VERSION_1);
    if (!(status & S_FEATURES_OK)) { puts("virtio-rng: FEATURES_OK refused\n"); return 1; }
    start_queue(d);
    describe(d, "virtio-rng:");
    puts("\n");
    uint32_t len[2] = {0, 0};
    int differ = 1, nonzero = 1;
    if (rounds == 0) rounds = 1;
    for (uint64_t k = 0; k < rounds; k++) {
        for (int r = 0; r < 2; r++) {
            set_desc(ring_desc, 0, r ? in_buf : out_buf, 64, D_WRITE, 0);
            if (request(d) != 1) { puts("virtio-rng: no answer\n"); return 1; }
            uint32_t got = used.ring[(2 * k + r) % QSZ].len;
            if (k == 0 || got != 64) len[r] = got;  /* a round with a wrong length shows it */
        }
        int round_differs = 0, round_nonzero = 0;
        for (int i = 0; i < 64; i++) {
            round_differs |= out_buf[i] != in_buf[i];
            round_nonzero |= out_buf[i] | in_buf[i];
        }
        differ &= round_differs;
        nonzero &= round_nonzero != 0;
    }
    puts("virtio-rng: lengths="); put_dec(len[0]);
    puts(","); put_dec(len[1]);
    puts(" differ="); put_dec(differ);
    puts(" nonzero="); put_dec(nonzero != 0);
    puts("\n");
    return 0;
}

static int test_ackrace(const struct dev *d) {
    uint32_t status = negotiate(d, F_VERSION_1);
    if (!(status & S_FEATURES_OK)) { puts("virtio-ackrace: FEATURES_OK refused\n"); return 1; }
    start_queue(d);
    enum { ROUNDS = 300 };
    uint32_t late = 0, lost = 0;
    /* How long a request takes, the used ring polled: the acknowledgements are spread over that time. */
    blk_chain(T_IN, 0, in_buf, 512, 1);
    uint64_t took = 0;
    for (int i = 0; i < 8; i++) {
        uint64_t start = rdtsc();
        notify(d, 0, 1);
        while (used.idx == used_seen)
            if (rdtsc() - start > (1ull << 35)) { puts("virtio-ackrace: no answer\n"); return 1; }
        used_seen++;
        took += rdtsc() - start;
    }
    took /= 8;
    for (int r = 0; r < ROUNDS; r++) {
        /* A completion nobody acknowledged yet, as when an interrupt handler starts. */
        if (!(rd(d, R_ISR) & 1) && request(d) != 1) { puts("virtio-ackrace: no answer\n"); return 1; }
        notify(d, 0, 1);
        uint64_t start = rdtsc(), delay = took * (uint64_t)(r % 64) / 64;
        while (rdtsc() - start < delay) {}
        wr(d, R_ISR_ACK, 1);
        if (used.idx != used_seen) {
            used_seen++;
            continue;
        }
        late++;
        if (poll_used(d) != 1) { puts("virtio-ackrace: no answer\n"); return 1; }
        if (!(rd(d, R_ISR) & 1)) lost++;
    }
    puts("virtio-ackrace: rounds="); put_dec(ROUNDS);
    puts(" late="); put_dec(late);
    puts(" request_cycles="); put_dec(took);
    puts(" lost="); put_dec(lost);
    puts("\n");
    return 0;
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    find_devices(cmdline);
    for (int i = 0; i < ndevs; i++) {
        puts("virtio: device "); put_dec((uint64_t)i);
        puts(" at "); put_hex(devs[i].base);
        puts(" irq "); put_dec(devs[i].irq);
        puts(" id "); put_dec(devs[i].id);
        puts("\n");
    }
    char test[16];
    copy_word(test, cmdline_arg(cmdline, "test"), sizeof test);
    tolerate_spurious = cmdline_arg(cmdline, "spurious") != 0;
    const char *t = test;
    const struct dev *blk = find(2, 0), *rng = find(4, 0);
    int result = 1;
    if (t[0] == 'b' && t[1] == 'l' && t[2] == 'k' && !t[3]) {
        const char *sector = cmdline_arg(cmdline, "sector");
        result = blk ? test_blk(blk, sector ? parse_u64(sector) : 5) : 1;
    } else if (t[0] == 'r' && t[1] == 'e') {
        result = blk ? test_reset(blk) : 1;
    } else if (t[0] == 'h') {
        result = blk ? test_hostile(blk, find(2, 1)) : 1;
    } else if (t[0] == 'b' && t[1] == 'e') {
        result = blk ? test_bench(blk, cmdline) : 1;
    } else if (t[0] == 'r' && t[1] == 'n') {
        result = rng ? test_rng(rng, parse_u64(cmdline_arg(cmdline, "rounds"))) : 1;
    } else if (t[0] == 'a') {
        result = blk ? test_ackrace(blk) : 1;
    } else if (t[0] == 'g') {
        result = blk ? test_grow(blk) : 1;
    } else if (t[0] == 's' && t[1] == 't') {
        result = blk ? test_stress(blk, cmdline) : 1;
    }
    if (result) puts("virtio: the device this test needs is missing\n");
    guest_exit((uint8_t)result);
}
