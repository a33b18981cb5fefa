/* DHCP client (RFC 2131, INIT state only): for ip=dhcp on the kernel command line (init.c ->
 * net.c) and the `dhcp IFACE` applet.
 *
 * DISCOVER, take the first OFFER, REQUEST it (server identifier 54, requested address 50,
 * ciaddr 0), ACK -> the interface gets the address and netmask (option 1, else /24 as ip=
 * without a prefix), a default route via the router (option 3, the first one), and
 * /etc/resolv.conf if the server names DNS servers (option 6; option 15 as "search"). A NAK,
 * or no answer to 3 REQUESTs, starts over with a new DISCOVER (new xid). Every message has the
 * broadcast flag set, client identifier 61 = 01 + MAC and, when the guest was given a host
 * name (hostname= or ip='s HOST field; not init's default "hv"), host name option 12; it goes
 * from 0.0.0.0:68 to 255.255.255.255:67, padded to the 300-byte BOOTP minimum.
 * Retransmission: 1 s, then doubling up to 16 s, each randomized by +-1/8 (RFC 2131 4.1 says
 * 4 s doubling to 64 s, +-1 s: shorter here, a VM's network is fast and its boot must be
 * quick); overall limit 10 s, or dhcp.timeout=SECONDS on the command line (dhcp -t SEC).
 * Not done: renewal (no daemon: the lease is printed, a guest lives shorter), the ARP probe of
 * the offered address (DHCPDECLINE), option overload (52). The firmware guests' runtime
 * (hv/guests/runtime/net.c) has the same client, timers and console lines.
 *
 * The socket: AF_PACKET (SOCK_DGRAM, ETH_P_IP) bound to the interface, with our own IPv4 and
 * UDP headers, rather than a UDP socket with SO_BINDTODEVICE + SO_BROADCAST on 0.0.0.0:68:
 * a UDP socket only gets what the IP stack accepts, and before the interface has an address
 * a server that unicasts the OFFER/ACK to yiaddr (many do, whatever the broadcast flag says,
 * and RFC 2131 allows it to the chaddr's MAC) is dropped as "not for this host"; the packet
 * socket sees every frame on the link, whatever its IP destination. A classic BPF filter keeps
 * only UDP to port 68; the UDP checksum is checked unless the kernel says it is not filled in
 * yet (PACKET_AUXDATA TP_STATUS_CSUMNOTREADY: virtio-net's checksum offload).
 *
 * Console, one line each, stable for tests and scripts:
 *   dhcp: eth0 bound 10.0.2.15/24 router 10.0.2.2 lease 86400 s in 12 ms
 *       ("router none" without option 3; lease: option 51 in seconds, 4294967295 is
 *       infinite, 0 if absent; "in": from the first DISCOVER to the ACK)
 *   dhcp: eth0 no lease after 10 s (4 DISCOVERs, 0 OFFERs, 0 NAKs)
 */
#include "hv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004 /* Linux 5.6: never blocks, even before the pool is ready */
#endif

#define DHCP_SERVER 67
#define DHCP_CLIENT 68
#define DHCP_DISCOVER 1
#define DHCP_OFFER 2
#define DHCP_REQUEST 3
#define DHCP_ACK 5
#define DHCP_NAK 6
#define DHCP_COOKIE 0x63825363u
#define BOOTP_MIN 300

struct dhcp_reply {
    uint8_t type;
    uint32_t yiaddr, server, mask, router, lease; /* host order */
    uint32_t dns[3];
    int ndns;
    char domain[128];
};

static uint64_t rng_state;

static uint32_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    rng_state = x;
    return (uint32_t)(x >> 16);
}

static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
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

/* The DHCP message at m (BOOTREQUEST); returns its length. */
static size_t dhcp_build(uint8_t *m, const uint8_t mac[6], const char *host, uint8_t type,
                         uint32_t xid, uint16_t secs, uint32_t want, uint32_t server)
{
    memset(m, 0, BOOTP_MIN);
    m[0] = 1, m[1] = 1, m[2] = 6;
    wr32(m + 4, xid);
    wr16(m + 8, secs);
    wr16(m + 10, 0x8000); /* broadcast flag */
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
    size_t hlen = strlen(host);
    if (hlen && hlen <= 63) {
        *o++ = 12, *o++ = (uint8_t)hlen;
        memcpy(o, host, hlen), o += hlen;
    }
    *o++ = 55, *o++ = 5, *o++ = 1, *o++ = 3, *o++ = 6, *o++ = 15, *o++ = 51;
    *o++ = 255;
    size_t n = (size_t)(o - m);
    return n < BOOTP_MIN ? BOOTP_MIN : n;
}

/* IPv4 + UDP headers in front of the len bytes at pkt + 28: 0.0.0.0:68 -> 255.255.255.255:67. */
static size_t udp_wrap(uint8_t *pkt, size_t len)
{
    uint8_t *ip = pkt, *udp = pkt + 20;
    size_t ulen = 8 + len;
    memset(pkt, 0, 28);
    ip[0] = 0x45;
    wr16(ip + 2, (uint16_t)(20 + ulen));
    wr16(ip + 4, (uint16_t)rng());
    ip[8] = 64, ip[9] = IPPROTO_UDP;
    wr32(ip + 16, 0xffffffffu);
    wr16(ip + 10, csum(ip, 20, 0));
    wr16(udp, DHCP_CLIENT), wr16(udp + 2, DHCP_SERVER), wr16(udp + 4, (uint16_t)ulen);
    /* pseudo-header: src 0, dst 255.255.255.255, proto, length */
    uint32_t sum = 0xffff + 0xffff + IPPROTO_UDP + (uint32_t)ulen;
    uint16_t c = csum(udp, ulen, sum);
    wr16(udp + 6, c ? c : 0xffff);
    return 20 + ulen;
}

/* The DHCP payload of an IPv4/UDP packet to port 68 (NULL if it is not one, or damaged). */
static const uint8_t *udp_unwrap(const uint8_t *pkt, size_t n, int csum_ready, size_t *len,
                                 uint32_t *src)
{
    if (n < 28 || (pkt[0] >> 4) != 4 || pkt[9] != IPPROTO_UDP)
        return NULL;
    size_t ihl = (size_t)(pkt[0] & 15) * 4, tot = rd16(pkt + 2);
    if (ihl < 20 || tot > n || tot < ihl + 8 || (rd16(pkt + 6) & 0x3fff) != 0 ||
        csum(pkt, ihl, 0) != 0)
        return NULL;
    const uint8_t *udp = pkt + ihl;
    size_t ulen = rd16(udp + 4);
    if (rd16(udp + 2) != DHCP_CLIENT || ulen < 8 || ihl + ulen > tot)
        return NULL;
    if (csum_ready && rd16(udp + 6) != 0) {
        uint32_t sum = rd16(pkt + 12) + rd16(pkt + 14) + rd16(pkt + 16) + rd16(pkt + 18) +
                       IPPROTO_UDP + (uint32_t)ulen;
        if (csum(udp, ulen, sum) != 0)
            return NULL;
    }
    *len = ulen - 8;
    *src = rd32(pkt + 12);
    return udp + 8;
}

static int dhcp_parse(const uint8_t *m, size_t n, uint32_t xid, const uint8_t mac[6],
                      struct dhcp_reply *r)
{
    if (n < 240 || m[0] != 2 || m[1] != 1 || m[2] != 6 || rd32(m + 4) != xid ||
        memcmp(m + 28, mac, 6) != 0 || rd32(m + 236) != DHCP_COOKIE)
        return 0;
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
        else if (code == 54 && len >= 4)
            r->server = rd32(v);
        else if (code == 1 && len >= 4)
            r->mask = rd32(v);
        else if (code == 3 && len >= 4)
            r->router = rd32(v);
        else if (code == 51 && len >= 4)
            r->lease = rd32(v);
        else if (code == 6)
            for (size_t k = 0; k + 4 <= len && r->ndns < 3; k += 4)
                r->dns[r->ndns++] = rd32(v + k);
        else if (code == 15 && len < sizeof r->domain) {
            memcpy(r->domain, v, len);
            r->domain[len] = 0;
            r->domain[strcspn(r->domain, "\n\r")] = 0;
        }
    }
    return r->type != 0;
}

static int open_socket(int ifindex)
{
    int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_IP));
    if (fd < 0)
        return -1;
    /* IPv4, not a fragment, UDP, destination port 68 (offsets from the IP header) */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 6),
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x3fff, 4, 0),
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, DHCP_CLIENT, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog); /* an optimization */
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP),
                              .sll_ifindex = ifindex};
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One received packet not sent by us: its length, 0 on timeout (or a packet to skip). */
static ssize_t recv_packet(int fd, uint8_t *buf, size_t cap, uint64_t deadline, int *csum_ready)
{
    uint64_t now = now_ns();
    if (now >= deadline)
        return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ms = (int)((deadline - now + 999999) / 1000000);
    if (poll(&p, 1, ms) <= 0)
        return 0;
    struct sockaddr_ll from;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct tpacket_auxdata))];
    } control;
    struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                         .msg_iovlen = 1, .msg_control = &control,
                         .msg_controllen = sizeof control};
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING)
        return 0;
    *csum_ready = 1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg); /* the only one: PACKET_AUXDATA is all we asked */
    if (c && c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA) {
        struct tpacket_auxdata aux;
        memcpy(&aux, CMSG_DATA(c), sizeof aux);
        if (aux.tp_status & TP_STATUS_CSUMNOTREADY)
            *csum_ready = 0;
    }
    return n;
}

static void ip_text(uint32_t host_order, char *out)
{
    struct in_addr a = {htonl(host_order)};
    inet_ntop(AF_INET, &a, out, INET_ADDRSTRLEN);
}

static void write_resolv_conf(const char *ifname, const struct dhcp_reply *r)
{
    FILE *f = fopen("/etc/resolv.conf", "w");
    if (!f) {
        fprintf(stderr, "dhcp: /etc/resolv.conf: %s\n", strerror(errno));
        return;
    }
    fprintf(f, "# from DHCP on %s\n", ifname);
    if (r->domain[0])
        fprintf(f, "search %s\n", r->domain);
    for (int i = 0; i < r->ndns; i++) {
        char a[INET_ADDRSTRLEN];
        ip_text(r->dns[i], a);
        fprintf(f, "nameserver %s\n", a);
    }
    fclose(f);
}

static int apply_lease(const char *ifname, const struct dhcp_reply *r, uint64_t t0)
{
    uint32_t mask = r->mask ? r->mask : 0xffffff00u;
    int prefix = 0;
    while (prefix < 32 && (mask & (0x80000000u >> prefix)))
        prefix++;
    struct in_addr addr = {htonl(r->yiaddr)};
    if (net_if_set_addr(ifname, addr, prefix) < 0 || net_if_up(ifname, 1) < 0) {
        fprintf(stderr, "dhcp: %s: setting the address: %s\n", ifname, strerror(errno));
        return -1;
    }
    if (r->router) {
        struct in_addr gw = {htonl(r->router)};
        if (net_add_default_route(gw, ifname) < 0 && errno != EEXIST)
            fprintf(stderr, "dhcp: %s: default route via %s: %s\n", ifname, inet_ntoa(gw),
                    strerror(errno));
    }
    if (r->ndns)
        write_resolv_conf(ifname, r);
    char a[INET_ADDRSTRLEN], g[INET_ADDRSTRLEN];
    ip_text(r->yiaddr, a);
    ip_text(r->router, g);
    printf("dhcp: %s bound %s/%d router %s lease %u s in %llu ms\n", ifname, a, prefix,
           r->router ? g : "none", (unsigned)r->lease,
           (unsigned long long)((now_ns() - t0) / 1000000));
    fflush(stdout);
    return 0;
}

int net_dhcp(const char *ifname, double timeout_s)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
    int ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int ifindex = (int)if_nametoindex(ifname);
    if (ctl < 0 || !ifindex || ioctl(ctl, SIOCGIFHWADDR, &ifr) < 0) {
        fprintf(stderr, "dhcp: %s: %s\n", ifname, strerror(errno));
        if (ctl >= 0)
            close(ctl);
        return -1;
    }
    close(ctl);
    uint8_t mac[6];
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    if (net_if_up(ifname, 1) < 0) {
        fprintf(stderr, "dhcp: %s: up: %s\n", ifname, strerror(errno));
        return -1;
    }
    net_wait_link_up(ifname, 3000000000ull); /* a frame sent before the carrier is dropped */
    int fd = open_socket(ifindex);
    if (fd < 0) {
        fprintf(stderr, "dhcp: %s: packet socket: %s\n", ifname, strerror(errno));
        return -1;
    }
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(timeout_s * 1e9);
    if (getrandom(&rng_state, sizeof rng_state, GRND_NONBLOCK | GRND_INSECURE) < 0)
        rng_state = 0;
    rng_state ^= t0 ^ ((uint64_t)rd32(mac) << 16 | rd16(mac + 4)) ^ 0x9e3779b97f4a7c15ull;
    if (!rng_state)
        rng_state = 1;
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP),
                             .sll_ifindex = ifindex, .sll_halen = 6};
    memset(to.sll_addr, 0xff, 6);
    static uint8_t out[28 + BOOTP_MIN + 128], in[4096];
    char host[65] = "";
    if (gethostname(host, sizeof host) < 0 || !strcmp(host, "hv"))
        host[0] = 0; /* "hv" is init's default for every guest: not a name to register */
    int requesting = 0;
    uint32_t xid = rng(), offered = 0, server = 0;
    unsigned tries = 0, discovers = 0, offers = 0, naks = 0;
    for (;;) {
        uint16_t secs = (uint16_t)((now_ns() - t0) / 1000000000ull);
        size_t n = requesting
                       ? dhcp_build(out + 28, mac, host, DHCP_REQUEST, xid, secs, offered, server)
                       : dhcp_build(out + 28, mac, host, DHCP_DISCOVER, xid, secs, 0, 0);
        n = udp_wrap(out, n);
        if (sendto(fd, out, n, 0, (struct sockaddr *)&to, sizeof to) < 0)
            fprintf(stderr, "dhcp: %s: send: %s\n", ifname, strerror(errno));
        discovers += !requesting;
        uint64_t rto = 1000ull << (tries < 4 ? tries : 4); /* ms */
        rto = rto - rto / 8 + rng() % (rto / 4 + 1);
        uint64_t until = now_ns() + rto * 1000000ull;
        if (until > deadline)
            until = deadline;
        int moved = 0; /* an OFFER or a NAK: send the next message at once */
        while (!moved && now_ns() < until) {
            int ready = 1;
            ssize_t got = recv_packet(fd, in, sizeof in, until, &ready);
            size_t len;
            uint32_t src;
            const uint8_t *m = got > 0 ? udp_unwrap(in, (size_t)got, ready, &len, &src) : NULL;
            struct dhcp_reply r;
            if (!m || !dhcp_parse(m, len, xid, mac, &r))
                continue;
            if (!requesting && r.type == DHCP_OFFER && r.yiaddr) {
                offers++;
                offered = r.yiaddr, server = r.server ? r.server : src;
                requesting = 1, tries = 0, moved = 1;
            } else if (requesting && r.server && r.server != server) {
                continue; /* another server saw our broadcast REQUEST */
            } else if (requesting && r.type == DHCP_NAK) {
                naks++;
                requesting = 0, xid = rng(), tries = 0, moved = 1;
            } else if (requesting && r.type == DHCP_ACK && r.yiaddr) {
                close(fd);
                return apply_lease(ifname, &r, t0);
            }
        }
        if (!moved && now_ns() >= deadline) {
            close(fd);
            printf("dhcp: %s no lease after %g s (%u DISCOVERs, %u OFFERs, %u NAKs)\n", ifname,
                   timeout_s, discovers, offers, naks);
            fflush(stdout);
            return -1;
        }
        if (!moved && ++tries >= 3 && requesting)
            requesting = 0, xid = rng(), tries = 0;
    }
}

int ap_dhcp(int argc, char **argv)
{
    double timeout_s = 10;
    int i = 1;
    if (argc > 2 && !strcmp(argv[1], "-t")) {
        char *end;
        timeout_s = strtod(argv[2], &end);
        if (*end || timeout_s <= 0)
            return usage_error("dhcp");
        i = 3;
    }
    if (i != argc - 1)
        return usage_error("dhcp");
    return net_dhcp(argv[i], timeout_s) == 0 ? 0 : 1;
}
