/* udpgen: a UDP load generator: sends datagrams to an echo server and counts what comes back.
 *
 * bootargs: ip=A.B.C.D/N (or ip=dhcp), peer=A.B.C.D, port=<n> (default 7), count=<n> (default
 * 1000), size=<bytes> (default 64), window=<n> (datagrams in flight, default 8).
 * Output: "udpgen: 10.0.0.2:7: 1000 sent, 1000 echoed, 0 lost, 8123 datagrams/s", exit 0 if
 * nothing was lost.
 */
#include "rt.h"
#include "net.h"

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    if (!net_init())
        return 1;
    uint32_t peer;
    if (!net_bootarg_ip("peer", &peer))
        return 1;
    uint16_t port = (uint16_t)bootarg_ulong("port", 7);
    unsigned long count = bootarg_ulong("count", 1000), size = bootarg_ulong("size", 64);
    unsigned long window = bootarg_ulong("window", 8);
    if (size > 1472)
        size = 1472;
    static uint8_t buf[1500], in[1500];
    unsigned long sent = 0, echoed = 0;
    uint64_t t0 = time_now(), idle_since = time_now();
    while (echoed < count && timer_ticks_to_us(time_now() - idle_since) < 500000) {
        while (sent < count && sent - echoed < window) {
            for (unsigned long i = 0; i < size; i++)
                buf[i] = (uint8_t)(sent + i);
            if (!net_udp_send(peer, 40000, port, buf, size))
                break;
            sent++;
        }
        size_t n;
        while ((n = net_udp_recv(40000, in, sizeof in, NULL, NULL)) != 0) {
            echoed++;
            idle_since = time_now();
        }
        if (sent - echoed >= window || sent == count)
            net_wait_us(100, net_never, NULL);
    }
    uint64_t us = timer_ticks_to_us(time_now() - t0);
    char name[16];
    net_format_ip(peer, name);
    printf("udpgen: %s:%u: %lu sent, %lu echoed, %lu lost, %lu datagrams/s\n", name, port, sent,
           echoed, sent - echoed, us ? (unsigned long)(echoed * 1000000ull / us) : 0);
    return sent == count && echoed == count ? 0 : 1;
}
