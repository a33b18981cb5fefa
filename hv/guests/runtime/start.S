/* Entry point, at 0x80200000 (the OpenSBI fw_jump convention): S-mode, MMU off,
 * a0 = hart id, a1 = physical address of the flattened device tree.
 *
 * Sets up gp and the stack, clears .bss, enables the FPU (sstatus.FS = Initial), installs the
 * runtime trap vector, calls rt_init(hartid, fdt) then main(hartid, fdt), and shuts down via SBI
 * SRST: reason "none" when main returns 0, "system failure" otherwise.
 */
#define SBI_EXT_SRST 0x53525354
#define SSTATUS_FS_INITIAL (1 << 13)

    .section .text.start, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, __stack_top
    mv s0, a0                   /* hart id */
    mv s1, a1                   /* device tree */

    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sd zero, 0(t0)
    addi t0, t0, 8
    j 1b
2:
    li t0, SSTATUS_FS_INITIAL
    csrs sstatus, t0
    csrw sscratch, zero
    la t0, trap_vector
    csrw stvec, t0

    mv a0, s0
    mv a1, s1
    call rt_init
    mv a0, s0
    mv a1, s1
    call main
    /* fall into rt_exit(main's result) */

    .global rt_exit
    .type rt_exit, @function
rt_exit:
    snez a1, a0                 /* reason: 0 = none, 1 = system failure */
    li a0, 0                    /* type: shutdown */
    li a6, 0
    li a7, SBI_EXT_SRST
    ecall
3:  wfi                         /* SRST refused: park */
    j 3b
    .size _start, . - _start
