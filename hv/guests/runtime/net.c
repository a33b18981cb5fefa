/* The bundled guests' network stack: see net.h. One virtio-net device (modern virtio-mmio,
 * version 2, EVENT_IDX), split queues in heap memory, receive buffers posted once and
 * recycled, one transmit buffer per descriptor. No offloads: checksums are computed here.
 * Waiting is interrupt-driven: wait_rx() sleeps in wfi until the device uses an RX buffer. */
#include "rt.h"
#include "net.h"
#include "virtio.h"
#include "plic.h"

/* Ring sizes: RX as Linux's virtio-net (256, or the device's queue max if smaller), so a burst
 * waits in the ring rather than being dropped; TX smaller (the device takes each frame at the
 * notify). Buffers come from the heap, never zeroed: a page costs the host only once the
 * device has written it. */
#define RX_MAX 256
#define TX_MAX 32
#define BUF 1536 /* header + a 1514-byte frame */
#define HDR 12   /* virtio_net_hdr with num_buffers (VERSION_1) */

#define F_MAC (1u << 5)

/* One split virtqueue in driver memory: avail = flags, idx, ring[size], used_event;
 * used = flags, idx, ring[size] of {id, len}, avail_event. */
struct queue {
    uint16_t size, last_used, next_avail;
    struct virtq_desc *desc;
    volatile uint16_t *avail;
    volatile uint16_t *used;
    uint8_t *buf; /* size x BUF */
};

static inline uint16_t used_idx(const struct queue *q) { return q->used[1]; }
static inline volatile struct virtq_used_elem *used_elem(const struct queue *q, uint16_t i)
{
    return (volatile struct virtq_used_elem *)(q->used + 2) + i % q->size;
}
static inline volatile uint16_t *avail_event(const struct queue *q)
{
    return q->used + 2 + 4 * q->size;
}
static inline volatile uint16_t *used_event(const struct queue *q) { return q->avail + 2 + q->size; }

static struct queue rxq, txq;
static struct virtio_dev dev;
static bool event_idx; /* VIRTIO_F_RING_EVENT_IDX negotiated */
static bool irq_ok;    /* the device's interrupt reaches us through the PLIC */
static uint8_t mac[6];
static uint32_t my_ip, my_mask;
static uint32_t my_router, my_dns; /* from DHCP, or the static long form's gateway (0: none) */
static bool dhcp_listening;        /* while DHCP runs: take UDP to port 68 whatever its dst */
static const uint8_t bcast_mac[6] = {255, 255, 255, 255, 255, 255};
static struct net_stats stats;
static unsigned tx_next;
/* TX batching (Linux's xmit_more): while net_poll() answers a burst, frames go in the ring
 * and the device hears of them once, at the end, or when the ring is full, or before any
 * sleep; so a burst of answers costs one notify, not one each. */
static int tx_batch;        /* nesting depth of net_poll */
static uint16_t tx_unkicked; /* avail index of the first frame the device was not told of */

/* ARP cache: least recently used entry evicted. Entries are added for who asks us or answers
 * us, and refreshed by what we hear; a broadcast question for someone else adds nothing
 * (RFC 826), so a big broadcast domain does not churn it. */
#define ARP_SLOTS 64
static struct {
    uint32_t ip;
    uint8_t mac[6];
    bool valid;
    unsigned long used;
} arp[ARP_SLOTS];
static unsigned long arp_clock;

/* the last ping reply, and the UDP datagrams waiting for the caller (a FIFO: slot
 * head % UDP_SLOTS is free while head - tail < UDP_SLOTS; taking one from the middle leaves
 * a hole that tail skips) */
static struct {
    uint16_t id, seq;
    bool seen;
} ping_reply;
#define UDP_SLOTS 256 /* a full RX ring of datagrams */
#define UDP_MAX 1472
static struct {
    uint16_t port, sport;
    uint32_t src;
    size_t len;
    uint8_t *data; /* UDP_MAX bytes from the heap */
    bool full;
} udp_q[UDP_SLOTS];
static unsigned udp_head, udp_tail;

#define DHCP_SERVER 67
#define DHCP_CLIENT 68
static bool dhcp_run(void);

static inline void mb(void) { virtio_mb(); }

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

/* Make descriptor i (its own buffer) available; the caller notifies (rx_kick). */
static void rx_post(uint16_t i)
{
    rxq.desc[i].addr = (uintptr_t)(rxq.buf + (size_t)i * BUF);
    rxq.desc[i].len = BUF;
    rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
    rxq.avail[2 + rxq.next_avail % rxq.size] = i;
    mb();
    rxq.next_avail++;
    rxq.avail[1] = rxq.next_avail;
}

/* Tell the device about buffers posted since avail index `old`, if it asked (EVENT_IDX: it
 * waits for them only when it has taken everything before). */
static void kick(struct queue *q, unsigned index, uint16_t old)
{
    mb();
    if (q->next_avail != old && (!event_idx || virtio_need_event(*avail_event(q), q->next_avail, old)))
        virtio_w(&dev, VIRTIO_R_QUEUE_NOTIFY, index);
}

static bool queue_init(struct queue *q, unsigned index, uint16_t max)
{
    virtio_w(&dev, VIRTIO_R_QUEUE_SEL, index);
    uint32_t dmax = virtio_r(&dev, VIRTIO_R_QUEUE_NUM_MAX);
    uint16_t size = max;
    while (size > dmax)
        size /= 2;
    if (size < 2)
        return false;
    q->size = size;
    q->last_used = q->next_avail = 0;
    q->desc = zalloc(16u * size, 16);
    q->avail = zalloc(6u + 2u * size, 4);
    q->used = zalloc(6u + 8u * size, 4);
    q->buf = alloc((size_t)size * BUF, 4096);
    return virtio_setup_queue(&dev, index, size, q->desc, (const void *)q->avail,
                              (const void *)q->used);
}

static void on_interrupt(void *ctx)
{
    UNUSED(ctx);
    virtio_ack_interrupt(&dev);
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

static bool has_colon(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            return true;
    return false;
}

/* The kernel's long form ip=CLIENT::GW:NETMASK::DEV:off (what a lab writes for a NIC with a
 * gateway): the client address, the gateway (the next hop off the subnet) and the netmask. */
static bool parse_long_ip(const char *s, size_t len, uint32_t *ip, uint32_t *gw, unsigned *prefix)
{
    const char *field[4];
    size_t flen[4], n = 0, start = 0;
    for (size_t i = 0; i <= len && n < 4; i++)
        if (i == len || s[i] == ':') {
            field[n] = s + start, flen[n] = i - start, n++;
            start = i + 1;
        }
    if (n < 4 || !net_parse_ip(field[0], flen[0], ip, prefix))
        return false;
    unsigned ignored;
    *gw = 0;
    if (flen[2] && !net_parse_ip(field[2], flen[2], gw, &ignored))
        return false;
    if (flen[3]) {
        uint32_t mask;
        if (!net_parse_ip(field[3], flen[3], &mask, &ignored))
            return false;
        unsigned p = 0;
        while (p < 32 && (mask & (0x80000000u >> p)))
            p++;
        *prefix = p;
    }
    return true;
}

void net_format_ip(uint32_t ip, char *buf)
{
    snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

bool net_init(void)
{
    if (!virtio_find(VIRTIO_DEVICE_NET, &dev)) {
        puts("net: no virtio-net device in the device tree");
        return false;
    }
    const char *v;
    size_t len;
    unsigned prefix = 24;
    bool dhcp = bootarg_get("ip", &v, &len) && len == 4 && strncmp(v, "dhcp", 4) == 0;
    bool parsed = !dhcp && bootarg_get("ip", &v, &len) &&
                  (has_colon(v, len) ? parse_long_ip(v, len, &my_ip, &my_router, &prefix)
                                       : net_parse_ip(v, len, &my_ip, &prefix));
    if (!dhcp && !parsed) {
        puts("net: no usable ip=A.B.C.D/N (or ip=dhcp) in bootargs");
        return false;
    }
    my_mask = dhcp ? 0 : prefix ? 0xffffffffu << (32 - prefix) : 0;
    if (!virtio_negotiate(&dev, F_MAC | VIRTIO_F_RING_EVENT_IDX)) {
        puts("net: the device refused our features");
        return false;
    }
    event_idx = (dev.features & VIRTIO_F_RING_EVENT_IDX) != 0;
    if (!queue_init(&rxq, 0, RX_MAX) || !queue_init(&txq, 1, TX_MAX)) {
        puts("net: queues too small");
        return false;
    }
    for (unsigned i = 0; i < UDP_SLOTS; i++)
        udp_q[i].data = alloc(UDP_MAX, 16);
    volatile uint8_t *cfg = virtio_config(&dev);
    for (int i = 0; i < 6; i++)
        mac[i] = cfg[i];
    for (uint16_t i = 0; i < rxq.size; i++)
        rx_post(i);
    *used_event(&txq) = 0x8000; /* no TX interrupts: tx() keeps it ahead */
    irq_ok = dev.irq && plic_attach(dev.irq, on_interrupt, NULL);
    virtio_driver_ok(&dev);
    virtio_w(&dev, VIRTIO_R_QUEUE_NOTIFY, 0);
    if (dhcp) {
        printf("net: eth0 %02x:%02x:%02x:%02x:%02x:%02x dhcp\n", mac[0], mac[1], mac[2], mac[3],
               mac[4], mac[5]);
        return dhcp_run();
    }
    char ipbuf[16];
    net_format_ip(my_ip, ipbuf);
    printf("net: eth0 %02x:%02x:%02x:%02x:%02x:%02x %s/%u", mac[0], mac[1], mac[2], mac[3],
           mac[4], mac[5], ipbuf, prefix);
    if (my_router) {
        char gw[16];
        net_format_ip(my_router, gw);
        printf(" via %s", gw);
    }
    putchar_('\n');
    return true;
}

uint32_t net_ip(void) { return my_ip; }
uint32_t net_netmask(void) { return my_mask; }
uint32_t net_router(void) { return my_router; }
uint32_t net_dns(void) { return my_dns; }
const uint8_t *net_mac(void) { return mac; }
const struct net_stats *net_stats(void) { return &stats; }

/* frame: dst(6) src(6) type(2) payload; `frame` points at a TX buffer past the header room */
static void tx_flush(void)
{
    kick(&txq, 1, tx_unkicked);
    tx_unkicked = txq.next_avail;
}

static bool tx(uint8_t *frame, size_t len)
{
    unsigned i = tx_next++ % txq.size;
    if ((uint16_t)(txq.next_avail - used_idx(&txq)) >= txq.size)
        tx_flush();
    /* reclaim: the device takes frames at the notify, so this normally passes at once */
    for (unsigned spins = 0; (uint16_t)(txq.next_avail - used_idx(&txq)) >= txq.size; spins++) {
        mb();
        if (spins > 1000000)
            return false;
    }
    uint16_t slot = txq.next_avail;
    txq.desc[i].addr = (uintptr_t)(frame - HDR);
    txq.desc[i].len = (uint32_t)(len + HDR);
    txq.desc[i].flags = 0;
    txq.avail[2 + slot % txq.size] = (uint16_t)i;
    mb();
    txq.next_avail++;
    txq.avail[1] = txq.next_avail;
    /* used_event half the index space ahead: the device never interrupts for TX */
    *used_event(&txq) = (uint16_t)(txq.next_avail + 0x8000);
    if (!tx_batch)
        tx_flush();
    stats.tx_frames++;
    return true;
}

static uint8_t *tx_buf(void)
{
    uint8_t *b = txq.buf + (size_t)(tx_next % txq.size) * BUF;
    memset(b, 0, HDR);
    return b + HDR;
}

static const uint8_t *arp_lookup(uint32_t ip)
{
    for (unsigned i = 0; i < ARP_SLOTS; i++)
        if (arp[i].valid && arp[i].ip == ip) {
            arp[i].used = ++arp_clock;
            return arp[i].mac;
        }
    return NULL;
}

/* Refresh ip's entry; add one (evicting the least recently used) only if `add`. */
static void arp_learn(uint32_t ip, const uint8_t *m, bool add)
{
    unsigned victim = 0;
    for (unsigned i = 0; i < ARP_SLOTS; i++) {
        if (arp[i].valid && arp[i].ip == ip) {
            memcpy(arp[i].mac, m, 6);
            arp[i].used = ++arp_clock;
            return;
        }
        if (!arp[i].valid || (arp[victim].valid && arp[i].used < arp[victim].used))
            victim = i;
    }
    if (!add || !ip)
        return;
    arp[victim].ip = ip, arp[victim].valid = true, arp[victim].used = ++arp_clock;
    memcpy(arp[victim].mac, m, 6);
}

static bool arp_known(void *ctx) { return arp_lookup(*(uint32_t *)ctx) != NULL; }

static void arp_send(uint16_t op, const uint8_t *tha, uint32_t tpa)
{
    uint8_t *f = tx_buf();
    memcpy(f, op == 1 ? bcast_mac : tha, 6);
    memcpy(f + 6, mac, 6);
    wr16(f + 12, 0x0806);
    uint8_t *a = f + 14;
    wr16(a, 1), wr16(a + 2, 0x0800), a[4] = 6, a[5] = 4, wr16(a + 6, op);
    memcpy(a + 8, mac, 6), wr32(a + 14, my_ip);
    memcpy(a + 18, op == 1 ? (const uint8_t[6]){0} : tha, 6), wr32(a + 24, tpa);
    tx(f, 60);
}

/* Build an IPv4 packet to dst with `plen` bytes of payload already at f+14+20 and send it to
 * `dmac`, or (NULL) the next hop's MAC: 255.255.255.255 goes to the broadcast MAC, an address
 * off our subnet through the router when there is one, the rest resolved by ARP (4 questions,
 * 50 ms each). */
static bool ip_send_to(uint8_t *f, uint32_t dst, uint8_t proto, size_t plen, const uint8_t *dmac)
{
    uint32_t hop = my_router && ((dst ^ my_ip) & my_mask) ? my_router : dst;
    if (!dmac)
        dmac = dst == 0xffffffffu ? bcast_mac : arp_lookup(hop);
    if (!dmac) {
        for (int tries = 0; tries < 4 && !dmac; tries++) {
            /* the frame being built lives in a TX buffer: copy it aside while we ask */
            static uint8_t saved[1514];
            memcpy(saved, f, 34 + plen);
            arp_send(1, NULL, hop);
            net_wait_until(time_now() + timer_ms_to_ticks(50), arp_known, &hop);
            dmac = arp_lookup(hop);
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

static bool ip_send(uint8_t *f, uint32_t dst, uint8_t proto, size_t plen)
{
    return ip_send_to(f, dst, proto, plen, NULL);
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

static int udp_find(uint16_t port)
{
    for (unsigned i = udp_tail; i != udp_head; i++)
        if (udp_q[i % UDP_SLOTS].full && udp_q[i % UDP_SLOTS].port == port)
            return (int)(i % UDP_SLOTS);
    return -1;
}

bool net_udp_ready(uint16_t port) { return udp_find(port) >= 0; }

size_t net_udp_recv(uint16_t port, void *buf, size_t cap, uint32_t *src, uint16_t *sport)
{
    net_poll();
    int i = udp_find(port);
    if (i < 0)
        return 0;
    size_t n = udp_q[i].len < cap ? udp_q[i].len : cap;
    memcpy(buf, udp_q[i].data, n);
    if (src)
        *src = udp_q[i].src;
    if (sport)
        *sport = udp_q[i].sport;
    udp_q[i].full = false;
    while (udp_tail != udp_head && !udp_q[udp_tail % UDP_SLOTS].full)
        udp_tail++;
    return n ? n : 1;
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
    const uint8_t *p = ip + ihl;
    size_t plen = tot - ihl;
    /* a DHCP server's answer comes broadcast, or to the address it offers (not ours yet) */
    bool dhcp_reply = dhcp_listening && ip[9] == 17 && plen >= 8 && rd16(p + 2) == DHCP_CLIENT;
    if (dst != my_ip && !dhcp_reply)
        return;
    if (my_mask && !((src ^ my_ip) & my_mask))
        arp_learn(src, f + 6, true); /* a neighbour talks to us: we will answer it */
    if (ip[9] == 1 && plen >= 8) {
        if (p[0] == 8) { /* echo request: answer with the same payload, to whoever sent it */
            uint8_t *o = tx_buf();
            memcpy(o + 34, p, plen);
            o[34] = 0;
            wr16(o + 36, 0);
            wr16(o + 36, csum(o + 34, plen, 0));
            if (ip_send_to(o, src, 1, plen, f + 6))
                stats.icmp_echo_replied++;
        } else if (p[0] == 0) {
            ping_reply.id = rd16(p + 4), ping_reply.seq = rd16(p + 6), ping_reply.seen = true;
        }
    } else if (ip[9] == 17 && plen >= 8) {
        size_t ulen = rd16(p + 4);
        if (ulen < 8 || ulen > plen || ulen - 8 > UDP_MAX)
            return;
        if (udp_head - udp_tail >= UDP_SLOTS) {
            stats.rx_dropped++; /* nobody is reading: drop, as a full socket buffer does */
            return;
        }
        unsigned i = udp_head++ % UDP_SLOTS;
        udp_q[i].port = rd16(p + 2), udp_q[i].sport = rd16(p);
        udp_q[i].src = src, udp_q[i].len = ulen - 8;
        memcpy(udp_q[i].data, p + 8, ulen - 8);
        udp_q[i].full = true;
    }
}

static void handle_arp(const uint8_t *f, size_t n)
{
    const uint8_t *a = f + 14;
    if (n < 42 || rd16(a) != 1 || rd16(a + 2) != 0x0800)
        return;
    uint32_t spa = rd32(a + 14), tpa = rd32(a + 24);
    bool for_us = tpa == my_ip && my_ip;
    arp_learn(spa, a + 8, for_us);
    if (rd16(a + 6) == 1 && for_us) {
        arp_send(2, a + 8, spa); /* to the asker's MAC from its question: no cache slot needed */
        stats.arp_replies++;
    }
}

void net_poll(void)
{
    if (!dev.regs)
        return;
    uint16_t posted = rxq.next_avail;
    tx_batch++;
    mb();
    while (rxq.last_used != used_idx(&rxq)) {
        volatile struct virtq_used_elem *u = used_elem(&rxq, rxq.last_used);
        uint32_t id = u->id, len = u->len;
        rxq.last_used++;
        if (id < rxq.size && len > HDR && len <= BUF) {
            const uint8_t *f = rxq.buf + (size_t)id * BUF + HDR;
            size_t n = len - HDR;
            stats.rx_frames++;
            uint16_t type = rd16(f + 12);
            if (type == 0x0806)
                handle_arp(f, n);
            else if (type == 0x0800)
                handle_ip(f, n);
        }
        rx_post((uint16_t)(id % rxq.size));
    }
    kick(&rxq, 0, posted);
    if (--tx_batch == 0)
        tx_flush();
}

/* Sleep in wfi until the device has used an RX buffer or `deadline` passes. EVENT_IDX:
 * used_event = the next used index, so the device interrupts for the next frame; the ring is
 * checked again after that (a frame that came in between would otherwise wait for the
 * timer). Without the device's interrupt: naps of 50 us, as before. */
static void wait_rx(uint64_t deadline)
{
    tx_flush(); /* a nested wait (ARP inside net_poll) must not sit on unsent frames */
    if (!irq_ok) {
        uint64_t nap = time_now() + timer_us_to_ticks(50);
        sleep_until(nap < deadline ? nap : deadline);
        return;
    }
    unsigned long sie_was = csr_read(sstatus) & SSTATUS_SIE;
    irq_disable();
    *used_event(&rxq) = rxq.last_used;
    mb();
    bool timed = deadline != NET_FOREVER;
    if (used_idx(&rxq) == rxq.last_used) {
        unsigned long ticks = timer_irq_count();
        if (timed) {
            csr_set(sie, SIE_STIE);
            sbi_set_timer(deadline);
        }
        while (used_idx(&rxq) == rxq.last_used && timer_irq_count() == ticks &&
               time_now() < deadline) {
            wfi();        /* ends on the NIC's interrupt (sie.SEIE) or the timer's */
            irq_enable(); /* take it: plic.c acks the device, the timer handler disarms */
            irq_disable();
            mb();
        }
        if (timed) {
            csr_clear(sie, SIE_STIE);
            if (timer_irq_count() == ticks)
                sbi_set_timer(UINT64_MAX); /* woken by the NIC: no stale timer left armed */
        }
    }
    if (sie_was)
        irq_enable();
}

bool net_wait_until(uint64_t deadline, bool (*done)(void *ctx), void *ctx)
{
    for (;;) {
        net_poll();
        if (done(ctx))
            return true;
        if (time_now() >= deadline)
            return false;
        wait_rx(deadline);
    }
}

bool net_wait_us(uint64_t us, bool (*done)(void *ctx), void *ctx)
{
    return net_wait_until(time_now() + timer_us_to_ticks(us), done, ctx);
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

/* ------------------------------------------------------------------ DHCP client
 *
 * ip=dhcp in bootargs: net_init() runs RFC 2131 from INIT: DISCOVER, take the first OFFER,
 * REQUEST it (with server identifier 54 and requested address 50, ciaddr 0), ACK -> bound:
 * address yiaddr, netmask from option 1 (else /24, as the static ip= default), router from
 * option 3 (used as the next hop off the subnet: net_router()), DNS from option 6 (kept for
 * net_dns()). A NAK, or no answer to 3 REQUESTs, starts over with a new DISCOVER (new xid).
 * Every message has the broadcast flag set, client identifier 61 = 01 + MAC and, with bootargs
 * hostname=NAME, host name option 12; it is sent from 0.0.0.0:68 to 255.255.255.255:67 and
 * padded to the 300-byte BOOTP minimum.
 * Retransmission (one timer for DISCOVER and REQUEST): 1 s, then doubling up to 16 s, each
 * randomized by +-1/8 (RFC 2131 4.1 says 4 s doubling to 64 s, +-1 s: shorter here, a VM's
 * network is fast and its boot must be quick). Overall limit: bootargs dhcp.timeout=<seconds>
 * (default 10). Not done: renewal (the bundled guests live shorter than a lease), the ARP
 * probe of the offered address (DHCPDECLINE), option overload (52).
 *
 * Console, one line each, stable for tests and scripts:
 *   dhcp: eth0 bound 10.0.2.15/24 router 10.0.2.2 lease 86400 s in 12 ms
 *       ("router none" without option 3; lease: option 51 in seconds, 4294967295 is
 *       infinite, 0 if absent; "in": from the first DISCOVER to the ACK)
 *   dhcp: eth0 no lease after 10 s (4 DISCOVERs, 0 OFFERs, 0 NAKs)
 *       and net_init() returns false: the guest exits with "system failure".
 */

#define DHCP_DISCOVER 1
#define DHCP_OFFER 2
#define DHCP_REQUEST 3
#define DHCP_ACK 5
#define DHCP_NAK 6
#define DHCP_COOKIE 0x63825363u
#define BOOTP_MIN 300 /* RFC 1542: relays may drop shorter BOOTP messages */

struct dhcp_reply {
    uint8_t type;
    uint32_t yiaddr, server, mask, router, dns, lease;
};

static uint64_t rng_state;

static uint32_t rng(void)
{
    /* xorshift64: good enough for transaction ids and timer jitter */
    uint64_t x = rng_state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    rng_state = x;
    return (uint32_t)(x >> 16);
}

static char dhcp_host[64]; /* bootargs hostname=, sent as option 12 */

static size_t dhcp_build(uint8_t *m, uint8_t type, uint32_t xid, uint16_t secs, uint32_t want,
                         uint32_t server)
{
    memset(m, 0, BOOTP_MIN);
    m[0] = 1, m[1] = 1, m[2] = 6; /* BOOTREQUEST, Ethernet, 6-byte address */
    wr32(m + 4, xid);
    wr16(m + 8, secs);
    wr16(m + 10, 0x8000); /* broadcast flag: answer to 255.255.255.255 */
    memcpy(m + 28, mac, 6);
    uint8_t *o = m + 236;
    wr32(o, DHCP_COOKIE), o += 4;
    *o++ = 53, *o++ = 1, *o++ = type;
    *o++ = 61, *o++ = 7, *o++ = 1;
    memcpy(o, mac, 6), o += 6;
    if (want)
        *o++ = 50, *o++ = 4, wr32(o, want), o += 4;
    if (server)
        *o++ = 54, *o++ = 4, wr32(o, server), o += 4;
    size_t hlen = strlen(dhcp_host);
    if (hlen) {
        *o++ = 12, *o++ = (uint8_t)hlen;
        memcpy(o, dhcp_host, hlen), o += hlen;
    }
    *o++ = 55, *o++ = 4, *o++ = 1, *o++ = 3, *o++ = 6, *o++ = 51; /* mask router dns lease */
    *o++ = 255;
    size_t n = (size_t)(o - m);
    return n < BOOTP_MIN ? BOOTP_MIN : n;
}

/* A BOOTREPLY for us (xid, chaddr) with a DHCP message type: its fields in r. */
static bool dhcp_parse(const uint8_t *m, size_t n, uint32_t xid, struct dhcp_reply *r)
{
    if (n < 240 || m[0] != 2 || m[1] != 1 || m[2] != 6 || rd32(m + 4) != xid ||
        memcmp(m + 28, mac, 6) != 0 || rd32(m + 236) != DHCP_COOKIE)
        return false;
    memset(r, 0, sizeof *r);
    r->yiaddr = rd32(m + 16);
    for (size_t i = 240; i < n;) {
        uint8_t code = m[i++];
        if (code == 0)
            continue;
        if (code == 255 || i >= n)
            break;
        size_t len = m[i++];
        if (i + len > n)
            break;
        const uint8_t *v = m + i;
        i += len;
        if (code == 53 && len >= 1)
            r->type = v[0];
        else if (len >= 4 && code == 54)
            r->server = rd32(v);
        else if (len >= 4 && code == 1)
            r->mask = rd32(v);
        else if (len >= 4 && code == 3)
            r->router = rd32(v); /* the first one */
        else if (len >= 4 && code == 6)
            r->dns = rd32(v);
        else if (len >= 4 && code == 51)
            r->lease = rd32(v);
    }
    return r->type != 0;
}

static unsigned mask_prefix(uint32_t m)
{
    unsigned n = 0;
    while (n < 32 && (m & (0x80000000u >> n)))
        n++;
    return n;
}

static bool dhcp_reply_ready(void *ctx)
{
    UNUSED(ctx);
    return net_udp_ready(DHCP_CLIENT);
}

static bool dhcp_run(void)
{
    unsigned long timeout_s = bootarg_ulong("dhcp.timeout", 10);
    uint64_t t0 = time_now(), deadline = t0 + timer_ms_to_ticks(timeout_s * 1000);
    rng_state = t0 ^ ((uint64_t)rd32(mac) << 16 | rd16(mac + 4)) ^ 0x9e3779b97f4a7c15ull;
    static uint8_t msg[BOOTP_MIN + 128], in[1500];
    bootarg_str("hostname", dhcp_host, sizeof dhcp_host, "");
    bool requesting = false;
    uint32_t xid = rng(), offered = 0, server = 0;
    unsigned tries = 0, discovers = 0, offers = 0, naks = 0;
    dhcp_listening = true;
    for (;;) {
        uint16_t secs = (uint16_t)(timer_ticks_to_us(time_now() - t0) / 1000000);
        size_t n = requesting ? dhcp_build(msg, DHCP_REQUEST, xid, secs, offered, server)
                              : dhcp_build(msg, DHCP_DISCOVER, xid, secs, 0, 0);
        net_udp_send(0xffffffffu, DHCP_CLIENT, DHCP_SERVER, msg, n);
        discovers += !requesting;
        uint64_t rto = 1000ull << (tries < 4 ? tries : 4); /* ms */
        rto = rto - rto / 8 + rng() % (rto / 4 + 1);
        uint64_t until = time_now() + timer_ms_to_ticks(rto);
        if (until > deadline)
            until = deadline;
        bool moved = false; /* an OFFER or a NAK: send the next message now */
        while (!moved && time_now() < until) {
            uint32_t src;
            size_t len;
            while (!moved && (len = net_udp_recv(DHCP_CLIENT, in, sizeof in, &src, NULL)) != 0) {
                struct dhcp_reply r;
                if (!dhcp_parse(in, len, xid, &r))
                    continue;
                if (!requesting && r.type == DHCP_OFFER && r.yiaddr) {
                    offers++;
                    offered = r.yiaddr, server = r.server ? r.server : src;
                    requesting = true, tries = 0, moved = true;
                } else if (requesting && r.server && r.server != server) {
                    continue; /* another server's answer to our broadcast REQUEST */
                } else if (requesting && r.type == DHCP_NAK) {
                    naks++;
                    requesting = false, xid = rng(), tries = 0, moved = true;
                } else if (requesting && r.type == DHCP_ACK && r.yiaddr) {
                    dhcp_listening = false;
                    while (net_udp_recv(DHCP_CLIENT, in, sizeof in, NULL, NULL) != 0)
                        ; /* what else came for port 68 would hold a queue slot for good */
                    my_ip = r.yiaddr;
                    my_mask = r.mask ? r.mask : 0xffffff00u;
                    my_router = r.router, my_dns = r.dns;
                    char a[16], g[16];
                    net_format_ip(my_ip, a);
                    net_format_ip(my_router, g);
                    printf("dhcp: eth0 bound %s/%u router %s lease %u s in %lu ms\n", a,
                           mask_prefix(my_mask), my_router ? g : "none", r.lease,
                           (unsigned long)(timer_ticks_to_us(time_now() - t0) / 1000));
                    return true;
                }
            }
            if (!moved)
                net_wait_until(until, dhcp_reply_ready, NULL);
        }
        if (!moved && time_now() >= deadline) {
            dhcp_listening = false;
            printf("dhcp: eth0 no lease after %lu s (%u DISCOVERs, %u OFFERs, %u NAKs)\n",
                   timeout_s, discovers, offers, naks);
            return false;
        }
        if (!moved && ++tries >= 3 && requesting)
            requesting = false, xid = rng(), tries = 0; /* the REQUEST went unanswered */
    }
}
