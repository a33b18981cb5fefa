/* sleep: sleeps `count` times for `ms` milliseconds on the SBI timer, waiting in wfi, and prints
 * the elapsed time of each sleep measured with rdtime.
 *
 * bootargs: ms=<milliseconds> (default 100), count=<sleeps> (default 5).
 * Exits non-zero if a sleep ended early.
 */
#include "rt.h"

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    unsigned long ms = bootarg_ulong("ms", 100);
    unsigned long count = bootarg_ulong("count", 5);
    uint64_t want = timer_ms_to_ticks(ms);
    int early = 0;

    printf("sleep: %lu x %lu ms (timebase %lu Hz)\n", count, ms, (unsigned long)timer_hz());
    uint64_t start = time_now();
    for (unsigned long i = 1; i <= count; i++) {
        uint64_t t0 = time_now();
        sleep_ticks(want);
        uint64_t dt = time_now() - t0;
        unsigned long us = (unsigned long)timer_ticks_to_us(dt);
        printf("sleep %lu: %lu.%03lu ms\n", i, us / 1000, us % 1000);
        if (dt < want)
            early++;
    }
    unsigned long total = (unsigned long)timer_ticks_to_us(time_now() - start);
    printf("sleep: done in %lu.%03lu ms, %lu timer interrupts\n", total / 1000, total % 1000,
           timer_irq_count());
    if (early)
        printf("sleep: %d sleeps ended early\n", early);
    return early ? 1 : 0;
}
