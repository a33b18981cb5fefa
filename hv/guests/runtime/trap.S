/* Trap vector: save all registers into a struct trap_frame (see trap.h), call trap_dispatch,
 * restore (handlers may have edited the frame) and sret.
 *
 * sscratch is 0 while the hart runs in S-mode and holds the kernel stack pointer while it runs in
 * U-mode, so a trap from U-mode switches to the kernel stack.
 */
#define FRAME_SIZE 288
#define F_SEPC 256
#define F_SSTATUS 264
#define F_SCAUSE 272
#define F_STVAL 280
#define SSTATUS_SPP (1 << 8)

    .section .text.trap, "ax", @progbits
    .balign 4
    .global trap_vector
    .type trap_vector, @function
trap_vector:
    csrrw sp, sscratch, sp      /* sp = sscratch, sscratch = interrupted sp */
    bnez sp, 1f                 /* non-zero: came from U-mode, sp is now the kernel stack */
    csrr sp, sscratch           /* from S-mode: keep using the interrupted stack */
1:
    addi sp, sp, -FRAME_SIZE
    sd x1, 1*8(sp)
    sd x3, 3*8(sp)
    sd x4, 4*8(sp)
    sd x5, 5*8(sp)
    sd x6, 6*8(sp)
    sd x7, 7*8(sp)
    sd x8, 8*8(sp)
    sd x9, 9*8(sp)
    sd x10, 10*8(sp)
    sd x11, 11*8(sp)
    sd x12, 12*8(sp)
    sd x13, 13*8(sp)
    sd x14, 14*8(sp)
    sd x15, 15*8(sp)
    sd x16, 16*8(sp)
    sd x17, 17*8(sp)
    sd x18, 18*8(sp)
    sd x19, 19*8(sp)
    sd x20, 20*8(sp)
    sd x21, 21*8(sp)
    sd x22, 22*8(sp)
    sd x23, 23*8(sp)
    sd x24, 24*8(sp)
    sd x25, 25*8(sp)
    sd x26, 26*8(sp)
    sd x27, 27*8(sp)
    sd x28, 28*8(sp)
    sd x29, 29*8(sp)
    sd x30, 30*8(sp)
    sd x31, 31*8(sp)
    csrr t0, sscratch
    sd t0, 2*8(sp)              /* the interrupted sp */
    sd zero, 0(sp)
    csrw sscratch, zero         /* now in S-mode */
    csrr t0, sepc
    sd t0, F_SEPC(sp)
    csrr t0, sstatus
    sd t0, F_SSTATUS(sp)
    csrr t0, scause
    sd t0, F_SCAUSE(sp)
    csrr t0, stval
    sd t0, F_STVAL(sp)

    mv a0, sp
    call trap_dispatch

    ld t0, F_SEPC(sp)
    csrw sepc, t0
    ld t0, F_SSTATUS(sp)
    csrw sstatus, t0
    andi t0, t0, SSTATUS_SPP
    bnez t0, 2f
    addi t0, sp, FRAME_SIZE     /* returning to U-mode: remember the kernel stack */
    csrw sscratch, t0
2:
    ld x1, 1*8(sp)
    ld x3, 3*8(sp)
    ld x4, 4*8(sp)
    ld x5, 5*8(sp)
    ld x6, 6*8(sp)
    ld x7, 7*8(sp)
    ld x8, 8*8(sp)
    ld x9, 9*8(sp)
    ld x10, 10*8(sp)
    ld x11, 11*8(sp)
    ld x12, 12*8(sp)
    ld x13, 13*8(sp)
    ld x14, 14*8(sp)
    ld x15, 15*8(sp)
    ld x16, 16*8(sp)
    ld x17, 17*8(sp)
    ld x18, 18*8(sp)
    ld x19, 19*8(sp)
    ld x20, 20*8(sp)
    ld x21, 21*8(sp)
    ld x22, 22*8(sp)
    ld x23, 23*8(sp)
    ld x24, 24*8(sp)
    ld x25, 25*8(sp)
    ld x26, 26*8(sp)
    ld x27, 27*8(sp)
    ld x28, 28*8(sp)
    ld x29, 29*8(sp)
    ld x30, 30*8(sp)
    ld x31, 31*8(sp)
    ld x2, 2*8(sp)
    sret
    .size trap_vector, . - trap_vector
