/* exits: a benchmark guest. Repeats one kind of exit to the hypervisor n times, so the host
 * can time it against an empty loop ("none") and a raw-Unicorn reference.
 *
 * bootargs: kind=none|sbi|mmio|rdtime|trap|timer  n=<count> (default 100000)
 * Output: "exits: kind=<k> n=<n>" then "exits: done" (no prints inside the timed loop).
 */
#include "rt.h"

#define UART_LSR ((volatile uint8_t *)0x10000005UL)

static volatile unsigned long timer_hits, target;

static void skip_illegal(struct trap_frame *tf) { tf->sepc += 4; }

static void on_timer(struct trap_frame *tf)
{
    (void)tf;
    /* Re-arm at once (already due): the next interrupt follows immediately. */
    if (++timer_hits < target)
        sbi_set_timer(0);
    else
        sbi_set_timer(UINT64_MAX);
}

int main(unsigned long hartid, const void *fdt)
{
    (void)hartid;
    (void)fdt;
    char kind[16];
    bootarg_str("kind", kind, sizeof kind, "none");
    unsigned long n = bootarg_ulong("n", 100000);
    printf("exits: kind=%s n=%lu\n", kind, n);
    volatile unsigned long sink = 0;
    if (!strcmp(kind, "none")) {
        for (unsigned long i = 0; i < n; i++)
            sink += i;
    } else if (!strcmp(kind, "sbi")) {
        for (unsigned long i = 0; i < n; i++)
            sink += (unsigned long)sbi_get_spec_version().value;
    } else if (!strcmp(kind, "mmio")) {
        for (unsigned long i = 0; i < n; i++)
            sink += *UART_LSR;
    } else if (!strcmp(kind, "rdtime")) {
        for (unsigned long i = 0; i < n; i++)
            sink += time_now();
    } else if (!strcmp(kind, "trap")) {
        trap_set_exception_handler(2, skip_illegal);
        for (unsigned long i = 0; i < n; i++) {
            __asm__ volatile(".word 0xffffffff"); /* illegal: forwarded to our stvec */
            sink += i;
        }
    } else if (!strcmp(kind, "timer")) {
        target = n;
        trap_set_interrupt_handler(5, on_timer);
        csr_set(sie, SIE_STIE);
        irq_enable();
        sbi_set_timer(0);
        while (timer_hits < n)
            __asm__ volatile("wfi");
        irq_disable();
    } else {
        printf("exits: unknown kind '%s'\n", kind);
        return 1;
    }
    printf("exits: done\n");
    return 0;
}
