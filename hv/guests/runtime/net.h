/* A small network stack for the bundled guests: a virtio-net driver (virtio-mmio, found in the
 * device tree) and Ethernet, ARP (with a cache), IPv4, ICMP echo (both ways) and UDP.
 * Configured from bootargs "ip=A.B.C.D/N" (as the Linux guests' init reads it), or by DHCP
 * with "ip=dhcp" (net.c's DHCP section: the messages, timers and the "dhcp: eth0 bound ..."
 * console line; bootargs dhcp.timeout=<seconds>, default 10).
 *
 * Receive: net_poll() handles what has arrived (ARP and pings are answered there);
 * net_wait_until() handles frames until something is received for the caller or the time is
 * up, sleeping in wfi in between until the NIC's interrupt (EVENT_IDX: the device interrupts
 * for the next received frame only) or the timer wakes it: an idle guest costs the host
 * nothing between frames. Rings: 256 RX buffers (as Linux), 256 queued UDP datagrams (more are
 * dropped and counted in rx_dropped); ARP cache of 64 entries, least recently used evicted. */
#ifndef RT_NET_H
#define RT_NET_H

#include "types.h"

struct net_stats {
    unsigned long rx_frames, tx_frames, rx_dropped, arp_replies, icmp_echo_replied;
};

/* Find and start the first virtio-net device and read ip= (with ip=dhcp: get a lease first);
 * false (with a message) if there is no device, no usable ip=, or no DHCP lease in time. */
bool net_init(void);
uint32_t net_ip(void);           /* our address, host order */
uint32_t net_netmask(void);      /* host order */
uint32_t net_router(void);       /* DHCP option 3 (the next hop off the subnet); 0: none */
uint32_t net_dns(void);          /* DHCP option 6 (the first server); 0: none */
const uint8_t *net_mac(void);
bool net_parse_ip(const char *s, size_t len, uint32_t *ip, unsigned *prefix);
void net_format_ip(uint32_t ip, char *buf); /* "a.b.c.d", buf >= 16 bytes */

/* Handle everything received so far (answers ARP and pings). */
void net_poll(void);

/* ICMP echo: send one request; the reply is reported by net_ping_reply(). */
bool net_ping_send(uint32_t dst, uint16_t id, uint16_t seq, size_t payload);
/* true once the reply for (id, seq) arrived since the request was sent */
bool net_ping_reply(uint16_t id, uint16_t seq);

/* UDP: send a datagram; receive the next datagram for `port` (its length, 0 if none; in the
 * order they came); is one queued for `port`? */
bool net_udp_send(uint32_t dst, uint16_t sport, uint16_t dport, const void *data, size_t len);
size_t net_udp_recv(uint16_t port, void *buf, size_t cap, uint32_t *src, uint16_t *sport);
bool net_udp_ready(uint16_t port);

/* Handle frames, sleeping in between, until `done(ctx)` is true or time >= deadline
 * (NET_FOREVER: no deadline); returns done's last answer. net_wait_us: for `us` from now. */
#define NET_FOREVER UINT64_MAX
bool net_wait_until(uint64_t deadline, bool (*done)(void *ctx), void *ctx);
bool net_wait_us(uint64_t us, bool (*done)(void *ctx), void *ctx);

const struct net_stats *net_stats(void);

/* An address from bootargs ("peer=10.0.0.2"); false (with a message) if absent or bad. */
bool net_bootarg_ip(const char *key, uint32_t *ip);
/* A net_wait_* condition that is never met: just answer ARP and pings for a while. */
bool net_never(void *ctx);

#endif
