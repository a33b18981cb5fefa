/* Time from rdtime (the `time` CSR, 10 MHz on hv-virt) and sleeping in wfi on the SBI timer. */
#ifndef RT_TIMER_H
#define RT_TIMER_H

#include "types.h"

static inline uint64_t time_now(void)
{
    uint64_t t;
    __asm__ volatile("rdtime %0" : "=r"(t));
    return t;
}

/* Ticks per second: /cpus timebase-frequency from the device tree, else 10 MHz. */
uint64_t timer_hz(void);
void timer_set_hz(uint64_t hz);
uint64_t timer_ms_to_ticks(uint64_t ms);
uint64_t timer_us_to_ticks(uint64_t us);
uint64_t timer_ticks_to_us(uint64_t ticks);

/* Install the timer interrupt handler (done by rt_init). */
void timer_init(void);

/* Sleep until time >= deadline: arms the SBI timer and waits in wfi with sie.STIE set. wfi runs
 * with sstatus.SIE clear (wfi wakes on any interrupt enabled in sie, as the privileged spec
 * says); SIE is opened briefly afterwards so the timer interrupt is taken. Race-free. */
void sleep_until(uint64_t deadline);
void sleep_ticks(uint64_t ticks);
void sleep_ms(uint64_t ms);

/* Number of timer interrupts taken so far. */
unsigned long timer_irq_count(void);

#endif
