/* ping: pings a peer over the network and prints a summary.
 *
 * bootargs: ip=A.B.C.D/N or ip=dhcp (ours), peer=A.B.C.D, count=<n> (default 5),
 * interval=<ms> (default 100), size=<payload bytes> (default 56).
 * Output: "ping: 10.0.0.2: 5 sent, 5 received, rtt min/avg/max = 210/350/900 us", then
 * shuts down: exit 0 if every request was answered.
 */
#include "rt.h"
#include "net.h"

struct want {
    uint16_t id, seq;
};

static bool replied(void *ctx)
{
    struct want *w = ctx;
    return net_ping_reply(w->id, w->seq);
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
    unsigned long count = bootarg_ulong("count", 5), interval = bootarg_ulong("interval", 100);
    unsigned long size = bootarg_ulong("size", 56);
    char name[16];
    net_format_ip(peer, name);
    unsigned long got = 0, min = ~0ul, max = 0, sum = 0;
    for (unsigned long seq = 1; seq <= count; seq++) {
        struct want w = {0x4856, (uint16_t)seq};
        uint64_t t0 = time_now();
        if (net_ping_send(peer, w.id, w.seq, size) && net_wait_us(1000000, replied, &w)) {
            unsigned long us = (unsigned long)timer_ticks_to_us(time_now() - t0);
            printf("ping: reply from %s: seq=%lu time=%lu us\n", name, seq, us);
            got++, sum += us;
            min = us < min ? us : min;
            max = us > max ? us : max;
        } else {
            printf("ping: no reply from %s: seq=%lu\n", name, seq);
        }
        if (seq < count)
            net_wait_us(interval * 1000, replied, &(struct want){0, 0}); /* answer others meanwhile */
    }
    printf("ping: %s: %lu sent, %lu received, rtt min/avg/max = %lu/%lu/%lu us\n", name, count,
           got, got ? min : 0, got ? sum / got : 0, max);
    return got == count ? 0 : 1;
}
