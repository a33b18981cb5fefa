/* Trap handling: an assembly vector saves every register into a struct trap_frame on the stack
 * and calls trap_dispatch(), which runs the handler registered for scause. Handlers may edit the
 * frame (sepc, registers, sstatus); the vector restores it and returns with sret.
 *
 * Without a registered handler the default handler prints
 *   "unhandled trap: scause=0x.. sepc=0x.. stval=0x.."
 * and shuts the machine down with SRST reason "system failure".
 *
 * U-mode: sscratch holds the kernel stack pointer while U-mode code runs and 0 in S-mode.
 */
#ifndef RT_TRAP_H
#define RT_TRAP_H

#include "types.h"

/* Register indices into trap_frame.regs (x0 is unused, always 0). */
enum {
    REG_RA = 1, REG_SP = 2, REG_GP = 3, REG_TP = 4, REG_T0 = 5, REG_T1 = 6, REG_T2 = 7,
    REG_S0 = 8, REG_S1 = 9, REG_A0 = 10, REG_A1 = 11, REG_A2 = 12, REG_A3 = 13, REG_A4 = 14,
    REG_A5 = 15, REG_A6 = 16, REG_A7 = 17,
};

struct trap_frame {
    unsigned long regs[32]; /* x0..x31 at offset 8*n; regs[2] is the interrupted sp */
    unsigned long sepc;     /* offset 256 */
    unsigned long sstatus;  /* offset 264 */
    unsigned long scause;   /* offset 272 */
    unsigned long stval;    /* offset 280 */
};
_Static_assert(sizeof(struct trap_frame) == 288, "trap_frame layout is shared with trap.S");

typedef void (*trap_handler_fn)(struct trap_frame *tf);

/* Install the runtime vector (done by the startup code before main). */
void trap_init(void);
/* The vector's address, to restore stvec after a guest changed it. */
void trap_vector(void);

/* Register a handler for one exception cause (0..63) or one interrupt cause (0..63).
 * Return the previous handler (NULL if none). NULL restores the default. */
trap_handler_fn trap_set_exception_handler(unsigned cause, trap_handler_fn fn);
trap_handler_fn trap_set_interrupt_handler(unsigned cause, trap_handler_fn fn);
/* A catch-all called for any trap without a specific handler (NULL: the default handler). */
trap_handler_fn trap_set_fallback(trap_handler_fn fn);

/* The default handler: report and shut down with "system failure". */
NORETURN void trap_unhandled(struct trap_frame *tf);

/* Length in bytes (2 or 4) of the instruction at addr (reads it: addr must be readable). */
unsigned insn_length(unsigned long addr);
/* Resume after the trapping instruction. */
static inline void trap_skip_insn(struct trap_frame *tf) { tf->sepc += insn_length(tf->sepc); }

/* Interrupt enable helpers. */
void irq_enable(void);  /* sstatus.SIE = 1 */
void irq_disable(void); /* sstatus.SIE = 0 */

#endif
