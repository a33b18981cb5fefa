/* smc: the guarded call into generated code, and the two position-independent programs the
 * loader checks copy into RAM.
 */
    .option push
    .option norelax

/* long smc_call(unsigned long fn, long a0, long a1, long a2): call fn(a0, a1, a2).
 * If the code traps, the test trap handler resumes at smc_call_recover with a0 set to its
 * marker value: the stack is restored from smc_call_sp and smc_call returns normally.
 * Generated code only uses caller-saved registers (a*, t*), so nothing else needs saving. */
    .section .text.smc_call, "ax", @progbits
    .balign 4
    .global smc_call, smc_call_recover
    .type smc_call, @function
smc_call:
    addi sp, sp, -16
    sd ra, 0(sp)
    la t0, smc_call_sp
    sd sp, 0(t0)
    mv t0, a0
    mv a0, a1
    mv a1, a2
    mv a2, a3
    jalr ra, 0(t0)
1:  ld ra, 0(sp)
    addi sp, sp, 16
    ret
smc_call_recover:
    la t0, smc_call_sp
    ld sp, 0(t0)
    j 1b
    .size smc_call, . - smc_call

    .section .sbss.smc_call_sp, "aw", @nobits
    .balign 8
smc_call_sp:
    .8byte 0

/* The loader's programs: data here, code once copied. Both are position independent (only
 * pc-relative jumps) and several pages long, so they run from wherever they are copied. */
    .section .rodata.smc_progs, "a", @progbits

/* prog1: 4-byte instructions only, about 6 KiB (crosses a page boundary); returns 1500. */
    .balign 8
    .global smc_prog1, smc_prog1_end
smc_prog1:
    .option push
    .option norvc
    li a0, 0
    .rept 1500
    addi a0, a0, 1
    .endr
    ret
    .option pop
    .balign 8
smc_prog1_end:

/* prog2: compressed instructions and a subroutine call, about 10 KiB (three pages);
 * returns 3 * 5000 + 77 = 15077. */
    .balign 8
    .global smc_prog2, smc_prog2_end
smc_prog2:
    mv t1, ra
    li a0, 0
    .rept 2500
    addi a0, a0, 3
    .endr
    jal ra, 2f
    .rept 2500
    addi a0, a0, 3
    .endr
    mv ra, t1
    ret
2:  addi a0, a0, 77
    ret
    .balign 8
smc_prog2_end:

    .option pop
