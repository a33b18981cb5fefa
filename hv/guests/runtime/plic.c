/* PLIC routing for the runtime's drivers: see plic.h. */
#include "rt.h"
#include "plic.h"

#define PLIC_DEFAULT_BASE 0x0c000000UL
#define PLIC_SOURCES 96
#define PLIC_PRIORITY(src) (4UL * (src))
#define PLIC_ENABLE(ctx, src) (0x2000UL + 0x80UL * (ctx) + 4UL * ((src) / 32))
#define PLIC_THRESHOLD(ctx) (0x200000UL + 0x1000UL * (ctx))
#define PLIC_CLAIM(ctx) (0x200004UL + 0x1000UL * (ctx))
#define SLOTS 4

static volatile uint8_t *plic;
static unsigned long context;
static volatile unsigned long irqs;
static struct {
    uint32_t irq;
    plic_handler_fn fn;
    void *ctx;
} slot[SLOTS];

static uint32_t rd(unsigned long off) { return *(volatile uint32_t *)(plic + off); }
static void wr(unsigned long off, uint32_t v) { *(volatile uint32_t *)(plic + off) = v; }

unsigned long plic_irq_count(void) { return irqs; }

static void on_external(struct trap_frame *tf)
{
    UNUSED(tf);
    uint32_t src;
    while ((src = rd(PLIC_CLAIM(context))) != 0) {
        irqs++;
        for (unsigned i = 0; i < SLOTS; i++)
            if (slot[i].fn && slot[i].irq == src)
                slot[i].fn(slot[i].ctx);
        wr(PLIC_CLAIM(context), src);
    }
}

bool plic_attach(uint32_t irq, plic_handler_fn fn, void *ctx)
{
    if (irq == 0 || irq >= PLIC_SOURCES)
        return false;
    if (!plic) {
        uint64_t base = PLIC_DEFAULT_BASE, size;
        int node = fdt_node_by_compatible("riscv,plic0", -1);
        if (node >= 0)
            fdt_reg(node, 0, &base, &size);
        plic = (volatile uint8_t *)(uintptr_t)base;
        context = 2 * rt_hartid() + 1; /* hart h: 2h M-mode, 2h + 1 S-mode */
        trap_set_interrupt_handler(IRQ_S_EXT, on_external);
    }
    unsigned i = 0;
    while (i < SLOTS && slot[i].fn)
        i++;
    if (i == SLOTS)
        return false;
    slot[i].irq = irq, slot[i].fn = fn, slot[i].ctx = ctx;
    wr(PLIC_PRIORITY(irq), 1);
    wr(PLIC_ENABLE(context, irq), rd(PLIC_ENABLE(context, irq)) | 1u << (irq % 32));
    wr(PLIC_THRESHOLD(context), 0);
    csr_set(sie, SIE_SEIE);
    return true;
}
