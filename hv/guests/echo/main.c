/* echo: echoes console input back, driven by interrupts end to end.
 *
 * The guest has its own 16550 driver: it enables the UART's received-data interrupt (IER bit 0),
 * routes UART source 10 through the PLIC to hart 0's S-mode context (priority 1, enabled,
 * threshold 0), enables sie.SEIE and sstatus.SIE and sleeps in wfi. Each external interrupt is
 * claimed from the PLIC, the receive FIFO is drained while LSR.DR is set, every byte is written
 * back through THR (after LSR.THRE), and the source is completed.
 *
 * Typing "q" ends it: it prints "echo: bye" and "echo: N interrupts" and shuts down cleanly.
 * Messages go out through the SBI console; echoed bytes through the UART.
 */
#include "rt.h"

#define UART_DEFAULT_BASE 0x10000000UL
#define UART_DEFAULT_IRQ 10
#define PLIC_DEFAULT_BASE 0x0c000000UL
#define PLIC_CONTEXT_S 1 /* hart 0, S-mode */

/* 16550 registers (reg-shift 0, 8-bit) and bits. */
#define UART_RBR 0
#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LSR 5
#define IER_RDI 0x01
#define FCR_ENABLE 0x01
#define LSR_DR 0x01
#define LSR_THRE 0x20

/* PLIC register layout. */
#define PLIC_PRIORITY(src) (4UL * (src))
#define PLIC_ENABLE(ctx, src) (0x2000UL + 0x80UL * (ctx) + 4UL * ((src) / 32))
#define PLIC_THRESHOLD(ctx) (0x200000UL + 0x1000UL * (ctx))
#define PLIC_CLAIM(ctx) (0x200004UL + 0x1000UL * (ctx))

static volatile uint8_t *uart;
static volatile uint8_t *plic;
static uint32_t uart_irq = UART_DEFAULT_IRQ;

static volatile unsigned long irq_count;
static volatile unsigned long echoed;
static volatile bool quit;

static inline uint32_t plic_read(unsigned long off) { return *(volatile uint32_t *)(plic + off); }

static inline void plic_write(unsigned long off, uint32_t v)
{
    *(volatile uint32_t *)(plic + off) = v;
}

static void uart_putc(uint8_t c)
{
    while (!(uart[UART_LSR] & LSR_THRE))
        ;
    uart[UART_THR] = c;
}

static void uart_drain(void)
{
    while (uart[UART_LSR] & LSR_DR) {
        uint8_t c = uart[UART_RBR];
        uart_putc(c);
        echoed++;
        if (c == 'q')
            quit = true;
    }
}

static void on_external(struct trap_frame *tf)
{
    UNUSED(tf);
    irq_count++;
    uint32_t src;
    while ((src = plic_read(PLIC_CLAIM(PLIC_CONTEXT_S))) != 0) {
        if (src == uart_irq)
            uart_drain();
        plic_write(PLIC_CLAIM(PLIC_CONTEXT_S), src);
    }
}

static void find_devices(void)
{
    uint64_t base, size;
    uart = (volatile uint8_t *)UART_DEFAULT_BASE;
    plic = (volatile uint8_t *)PLIC_DEFAULT_BASE;
    int node = fdt_node_by_compatible("ns16550a", -1);
    if (node >= 0 && fdt_reg(node, 0, &base, &size)) {
        uart = (volatile uint8_t *)(unsigned long)base;
        fdt_getprop_u32(node, "interrupts", &uart_irq);
    }
    node = fdt_node_by_compatible("riscv,plic0", -1);
    if (node >= 0 && fdt_reg(node, 0, &base, &size))
        plic = (volatile uint8_t *)(unsigned long)base;
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    find_devices();

    uart[UART_FCR] = FCR_ENABLE;
    uart[UART_IER] = IER_RDI;
    plic_write(PLIC_PRIORITY(uart_irq), 1);
    plic_write(PLIC_ENABLE(PLIC_CONTEXT_S, uart_irq), 1U << (uart_irq % 32));
    plic_write(PLIC_THRESHOLD(PLIC_CONTEXT_S), 0);
    trap_set_interrupt_handler(IRQ_S_EXT, on_external);
    csr_set(sie, SIE_SEIE);

    printf("echo: ready (uart 0x%lx irq %u, plic 0x%lx)\n", (unsigned long)uart, uart_irq,
           (unsigned long)plic);

    /* wfi with sstatus.SIE clear, then open SIE briefly: no interrupt is lost between the
     * check of `quit` and the wfi (wfi wakes on any pending interrupt enabled in sie). */
    irq_disable();
    while (!quit) {
        wfi();
        irq_enable();
        irq_disable();
    }

    uart[UART_IER] = 0;
    csr_clear(sie, SIE_SEIE);
    printf("\necho: bye\n");
    printf("echo: %lu interrupts, %lu bytes\n", irq_count, echoed);
    return 0;
}
