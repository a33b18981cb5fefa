/* udpgen: a UDP load generator: sends datagrams to an echo server and counts what comes back.
 *
 * bootargs: ip=A.B.C.D/N (or ip=dhcp), peer=A.B.C.D, port=<n> (default 7), count=<n> (default
 * 1000), size=<bytes> (default 64, at least 4), window=<n> (datagrams in flight, default 8,
 * at most 64), timeout=<ms> (before a datagram is sent again, default 100, doubling per try),
 * retries=<n> (default 6).
 * Each datagram carries its number in its first 4 bytes. One that is not echoed in time is
 * sent again; after `retries` it counts as lost and its place in the window goes to the next,
 * so a lossy link slows the run down but never stalls it.
 * Output: "udpgen: 10.0.0.2:7: 1000 sent, 1000 echoed, 0 lost, 8123 datagrams/s,
 * 3 retransmitted", exit 0 if nothing was lost.
 */
#include "rt.h"
#include "net.h"

#define SPORT 40000
#define MAX_WINDOW 64

static struct {
    uint32_t seq;
    uint64_t due;
    unsigned tries;
    bool busy;
} slot[MAX_WINDOW];

static uint8_t buf[1500], in[1500];
static unsigned long size;

static void fill(uint32_t seq)
{
    buf[0] = (uint8_t)(seq >> 24), buf[1] = (uint8_t)(seq >> 16), buf[2] = (uint8_t)(seq >> 8);
    buf[3] = (uint8_t)seq;
    for (unsigned long i = 4; i < size; i++)
        buf[i] = (uint8_t)(seq + i);
}

static bool datagram(void *ctx)
{
    UNUSED(ctx);
    return net_udp_ready(SPORT);
}

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
    unsigned long count = bootarg_ulong("count", 1000);
    unsigned long window = bootarg_ulong("window", 8), retries = bootarg_ulong("retries", 6);
    uint64_t rto = timer_ms_to_ticks(bootarg_ulong("timeout", 100));
    size = bootarg_ulong("size", 64);
    size = size < 4 ? 4 : size > 1472 ? 1472 : size;
    window = window < 1 ? 1 : window > MAX_WINDOW ? MAX_WINDOW : window;
    unsigned long sent = 0, echoed = 0, lost = 0, again = 0, busy = 0;
    uint64_t t0 = time_now();
    while (sent < count || busy) {
        uint64_t now = time_now(), next = NET_FOREVER;
        for (unsigned long w = 0; w < window; w++) {
            if (!slot[w].busy && sent < count) {
                slot[w].seq = (uint32_t)sent++, slot[w].tries = 0, slot[w].busy = true;
                slot[w].due = 0, busy++;
            }
            if (!slot[w].busy || slot[w].due > now) {
                if (slot[w].busy && slot[w].due < next)
                    next = slot[w].due;
                continue;
            }
            if (slot[w].tries > retries) { /* given up on: the place goes to the next one */
                slot[w].busy = false, busy--, lost++;
                w--; /* refill this place now */
                continue;
            }
            fill(slot[w].seq);
            net_udp_send(peer, SPORT, port, buf, size); /* a failed send is retried in time */
            again += slot[w].tries > 0;
            slot[w].due = now + (rto << (slot[w].tries < 10 ? slot[w].tries : 10));
            slot[w].tries++;
            if (slot[w].due < next)
                next = slot[w].due;
        }
        size_t n;
        while ((n = net_udp_recv(SPORT, in, sizeof in, NULL, NULL)) != 0) {
            if (n != size)
                continue;
            uint32_t seq = (uint32_t)in[0] << 24 | in[1] << 16 | in[2] << 8 | in[3];
            for (unsigned long w = 0; w < window; w++)
                if (slot[w].busy && slot[w].seq == seq) {
                    fill(seq);
                    if (memcmp(in, buf, size) == 0)
                        slot[w].busy = false, busy--, echoed++;
                    break;
                } /* else: a late duplicate of one already echoed */
        }
        if (busy == window || (sent == count && busy))
            net_wait_until(next, datagram, NULL);
    }
    uint64_t us = timer_ticks_to_us(time_now() - t0);
    char name[16];
    net_format_ip(peer, name);
    printf("udpgen: %s:%u: %lu sent, %lu echoed, %lu lost, %lu datagrams/s, %lu retransmitted\n",
           name, port, sent, echoed, lost, us ? (unsigned long)(echoed * 1000000ull / us) : 0,
           again);
    return lost == 0 ? 0 : 1;
}
