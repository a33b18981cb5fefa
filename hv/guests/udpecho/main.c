/* udpecho: a network peer: answers ARP and pings, and echoes every UDP datagram sent to its
 * port back to the sender. Runs until the host stops it (or for seconds=<n>); idle, it sleeps
 * in wfi until the NIC interrupts.
 *
 * bootargs: ip=A.B.C.D/N (or ip=dhcp), port=<n> (default 7), seconds=<n> (default: forever).
 */
#include "rt.h"
#include "net.h"

static bool datagram(void *ctx) { return net_udp_ready(*(uint16_t *)ctx); }

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    if (!net_init())
        return 1;
    uint16_t port = (uint16_t)bootarg_ulong("port", 7);
    unsigned long seconds = bootarg_ulong("seconds", 0);
    uint64_t until = seconds ? time_now() + timer_ms_to_ticks(seconds * 1000) : NET_FOREVER;
    printf("udpecho: echoing on port %u\n", port);
    static uint8_t buf[1500];
    unsigned long echoed = 0;
    while (time_now() < until) {
        uint32_t src;
        uint16_t sport;
        size_t n;
        while ((n = net_udp_recv(port, buf, sizeof buf, &src, &sport)) != 0)
            if (net_udp_send(src, port, sport, buf, n))
                echoed++;
        net_wait_until(until, datagram, &port); /* asleep until a frame or the end */
    }
    const struct net_stats *s = net_stats();
    printf("udpecho: %lu echoed, %lu pings answered, %lu frames in\n", echoed,
           s->icmp_echo_replied, s->rx_frames);
    return 0;
}
