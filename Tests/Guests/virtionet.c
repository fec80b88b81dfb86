/* Drives a virtio-net device (virtio-mmio version 2, found through the command line's virtio_mmio.device= words)
 * directly at CPL0, polled, with UDP over IPv4 to a host peer that answers every datagram with a 1000-byte payload:
 *   ip=A.B.C.D host=A.B.C.D hostmac=xx:..:xx port=N   (the guest's address; the host's address, MAC and UDP port)
 * Steps, one line each on COM1:
 *   virtio-net: features=... mac=... status=...        what the device offers, its MAC and link status
 *   virtio-net: ping1 -> len=1000 buffers=B fnv=H      a datagram sent (header and frame in two descriptors), the
 *                                                      answer received in 256-byte mergeable buffers (B of them)
 *   virtio-net: hostile tx -> status=S                 a header-only frame and a 70,000-byte frame are dropped
 *                                                      (used length 0), the device stays live
 *   virtio-net: ping2 -> ...                           it still moves frames both ways
 *   virtio-net: rx chain without writable space -> NEEDS_RESET|...   after a reset: the answer to ping3 meets a
 *                                                      receive chain the device cannot write: it needs a reset
 * Exits through debug-exit with 0 (vmm: status 1) at the end, 1 (vmm: 3) when there is no virtio-net device. */
#include "guest.h"

enum {
    R_MAGIC = 0x000, R_DEVICE_ID = 0x008, R_DEV_FEATURES = 0x010, R_DEV_FEATURES_SEL = 0x014,
    R_DRV_FEATURES = 0x020, R_DRV_FEATURES_SEL = 0x024, R_QUEUE_SEL = 0x030, R_QUEUE_NUM = 0x038,
    R_QUEUE_READY = 0x044, R_QUEUE_NOTIFY = 0x050, R_STATUS = 0x070, R_DESC_LO = 0x080, R_DESC_HI = 0x084,
    R_DRIVER_LO = 0x090, R_DRIVER_HI = 0x094, R_DEVICE_LO = 0x0a0, R_DEVICE_HI = 0x0a4, R_CONFIG = 0x100,
};
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8, S_NEEDS_RESET = 0x40 };
enum { D_NEXT = 1, D_WRITE = 2 };
#define F_MAC (1u << 5)
#define F_MRG_RXBUF (1u << 15)
#define F_STATUS (1u << 16)
#define QSZ 16
#define RXBUF 256

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq {
    struct desc desc[QSZ] __attribute__((aligned(16)));
    struct { uint16_t flags, idx, ring[QSZ], used_event; } avail __attribute__((aligned(4)));
    volatile struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[QSZ]; uint16_t avail_event; } used
        __attribute__((aligned(4)));
    uint16_t seen;
};
static struct vq rx, tx;
static uint8_t rx_bufs[QSZ][RXBUF];
static uint8_t tx_header[12], tx_frame[1600];
static uint32_t base;
static uint8_t mac[6], host_mac[6], ip[4], host_ip[4];
static uint16_t port;

static uint32_t rd(uint32_t off) { return *(volatile uint32_t *)(uintptr_t)(base + off); }
static void wr(uint32_t off, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(base + off) = v; }
#define barrier() __asm__ volatile("" ::: "memory")

static uint64_t parse_hex(const char **s) {
    uint64_t v = 0;
    for (;; (*s)++) {
        char c = **s;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return v;
        v = v * 16 + (uint64_t)d;
    }
}

static void find_device(const char *cmdline) {
    static const char key[] = "virtio_mmio.device=";
    for (const char *p = cmdline; *p;) {
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k) {
            while (*q && *q != '@') q++;
            if (*q == '@' && q[1] == '0' && q[2] == 'x') {
                q += 3;
                uint32_t b = (uint32_t)parse_hex(&q);
                uint32_t saved = base;
                base = b;
                if (rd(R_MAGIC) == 0x74726976 && rd(R_DEVICE_ID) == 1) return;
                base = saved;
            }
        }
        while (*p && *p != ' ') p++;
        while (*p == ' ') p++;
    }
}

static void parse_ip(const char *s, uint8_t out[4]) {
    for (int i = 0; i < 4 && s; i++) {
        out[i] = (uint8_t)parse_u64(s);
        while (*s >= '0' && *s <= '9') s++;
        if (*s == '.') s++;
    }
}

static void parse_mac(const char *s, uint8_t out[6]) {
    for (int i = 0; i < 6 && s; i++) {
        out[i] = (uint8_t)parse_hex(&s);
        if (*s == ':') s++;
    }
}

static void put_mac(const uint8_t m[6]) {
    for (int i = 0; i < 6; i++) {
        if (i) putc(':');
        putc("0123456789abcdef"[m[i] >> 4]);
        putc("0123456789abcdef"[m[i] & 15]);
    }
}

static void setup_queue(int index, struct vq *q) {
    for (uint32_t i = 0; i < sizeof q->avail / 2; i++) ((uint16_t *)&q->avail)[i] = 0;
    q->used.idx = 0;
    q->seen = 0;
    wr(R_QUEUE_SEL, (uint32_t)index);
    wr(R_QUEUE_NUM, QSZ);
    wr(R_DESC_LO, (uint32_t)(uintptr_t)q->desc);
    wr(R_DESC_HI, 0);
    wr(R_DRIVER_LO, (uint32_t)(uintptr_t)&q->avail);
    wr(R_DRIVER_HI, 0);
    wr(R_DEVICE_LO, (uint32_t)(uintptr_t)&q->used);
    wr(R_DEVICE_HI, 0);
    wr(R_QUEUE_READY, 1);
}

static void publish(int index, struct vq *q, uint16_t head) {
    q->avail.ring[q->avail.idx % QSZ] = head;
    barrier();
    q->avail.idx++;
    barrier();
    wr(R_QUEUE_NOTIFY, (uint32_t)index);
}

/* Reset, negotiate, both queues, DRIVER_OK; RX gets `writable` 256-byte buffers (one per chain), or one chain
 * whose only buffer is device-readable. Returns the features offered. */
static uint32_t start(int rx_writable) {
    wr(R_STATUS, 0);
    wr(R_STATUS, S_ACK);
    wr(R_STATUS, S_ACK | S_DRIVER);
    wr(R_DEV_FEATURES_SEL, 0);
    uint32_t offered = rd(R_DEV_FEATURES);
    wr(R_DRV_FEATURES_SEL, 0);
    wr(R_DRV_FEATURES, offered & (F_MAC | F_MRG_RXBUF | F_STATUS));
    wr(R_DRV_FEATURES_SEL, 1);
    wr(R_DRV_FEATURES, 1);  /* VERSION_1 */
    wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    setup_queue(0, &rx);
    setup_queue(1, &tx);
    wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    for (uint16_t i = 0; i < QSZ; i++) rx.desc[i] = (struct desc){ (uint64_t)(uintptr_t)rx_bufs[i], RXBUF, D_WRITE, 0 };
    if (rx_writable) {
        for (uint16_t i = 0; i < QSZ; i++) publish(0, &rx, i);
    } else {
        rx.desc[0].flags = 0;
        publish(0, &rx, 0);
    }
    return offered;
}

static uint16_t ip_checksum(const uint8_t *p, int n) {
    uint32_t sum = 0;
    for (int i = 0; i < n; i += 2) sum += (uint32_t)p[i] << 8 | p[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* An Ethernet/IPv4/UDP frame to the host peer with `payload`. */
static int build_udp(const char *payload) {
    int n = 0;
    while (payload[n]) n++;
    uint8_t *f = tx_frame;
    for (int i = 0; i < 6; i++) { f[i] = host_mac[i]; f[6 + i] = mac[i]; }
    f[12] = 0x08; f[13] = 0x00;
    uint8_t *iph = f + 14;
    int total = 20 + 8 + n;
    uint8_t h[20] = { 0x45, 0, (uint8_t)(total >> 8), (uint8_t)total, 0, 1, 0x40, 0, 64, 17, 0, 0,
                      ip[0], ip[1], ip[2], ip[3], host_ip[0], host_ip[1], host_ip[2], host_ip[3] };
    uint16_t c = ip_checksum(h, 20);
    h[10] = (uint8_t)(c >> 8); h[11] = (uint8_t)c;
    for (int i = 0; i < 20; i++) iph[i] = h[i];
    uint8_t *udp = iph + 20;
    udp[0] = 4000 >> 8; udp[1] = 4000 & 0xff; udp[2] = (uint8_t)(port >> 8); udp[3] = (uint8_t)port;
    udp[4] = (uint8_t)((8 + n) >> 8); udp[5] = (uint8_t)(8 + n); udp[6] = 0; udp[7] = 0;  /* no UDP checksum */
    for (int i = 0; i < n; i++) udp[8 + i] = (uint8_t)payload[i];
    return 14 + total;
}

/* Sends a chain of (header, frame) descriptors with the given lengths; returns the used length, or -1 when the
 * device did not complete it within about a second. */
static int transmit(uint32_t header_len, uint64_t frame_addr, uint32_t frame_len) {
    for (int i = 0; i < 12; i++) tx_header[i] = 0;
    tx.desc[0] = (struct desc){ (uint64_t)(uintptr_t)tx_header, header_len, frame_len ? D_NEXT : 0, 1 };
    tx.desc[1] = (struct desc){ frame_addr, frame_len, 0, 0 };
    publish(1, &tx, 0);
    uint64_t t0 = rdtsc();
    while (tx.used.idx == tx.seen) if (rdtsc() - t0 > (1ull << 32)) return -1;
    int len = (int)tx.used.ring[tx.seen % QSZ].len;
    tx.seen++;
    return len;
}

/* Waits (about 30 s at most) for a UDP datagram to port 4000, recycling every other frame's buffers; prints its
 * length, the number of buffers it came in and an FNV-1a hash of the payload. */
static void receive_answer(void) {
    uint64_t t0 = rdtsc();
    for (;;) {
        if (rd(R_STATUS) & S_NEEDS_RESET) { puts("NEEDS_RESET\n"); return; }
        if (rx.used.idx == rx.seen) {
            if (rdtsc() - t0 > (1ull << 36)) { puts("TIMEOUT\n"); return; }
            continue;
        }
        barrier();
        uint16_t head = (uint16_t)rx.used.ring[rx.seen % QSZ].id;
        uint8_t *first = rx_bufs[head % QSZ];
        uint16_t buffers = (uint16_t)(first[10] | first[11] << 8);
        /* The frame, gathered from its buffers (past the 12-byte header). */
        static uint8_t frame[QSZ * RXBUF];
        int n = 0;
        for (uint16_t b = 0; b < buffers && b < QSZ; b++) {
            uint16_t h = (uint16_t)rx.used.ring[(rx.seen + b) % QSZ].id;
            uint32_t len = rx.used.ring[(rx.seen + b) % QSZ].len;
            for (uint32_t i = b == 0 ? 12 : 0; i < len && i < RXBUF; i++) frame[n++] = rx_bufs[h % QSZ][i];
        }
        for (uint16_t b = 0; b < buffers && b < QSZ; b++) {
            uint16_t h = (uint16_t)rx.used.ring[rx.seen % QSZ].id;
            rx.seen++;
            publish(0, &rx, h % QSZ);
        }
        if (n < 42 || frame[12] != 0x08 || frame[13] != 0 || frame[23] != 17) continue;
        if ((frame[36] << 8 | frame[37]) != 4000) continue;
        int payload = (frame[38] << 8 | frame[39]) - 8;
        uint32_t fnv = 2166136261u;
        for (int i = 0; i < payload && 42 + i < n; i++) fnv = (fnv ^ frame[42 + i]) * 16777619u;
        puts("len="); put_dec((uint64_t)payload);
        puts(" buffers="); put_dec(buffers);
        puts(" fnv="); put_hex(fnv);
        puts("\n");
        return;
    }
}

static void ping(const char *what) {
    int n = build_udp(what);
    int sent = transmit(12, (uint64_t)(uintptr_t)tx_frame, (uint32_t)n);
    puts("virtio-net: "); puts(what); puts(" -> ");
    if (sent < 0) { puts("TX TIMEOUT\n"); return; }
    receive_answer();
}

void guest_main(uint32_t magic, struct multiboot_info *info) {
    const char *cmdline = multiboot_cmdline(magic, (uintptr_t)info);
    find_device(cmdline);
    if (!base) {
        puts("virtio-net: no device\n");
        guest_exit(1);
        return;
    }
    parse_ip(cmdline_arg(cmdline, "ip"), ip);
    parse_ip(cmdline_arg(cmdline, "host"), host_ip);
    parse_mac(cmdline_arg(cmdline, "hostmac"), host_mac);
    port = (uint16_t)parse_u64(cmdline_arg(cmdline, "port"));

    uint32_t offered = start(1);
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)(rd(R_CONFIG + (uint32_t)(i & ~3)) >> (8 * (i & 3)));
    uint32_t status = rd(R_CONFIG + 4) >> 16;
    puts("virtio-net: features="); put_hex(offered);
    puts(" mac="); put_mac(mac);
    puts(" status="); put_dec(status);
    puts("\n");

    ping("ping1");

    int header_only = transmit(12, 0, 0);
    int oversized = transmit(12, 0x100000, 70000);
    puts("virtio-net: hostile tx -> header-only used="); put_dec((uint64_t)header_only);
    puts(" oversized used="); put_dec((uint64_t)oversized);
    puts(" status="); put_hex(rd(R_STATUS));
    puts("\n");

    ping("ping2");

    start(0);
    puts("virtio-net: rx chain without writable space -> ");
    int n = build_udp("ping3");
    if (transmit(12, (uint64_t)(uintptr_t)tx_frame, (uint32_t)n) < 0) puts("TX TIMEOUT ");
    receive_answer();
    guest_exit(0);
}
