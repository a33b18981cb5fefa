/* Secondary harts' entry points (SBI HSM): a0 = hart id, a1 = opaque, S-mode, satp = 0.
 *
 * smp_hart_entry: after hart_start. smp_resume_entry: after a non-retentive hart_suspend.
 * Each sets gp, tp = hart id, its own stack (smp_stacks, SMP_STACK bytes a hart), sstatus.FS
 * and the runtime's trap vector, then calls smp_hart_main(hartid, opaque, resumed); that
 * never returns.
 */
#define SMP_STACK 16384
#define SSTATUS_FS_INITIAL (1 << 13)

    .section .text, "ax", @progbits
    .global smp_hart_entry
    .type smp_hart_entry, @function
smp_hart_entry:
    li a2, 0
    j 1f
    .global smp_resume_entry
    .type smp_resume_entry, @function
smp_resume_entry:
    li a2, 1
1:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    mv tp, a0
    la sp, smp_stacks
    li t0, SMP_STACK
    addi t1, a0, 1
    mul t0, t0, t1
    add sp, sp, t0
    li t0, SSTATUS_FS_INITIAL
    csrs sstatus, t0
    csrw sscratch, zero
    la t0, trap_vector
    csrw stvec, t0
    call smp_hart_main
2:  wfi
    j 2b

    .section .bss
    .balign 16
    .global smp_stacks
smp_stacks:
    .space SMP_STACK * 8
