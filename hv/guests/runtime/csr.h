/* Control and status register access for S-mode (RISC-V privileged spec). */
#ifndef RT_CSR_H
#define RT_CSR_H

#define SSTATUS_SIE (1UL << 1)
#define SSTATUS_SPIE (1UL << 5)
#define SSTATUS_SPP (1UL << 8)
#define SSTATUS_FS_MASK (3UL << 13)
#define SSTATUS_FS_INITIAL (1UL << 13)
#define SSTATUS_SUM (1UL << 18)

#define SIE_SSIE (1UL << 1)
#define SIE_STIE (1UL << 5)
#define SIE_SEIE (1UL << 9)
#define SIP_SSIP SIE_SSIE
#define SIP_STIP SIE_STIE
#define SIP_SEIP SIE_SEIE

#define SCAUSE_INTERRUPT (1UL << 63)

/* Exception causes (scause with the interrupt bit clear). */
#define EXC_INSN_MISALIGNED 0
#define EXC_INSN_ACCESS 1
#define EXC_ILLEGAL_INSN 2
#define EXC_BREAKPOINT 3
#define EXC_LOAD_MISALIGNED 4
#define EXC_LOAD_ACCESS 5
#define EXC_STORE_MISALIGNED 6
#define EXC_STORE_ACCESS 7
#define EXC_ECALL_U 8
#define EXC_ECALL_S 9
#define EXC_INSN_PAGE_FAULT 12
#define EXC_LOAD_PAGE_FAULT 13
#define EXC_STORE_PAGE_FAULT 15

/* Interrupt causes (scause with the interrupt bit set). */
#define IRQ_S_SOFT 1
#define IRQ_S_TIMER 5
#define IRQ_S_EXT 9

#define SATP_MODE_SV39 (8UL << 60)

#define csr_read(csr)                                          \
    ({                                                         \
        unsigned long __v;                                     \
        __asm__ volatile("csrr %0, " #csr : "=r"(__v)::"memory"); \
        __v;                                                   \
    })

#define csr_write(csr, val)                                           \
    do {                                                              \
        unsigned long __v = (unsigned long)(val);                     \
        __asm__ volatile("csrw " #csr ", %0" ::"rK"(__v) : "memory"); \
    } while (0)

#define csr_set(csr, val)                                             \
    do {                                                              \
        unsigned long __v = (unsigned long)(val);                     \
        __asm__ volatile("csrs " #csr ", %0" ::"rK"(__v) : "memory"); \
    } while (0)

#define csr_clear(csr, val)                                           \
    do {                                                              \
        unsigned long __v = (unsigned long)(val);                     \
        __asm__ volatile("csrc " #csr ", %0" ::"rK"(__v) : "memory"); \
    } while (0)

static inline void wfi(void) { __asm__ volatile("wfi" ::: "memory"); }

static inline void sfence_vma(void) { __asm__ volatile("sfence.vma" ::: "memory"); }

/* sfence.vma for one virtual address (all address spaces). */
static inline void sfence_vma_addr(unsigned long va)
{
    __asm__ volatile("sfence.vma %0, zero" ::"r"(va) : "memory");
}

/* Make this hart's earlier stores to instruction memory visible to its instruction fetches. */
static inline void fence_i(void) { __asm__ volatile("fence.i" ::: "memory"); }

#endif
