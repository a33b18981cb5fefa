/* The bundled guests' network stack: see net.h. One virtio-net device (modern virtio-mmio,
 * version 2), split queues of QSIZE descriptors in static memory, receive buffers posted once
 * and recycled, one transmit buffer per descriptor. No offloads: checksums are computed here. */
#include "rt.h"
#include "net.h"

#define QSIZE 16
#define BUF 2048
#define HDR 12 /* virtio_net_hdr with num_buffers (VERSION_1) */

/* virtio-mmio registers */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS 0x060
#define R_INT_ACK 0x064
#define R_STATUS 0x070
#define R_DESC_LO 0x080
#define R_DESC_HI 0x084
#define R_DRIVER_LO 0x090
#define R_DRIVER_HI 0x094
#define R_DEVICE_LO 0x0a0
#define R_DEVICE_HI 0x0a4
#define R_CONFIG 0x100

#define F_MAC (1u << 5)
#define F_VERSION_1_HI 1u /* bit 32 */

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};
struct avail {
    uint16_t flags, idx, ring[QSIZE], used_event;
};
struct used_elem {
    uint32_t id, len;
};
struct used {
    uint16_t flags, idx;
    struct used_elem ring[QSIZE];
    uint16_t avail_event;
};
struct queue {
    struct desc desc[QSIZE] __attribute__((aligned(16)));
    struct avail avail __attribute__((aligned(4)));
    struct used used __attribute__((aligned(4)));
    uint16_t last_used, next_avail;
    uint8_t buf[QSIZE][BUF];
};

static struct queue rxq __attribute__((aligned(4096)));
static struct queue txq __attribute__((aligned(4096)));
static volatile uint32_t *regs;
static uint8_t mac[6];
static uint32_t my_ip, my_mask;
static struct net_stats stats;
static unsigned tx_next;

#define ARP_SLOTS 8
static struct {
    uint32_t ip;
    uint8_t mac[6];
    bool valid;
} arp[ARP_SLOTS];
static unsigned arp_victim;

/* the last ping replies and UDP datagrams waiting for the caller */
static struct {
    uint16_t id, seq;
    bool seen;
} ping_reply;
#define UDP_SLOTS 8
static struct {
    uint16_t port, sport;
    uint32_t src;
    size_t len;
    uint8_t data[1500];
    bool full;
} udp_q[UDP_SLOTS];

static inline void w(unsigned off, uint32_t v) { regs[off / 4] = v; }
static inline uint32_t r(unsigned off) { return regs[off / 4]; }
static inline void mb(void) { __asm__ volatile("fence rw, rw" ::: "memory"); }

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint16_t csum(const uint8_t *p, size_t n, uint32_t sum)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void setup_queue(unsigned index, struct queue *q)
{
    w(R_QUEUE_SEL, index);
    w(R_QUEUE_NUM, QSIZE);
    uint64_t d = (uintptr_t)q->desc, a = (uintptr_t)&q->avail, u = (uintptr_t)&q->used;
    w(R_DESC_LO, (uint32_t)d), w(R_DESC_HI, (uint32_t)(d >> 32));
    w(R_DRIVER_LO, (uint32_t)a), w(R_DRIVER_HI, (uint32_t)(a >> 32));
    w(R_DEVICE_LO, (uint32_t)u), w(R_DEVICE_HI, (uint32_t)(u >> 32));
    w(R_QUEUE_READY, 1);
}

static void rx_post(uint16_t i)
{
    rxq.desc[i].addr = (uintptr_t)rxq.buf[i];
    rxq.desc[i].len = BUF;
    rxq.desc[i].flags = 2; /* device-writable */
    rxq.avail.ring[rxq.next_avail % QSIZE] = i;
    mb();
    rxq.next_avail++;
    rxq.avail.idx = rxq.next_avail;
    mb();
}

bool net_parse_ip(const char *s, size_t len, uint32_t *ip, unsigned *prefix)
{
    uint32_t v = 0;
    unsigned part = 0, parts = 0, pre = 24;
    size_t i = 0;
    bool digit = false;
    for (; i < len && s[i] != '/'; i++) {
        if (s[i] == '.') {
            if (!digit || part > 255)
                return false;
            v = v << 8 | part, part = 0, parts++, digit = false;
        } else if (s[i] >= '0' && s[i] <= '9') {
            part = part * 10 + (unsigned)(s[i] - '0'), digit = true;
        } else {
            return false;
        }
    }
    if (!digit || part > 255 || parts != 3)
        return false;
    v = v << 8 | part;
    if (i < len) {
        unsigned long p;
        if (!parse_ulong(s + i + 1, len - i - 1, &p) || p > 32)
            return false;
        pre = (unsigned)p;
    }
    *ip = v;
    *prefix = pre;
    return true;
}

void net_format_ip(uint32_t ip, char *buf)
{
    snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

bool net_init(void)
{
    int node = -1;
    while ((node = fdt_node_by_compatible("virtio,mmio", node)) >= 0) {
        uint64_t base, size;
        if (!fdt_reg(node, 0, &base, &size))
            continue;
        volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)base;
        if (p[R_MAGIC / 4] == 0x74726976 && p[R_VERSION / 4] == 2 && p[R_DEVICE_ID / 4] == 1) {
            regs = p;
            break;
        }
    }
    if (!regs) {
        puts("net: no virtio-net device in the device tree");
        return false;
    }
    const char *v;
    size_t len;
    unsigned prefix = 24;
    if (!bootarg_get("ip", &v, &len) || !net_parse_ip(v, len, &my_ip, &prefix)) {
        puts("net: no usable ip=A.B.C.D/N in bootargs");
        return false;
    }
    my_mask = prefix ? 0xffffffffu << (32 - prefix) : 0;
    w(R_STATUS, 0);
    w(R_STATUS, 1 | 2); /* ACKNOWLEDGE | DRIVER */
    w(R_DEV_FEATURES_SEL, 0);
    uint32_t lo = r(R_DEV_FEATURES) & F_MAC;
    w(R_DRV_FEATURES_SEL, 0), w(R_DRV_FEATURES, lo);
    w(R_DRV_FEATURES_SEL, 1), w(R_DRV_FEATURES, F_VERSION_1_HI);
    w(R_STATUS, 1 | 2 | 8);
    if (!(r(R_STATUS) & 8)) {
        puts("net: the device refused our features");
        return false;
    }
    if (r(R_QUEUE_NUM_MAX) < QSIZE) {
        puts("net: queues too small");
        return false;
    }
    setup_queue(0, &rxq);
    setup_queue(1, &txq);
    volatile uint8_t *cfg = (volatile uint8_t *)regs + R_CONFIG;
    for (int i = 0; i < 6; i++)
        mac[i] = cfg[i];
    for (uint16_t i = 0; i < QSIZE; i++)
        rx_post(i);
    w(R_STATUS, 1 | 2 | 8 | 4); /* DRIVER_OK */
    w(R_QUEUE_NOTIFY, 0);
    char ipbuf[16];
    net_format_ip(my_ip, ipbuf);
    printf("net: eth0 %02x:%02x:%02x:%02x:%02x:%02x %s/%u\n", mac[0], mac[1], mac[2], mac[3],
           mac[4], mac[5], ipbuf, prefix);
    return true;
}

uint32_t net_ip(void) { return my_ip; }
const uint8_t *net_mac(void) { return mac; }
const struct net_stats *net_stats(void) { return &stats; }

/* frame: dst(6) src(6) type(2) payload; `frame` points at a TX buffer past the header room */
static bool tx(uint8_t *frame, size_t len)
{
    unsigned i = tx_next++ % QSIZE;
    /* reclaim: wait until the device returned the descriptor we are about to reuse */
    for (unsigned spins = 0; (uint16_t)(txq.next_avail - txq.used.idx) >= QSIZE; spins++) {
        mb();
        if (spins > 1000000)
            return false;
    }
    txq.desc[i].addr = (uintptr_t)(frame - HDR);
    txq.desc[i].len = (uint32_t)(len + HDR);
    txq.desc[i].flags = 0;
    txq.avail.ring[txq.next_avail % QSIZE] = (uint16_t)i;
    mb();
    txq.next_avail++;
    txq.avail.idx = txq.next_avail;
    mb();
    w(R_QUEUE_NOTIFY, 1);
    stats.tx_frames++;
    return true;
}

static uint8_t *tx_buf(void)
{
    uint8_t *b = txq.buf[tx_next % QSIZE];
    memset(b, 0, HDR);
    return b + HDR;
}

static const uint8_t *arp_lookup(uint32_t ip)
{
    for (unsigned i = 0; i < ARP_SLOTS; i++)
        if (arp[i].valid && arp[i].ip == ip)
            return arp[i].mac;
    return NULL;
}

static void arp_learn(uint32_t ip, const uint8_t *m)
{
    for (unsigned i = 0; i < ARP_SLOTS; i++)
        if (arp[i].valid && arp[i].ip == ip) {
            memcpy(arp[i].mac, m, 6);
            return;
        }
    unsigned i = arp_victim++ % ARP_SLOTS;
    arp[i].ip = ip, arp[i].valid = true;
    memcpy(arp[i].mac, m, 6);
}

static void arp_send(uint16_t op, const uint8_t *tha, uint32_t tpa)
{
    static const uint8_t bcast[6] = {255, 255, 255, 255, 255, 255};
    uint8_t *f = tx_buf();
    memcpy(f, op == 1 ? bcast : tha, 6);
    memcpy(f + 6, mac, 6);
    wr16(f + 12, 0x0806);
    uint8_t *a = f + 14;
    wr16(a, 1), wr16(a + 2, 0x0800), a[4] = 6, a[5] = 4, wr16(a + 6, op);
    memcpy(a + 8, mac, 6), wr32(a + 14, my_ip);
    memcpy(a + 18, op == 1 ? (const uint8_t[6]){0} : tha, 6), wr32(a + 24, tpa);
    tx(f, 60);
}

/* Build an IPv4 packet to dst with `plen` bytes of payload already at f+14+20; resolves ARP
 * (waiting up to 200 ms for a reply). */
static bool ip_send(uint8_t *f, uint32_t dst, uint8_t proto, size_t plen)
{
    const uint8_t *dmac = arp_lookup(dst);
    if (!dmac) {
        for (int tries = 0; tries < 4 && !dmac; tries++) {
            /* the frame being built lives in a TX buffer: copy it aside while we ask */
            static uint8_t saved[1514];
            memcpy(saved, f, 34 + plen);
            arp_send(1, NULL, dst);
            uint64_t until = time_now() + timer_ms_to_ticks(50);
            while (!(dmac = arp_lookup(dst)) && time_now() < until) {
                net_poll();
                if (!arp_lookup(dst))
                    sleep_ticks(timer_us_to_ticks(100));
            }
            f = tx_buf();
            memcpy(f, saved, 34 + plen);
        }
        if (!dmac)
            return false;
    }
    memcpy(f, dmac, 6);
    memcpy(f + 6, mac, 6);
    wr16(f + 12, 0x0800);
    uint8_t *ip = f + 14;
    ip[0] = 0x45, ip[1] = 0;
    wr16(ip + 2, (uint16_t)(20 + plen));
    wr16(ip + 4, (uint16_t)stats.tx_frames), wr16(ip + 6, 0x4000);
    ip[8] = 64, ip[9] = proto;
    wr16(ip + 10, 0);
    wr32(ip + 12, my_ip), wr32(ip + 16, dst);
    wr16(ip + 10, csum(ip, 20, 0));
    size_t len = 34 + plen;
    return tx(f, len < 60 ? 60 : len);
}

bool net_ping_send(uint32_t dst, uint16_t id, uint16_t seq, size_t payload)
{
    if (payload > 1400)
        payload = 1400;
    uint8_t *f = tx_buf();
    uint8_t *icmp = f + 34;
    icmp[0] = 8, icmp[1] = 0;
    wr16(icmp + 2, 0), wr16(icmp + 4, id), wr16(icmp + 6, seq);
    for (size_t i = 0; i < payload; i++)
        icmp[8 + i] = (uint8_t)i;
    wr16(icmp + 2, csum(icmp, 8 + payload, 0));
    ping_reply.seen = false;
    return ip_send(f, dst, 1, 8 + payload);
}

bool net_ping_reply(uint16_t id, uint16_t seq)
{
    return ping_reply.seen && ping_reply.id == id && ping_reply.seq == seq;
}

bool net_udp_send(uint32_t dst, uint16_t sport, uint16_t dport, const void *data, size_t len)
{
    if (len > 1472)
        return false;
    uint8_t *f = tx_buf();
    uint8_t *u = f + 34;
    wr16(u, sport), wr16(u + 2, dport), wr16(u + 4, (uint16_t)(8 + len)), wr16(u + 6, 0);
    memcpy(u + 8, data, len);
    /* checksum over the pseudo-header */
    uint32_t sum = (my_ip >> 16) + (my_ip & 0xffff) + (dst >> 16) + (dst & 0xffff) + 17 + 8 + len;
    uint16_t c = csum(u, 8 + len, sum);
    wr16(u + 6, c ? c : 0xffff);
    return ip_send(f, dst, 17, 8 + len);
}

size_t net_udp_recv(uint16_t port, void *buf, size_t cap, uint32_t *src, uint16_t *sport)
{
    net_poll();
    for (unsigned i = 0; i < UDP_SLOTS; i++)
        if (udp_q[i].full && udp_q[i].port == port) {
            size_t n = udp_q[i].len < cap ? udp_q[i].len : cap;
            memcpy(buf, udp_q[i].data, n);
            if (src)
                *src = udp_q[i].src;
            if (sport)
                *sport = udp_q[i].sport;
            udp_q[i].full = false;
            return n ? n : 1;
        }
    return 0;
}

static void handle_ip(const uint8_t *f, size_t n)
{
    const uint8_t *ip = f + 14;
    if (n < 34 || (ip[0] >> 4) != 4)
        return;
    size_t ihl = (size_t)(ip[0] & 15) * 4, tot = rd16(ip + 2);
    if (ihl < 20 || tot < ihl || 14 + tot > n || csum(ip, ihl, 0) != 0)
        return;
    uint32_t src = rd32(ip + 12), dst = rd32(ip + 16);
    if (dst != my_ip)
        return;
    const uint8_t *p = ip + ihl;
    size_t plen = tot - ihl;
    arp_learn(src, f + 6);
    if (ip[9] == 1 && plen >= 8) {
        if (p[0] == 8) { /* echo request: answer with the same payload */
            uint8_t *o = tx_buf();
            memcpy(o + 34, p, plen);
            o[34] = 0;
            wr16(o + 36, 0);
            wr16(o + 36, csum(o + 34, plen, 0));
            if (ip_send(o, src, 1, plen))
                stats.icmp_echo_replied++;
        } else if (p[0] == 0) {
            ping_reply.id = rd16(p + 4), ping_reply.seq = rd16(p + 6), ping_reply.seen = true;
        }
    } else if (ip[9] == 17 && plen >= 8) {
        size_t ulen = rd16(p + 4);
        if (ulen < 8 || ulen > plen)
            return;
        for (unsigned i = 0; i < UDP_SLOTS; i++)
            if (!udp_q[i].full) {
                udp_q[i].port = rd16(p + 2), udp_q[i].sport = rd16(p);
                udp_q[i].src = src, udp_q[i].len = ulen - 8;
                memcpy(udp_q[i].data, p + 8, ulen - 8);
                udp_q[i].full = true;
                return;
            }
        stats.rx_dropped++;
    }
}

static void handle_arp(const uint8_t *f, size_t n)
{
    const uint8_t *a = f + 14;
    if (n < 42 || rd16(a) != 1 || rd16(a + 2) != 0x0800)
        return;
    uint32_t spa = rd32(a + 14), tpa = rd32(a + 24);
    arp_learn(spa, a + 8);
    if (rd16(a + 6) == 1 && tpa == my_ip) {
        arp_send(2, a + 8, spa);
        stats.arp_replies++;
    }
}

void net_poll(void)
{
    if (!regs)
        return;
    mb();
    while (rxq.last_used != rxq.used.idx) {
        struct used_elem e = rxq.used.ring[rxq.last_used % QSIZE];
        rxq.last_used++;
        if (e.id < QSIZE && e.len > HDR) {
            const uint8_t *f = rxq.buf[e.id] + HDR;
            size_t n = e.len - HDR;
            stats.rx_frames++;
            uint16_t type = rd16(f + 12);
            if (type == 0x0806)
                handle_arp(f, n);
            else if (type == 0x0800)
                handle_ip(f, n);
        }
        rx_post((uint16_t)(e.id % QSIZE));
        w(R_QUEUE_NOTIFY, 0);
    }
    if (r(R_INT_STATUS))
        w(R_INT_ACK, r(R_INT_STATUS));
}

bool net_wait_us(uint64_t us, bool (*done)(void *ctx), void *ctx)
{
    uint64_t until = time_now() + timer_us_to_ticks(us);
    for (;;) {
        net_poll();
        if (done(ctx))
            return true;
        if (time_now() >= until)
            return false;
        sleep_ticks(timer_us_to_ticks(50));
    }
}

bool net_bootarg_ip(const char *key, uint32_t *ip)
{
    const char *v;
    size_t len;
    unsigned prefix;
    if (!bootarg_get(key, &v, &len) || !net_parse_ip(v, len, ip, &prefix)) {
        printf("net: give %s=A.B.C.D\n", key);
        return false;
    }
    return true;
}

bool net_never(void *ctx)
{
    UNUSED(ctx);
    return false;
}
