/* dma: a host write into guest RAM (a device's DMA) that lands on a page holding code the
 * guest already ran must be what the guest runs next. Unicorn does not see host writes, so
 * hv drops the page's translations itself (hv.hw._memory); this guest checks that.
 *
 * Needs a copy device in a virtio-mmio slot (tests/test_board.py has one): bootargs
 * dma=<its base> (default slot 0, 0x10001000). Its registers, 32-bit: 0x00 SRC, 0x04 DST,
 * 0x08 LEN, 0x0c GO (writing 1 copies LEN bytes from SRC to DST, at once, by the host);
 * 0x10 is not a register (an access there is the guest's error: the device counts it).
 * bootargs rounds=<n> (default 200) repeats the rewrite with a new value each round.
 * Output: "dma: ok N rounds" or "dma: FAIL ...", then shuts down (failure exits 1).
 */
#include "rt.h"

typedef long (*fn_t)(void);

#define REG_SRC 0x00
#define REG_DST 0x04
#define REG_LEN 0x08
#define REG_GO 0x0c
#define REG_BAD 0x10

static void mmio_w32(unsigned long addr, uint32_t v)
{
    *(volatile uint32_t *)addr = v;
}

/* `li a0, value; ret` for a value in -2048..2047 */
static void emit_return(uint32_t *p, long value)
{
    p[0] = 0x00000513u | ((uint32_t)(value & 0xfff) << 20);
    p[1] = 0x00008067u;
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    unsigned long dma = bootarg_ulong("dma", 0x10001000);
    unsigned long rounds = bootarg_ulong("rounds", 200);
    uint32_t *func = alloc(4096, 4096);
    uint32_t *tmpl = alloc(4096, 4096);
    fn_t f = (fn_t)(uintptr_t)func;

    emit_return(func, 1);
    fence_i();
    long first = f(), second = f(); /* run it: now it is translated */
    if (first != 1 || second != 1) {
        printf("dma: FAIL: the first code returned %ld, %ld\n", first, second);
        return 1;
    }
    for (unsigned long i = 0; i < rounds; i++) {
        long want = (long)(i % 2000) + 2;
        emit_return(tmpl, want);
        mmio_w32(dma + REG_SRC, (uint32_t)(uintptr_t)tmpl);
        mmio_w32(dma + REG_DST, (uint32_t)(uintptr_t)func);
        mmio_w32(dma + REG_LEN, 8);
        mmio_w32(dma + REG_GO, 1); /* the host writes the new code over the old */
        fence_i();
        long got = f();
        if (got != want) {
            printf("dma: FAIL: round %lu ran stale code: got %ld, want %ld\n", i, got, want);
            return 1;
        }
    }
    mmio_w32(dma + REG_BAD, 1); /* the guest's mistake: counted by the device, and we go on */
    printf("dma: ok %lu rounds\n", rounds);
    return 0;
}
