#include "trap.h"
#include "console.h"
#include "csr.h"
#include "sbi.h"

static trap_handler_fn exc_handlers[64];
static trap_handler_fn irq_handlers[64];
static trap_handler_fn fallback;

void trap_init(void)
{
    csr_write(sscratch, 0);
    csr_write(stvec, (unsigned long)&trap_vector); /* direct mode */
}

trap_handler_fn trap_set_exception_handler(unsigned cause, trap_handler_fn fn)
{
    if (cause >= ARRAY_SIZE(exc_handlers))
        return NULL;
    trap_handler_fn old = exc_handlers[cause];
    exc_handlers[cause] = fn;
    return old;
}

trap_handler_fn trap_set_interrupt_handler(unsigned cause, trap_handler_fn fn)
{
    if (cause >= ARRAY_SIZE(irq_handlers))
        return NULL;
    trap_handler_fn old = irq_handlers[cause];
    irq_handlers[cause] = fn;
    return old;
}

trap_handler_fn trap_set_fallback(trap_handler_fn fn)
{
    trap_handler_fn old = fallback;
    fallback = fn;
    return old;
}

void trap_unhandled(struct trap_frame *tf)
{
    printf("unhandled trap: scause=0x%lx sepc=0x%lx stval=0x%lx\n", tf->scause, tf->sepc,
           tf->stval);
    sbi_shutdown(SBI_SRST_REASON_SYSTEM_FAILURE);
}

void trap_dispatch(struct trap_frame *tf);
void trap_dispatch(struct trap_frame *tf)
{
    unsigned long code = tf->scause & ~SCAUSE_INTERRUPT;
    trap_handler_fn fn = NULL;
    if (code < 64)
        fn = (tf->scause & SCAUSE_INTERRUPT) ? irq_handlers[code] : exc_handlers[code];
    if (!fn)
        fn = fallback;
    if (!fn)
        trap_unhandled(tf);
    fn(tf);
}

unsigned insn_length(unsigned long addr)
{
    /* Instructions are 2-byte aligned; read the low half only (the next half may be unmapped). */
    uint16_t lo = *(volatile const uint16_t *)addr;
    return (lo & 3) == 3 ? 4 : 2;
}

void irq_enable(void) { csr_set(sstatus, SSTATUS_SIE); }
void irq_disable(void) { csr_clear(sstatus, SSTATUS_SIE); }
