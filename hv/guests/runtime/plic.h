/* The PLIC's S-mode context for this hart: route one device interrupt to a handler.
 *
 * plic_attach() enables the source (priority 1, threshold 0), installs the runtime's external
 * interrupt handler and sets sie.SEIE for good. The runtime runs with sstatus.SIE clear, so a
 * device interrupt is taken only where a wait opens SIE (sleep_until, net_wait_until); until
 * then it stays pending and ends the next wfi at once, which is what a wait wants. The handler
 * claims, calls the source's function (which must quiet the device: ack its interrupt status)
 * and completes, for every pending source. */
#ifndef RT_PLIC_H
#define RT_PLIC_H

#include "types.h"

typedef void (*plic_handler_fn)(void *ctx);

/* false if the source is out of range or every handler slot is taken */
bool plic_attach(uint32_t irq, plic_handler_fn fn, void *ctx);
/* external interrupts handled so far */
unsigned long plic_irq_count(void);

#endif
