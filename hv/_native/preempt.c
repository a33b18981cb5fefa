/*
 * The vCPU's preemption point: a Unicorn block hook, in C, that ends a time slice.
 *
 * Why native code: stopping Unicorn from another thread (uc_emu_stop, or its own timeout=)
 * can land inside an instruction's memory helper; the instruction is then restarted after
 * its side effect happened, so an AMO is applied twice and an MMIO write reaches the device
 * twice. Counting instructions (emu_start count=N) is exact but puts a helper call on every
 * instruction (2-7x slower). A block hook runs at the entry of every translated block,
 * before any of its instructions; stopping there is exact and costs one short call per block.
 * A Python block hook would cost a microsecond per block; this one costs nanoseconds.
 *
 * The slice ends when its budget of code bytes is spent (a deterministic proxy for
 * instructions) or when the host sets `request` (from a hook, or another thread).
 */
#include <stdint.h>

typedef int (*hv_stop_fn)(void *uc);

struct hv_slice {
    int64_t budget;            /* code bytes left in this slice */
    volatile int32_t request;  /* host asks for a stop at the next block entry */
    int32_t stopped;           /* set when this hook ended the slice */
    hv_stop_fn stop;           /* uc_emu_stop, passed in by the host */
    uint64_t executed;         /* code bytes executed, for statistics */
};

void hv_block_hook(void *uc, uint64_t address, uint32_t size, struct hv_slice *s)
{
    (void)address;
    /* Check before charging: the first block of a slice always runs, so a slice makes
     * progress whatever its budget. A stop here happens before the block's first instruction. */
    if (__builtin_expect(s->budget <= 0 || s->request, 0)) {
        s->request = 0;
        s->stopped = 1;
        s->stop(uc);
        return;
    }
    s->executed += size;
    s->budget -= (int64_t)size;
}

/*
 * Exact instruction counting, for profiling runs only (e.g. bench/boot.py): a code hook on
 * every instruction. It slows the guest several times, so it is off unless asked for.
 */
void hv_count_hook(void *uc, uint64_t address, uint32_t size, uint64_t *count)
{
    (void)uc;
    (void)address;
    (void)size;
    (*count)++;
}
