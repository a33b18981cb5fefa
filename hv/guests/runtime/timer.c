#include "timer.h"
#include "csr.h"
#include "sbi.h"
#include "trap.h"

static uint64_t hz = 10000000;
static volatile unsigned long irq_count;

uint64_t timer_hz(void) { return hz; }

void timer_set_hz(uint64_t h)
{
    if (h)
        hz = h;
}

uint64_t timer_ms_to_ticks(uint64_t ms) { return ms * hz / 1000; }
uint64_t timer_us_to_ticks(uint64_t us) { return us * hz / 1000000; }
uint64_t timer_ticks_to_us(uint64_t ticks) { return ticks * 1000000 / hz; }

unsigned long timer_irq_count(void) { return irq_count; }

static void timer_irq(struct trap_frame *tf)
{
    UNUSED(tf);
    sbi_set_timer(UINT64_MAX); /* clears sip.STIP */
    irq_count++;
}

void timer_init(void) { trap_set_interrupt_handler(IRQ_S_TIMER, timer_irq); }

void sleep_until(uint64_t deadline)
{
    unsigned long sie_was = csr_read(sstatus) & SSTATUS_SIE;
    irq_disable();
    csr_set(sie, SIE_STIE);
    while (time_now() < deadline) {
        unsigned long seen = irq_count;
        sbi_set_timer(deadline);
        while (irq_count == seen) {
            wfi();
            irq_enable(); /* take the pending timer interrupt, if any */
            irq_disable();
        }
    }
    csr_clear(sie, SIE_STIE);
    if (sie_was)
        irq_enable();
}

void sleep_ticks(uint64_t ticks) { sleep_until(time_now() + ticks); }

void sleep_ms(uint64_t ms) { sleep_ticks(timer_ms_to_ticks(ms)); }
