/* The bundled guests' network stack: see net.h. One virtio-net device (modern virtio-mmio,
 * version 2), split queues of QSIZE descriptors in static memory, receive buffers posted once
 * and recycled, one transmit buffer per descriptor. No offloads: checksums are computed here. */
#include "rt.h"
#include "net.h"
#include "virtio.h"

#define QSIZE 16
#define BUF 2048
#define HDR 12 /* virtio_net_hdr with num_buffers (VERSION_1) */

#define F_MAC (1u << 5)

struct avail {
    uint16_t flags, idx, ring[QSIZE], used_event;
};
struct used {
    uint16_t flags, idx;
    struct virtq_used_elem ring[QSIZE];
    uint16_t avail_event;
};
struct queue {
    struct virtq_desc desc[QSIZE] __attribute__((aligned(16)));
    struct avail avail __attribute__((aligned(4)));
    struct used used __attribute__((aligned(4)));
    uint16_t last_used, next_avail;
    uint8_t buf[QSIZE][BUF];
};

static struct queue rxq __attribute__((aligned(4096)));
static struct queue txq __attribute__((aligned(4096)));
static struct virtio_dev dev;
static uint8_t mac[6];
static uint32_t my_ip, my_mask;
static uint32_t my_router, my_dns; /* from DHCP, or the static long form's gateway (0: none) */
static bool dhcp_listening;        /* while DHCP runs: take UDP to port 68 whatever its dst */
static const uint8_t bcast_mac[6] = {255, 255, 255, 255, 255, 255};
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
    if (!virtio_negotiate(&dev, F_MAC)) {
        puts("net: the device refused our features");
        return false;
    }
    if (!virtio_setup_queue(&dev, 0, QSIZE, rxq.desc, &rxq.avail, &rxq.used) ||
        !virtio_setup_queue(&dev, 1, QSIZE, txq.desc, &txq.avail, &txq.used)) {
        puts("net: queues too small");
        return false;
    }
    volatile uint8_t *cfg = virtio_config(&dev);
    for (int i = 0; i < 6; i++)
        mac[i] = cfg[i];
    for (uint16_t i = 0; i < QSIZE; i++)
        rx_post(i);
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
    virtio_w(&dev, VIRTIO_R_QUEUE_NOTIFY, 1);
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

/* Build an IPv4 packet to dst with `plen` bytes of payload already at f+14+20; resolves ARP
 * (waiting up to 200 ms for a reply). 255.255.255.255 goes to the broadcast MAC; an address
 * off our subnet goes through the router when DHCP gave one. */
static bool ip_send(uint8_t *f, uint32_t dst, uint8_t proto, size_t plen)
{
    uint32_t hop = my_router && ((dst ^ my_ip) & my_mask) ? my_router : dst;
    const uint8_t *dmac = dst == 0xffffffffu ? bcast_mac : arp_lookup(hop);
    if (!dmac) {
        for (int tries = 0; tries < 4 && !dmac; tries++) {
            /* the frame being built lives in a TX buffer: copy it aside while we ask */
            static uint8_t saved[1514];
            memcpy(saved, f, 34 + plen);
            arp_send(1, NULL, hop);
            uint64_t until = time_now() + timer_ms_to_ticks(50);
            while (!(dmac = arp_lookup(hop)) && time_now() < until) {
                net_poll();
                if (!arp_lookup(hop))
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
    const uint8_t *p = ip + ihl;
    size_t plen = tot - ihl;
    /* a DHCP server's answer comes broadcast, or to the address it offers (not ours yet) */
    bool dhcp_reply = dhcp_listening && ip[9] == 17 && plen >= 8 && rd16(p + 2) == DHCP_CLIENT;
    if (dst != my_ip && !dhcp_reply)
        return;
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
    if (rd16(a + 6) == 1 && tpa == my_ip && my_ip) {
        arp_send(2, a + 8, spa);
        stats.arp_replies++;
    }
}

void net_poll(void)
{
    if (!dev.regs)
        return;
    mb();
    while (rxq.last_used != rxq.used.idx) {
        struct virtq_used_elem e = rxq.used.ring[rxq.last_used % QSIZE];
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
        virtio_w(&dev, VIRTIO_R_QUEUE_NOTIFY, 0);
    }
    virtio_ack_interrupt(&dev);
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
                sleep_ticks(timer_us_to_ticks(100));
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
