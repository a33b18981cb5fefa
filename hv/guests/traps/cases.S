/* The trapping instructions of the traps guest, each at a global label so main.c knows the
 * exact sepc to expect. Every do_* function executes one trapping instruction and returns;
 * the test handler resumes after it (or at ra for the fetch fault, or at user_return for the
 * U-mode ecall).
 */
    .text
    .option push
    .option norelax

/* ebreak, 4-byte encoding (not compressed). */
    .global do_ebreak, t_ebreak
    .balign 4
do_ebreak:
    .option push
    .option norvc
t_ebreak:
    ebreak
    .option pop
    ret

/* c.ebreak, 2-byte encoding. */
    .global do_cebreak, t_cebreak
    .balign 4
do_cebreak:
t_cebreak:
    c.ebreak
    ret

/* A 4-byte illegal instruction (unimp = csrrw x0, cycle, x0: a write to a read-only CSR)
 * placed right after a 2-byte instruction, so it sits at an address = 2 mod 4. */
    .global do_illegal32, t_illegal32
    .balign 4
do_illegal32:
    c.nop
t_illegal32:
    .4byte 0xc0001073
    ret

/* The 2-byte all-zero encoding, defined to be illegal. */
    .global do_illegal16, t_illegal16
    .balign 4
do_illegal16:
t_illegal16:
    .2byte 0x0000
    ret

/* Loads and stores at a0 + offset (the offsets are in main.c's expectations). */
    .global do_load_pf, t_load_pf
do_load_pf:
    .option push
    .option norvc
t_load_pf:
    ld a1, 8(a0)
    .option pop
    ret

    .global do_store_pf, t_store_pf
do_store_pf:
    .option push
    .option norvc
t_store_pf:
    sd a1, 16(a0)
    .option pop
    ret

    .global do_cload_pf, t_cload_pf
do_cload_pf:
t_cload_pf:
    c.lw a1, 4(a0)
    ret

    .global do_cstore_pf, t_cstore_pf
do_cstore_pf:
t_cstore_pf:
    c.sw a1, 12(a0)
    ret

/* Jump to a0 (an unmapped virtual page); the handler resumes at ra, i.e. in our caller. */
    .global do_fetch
do_fetch:
    jr a0

/* amoadd.w at a0 (misaligned by the caller); returns a1. */
    .global do_amoadd, t_amoadd
do_amoadd:
t_amoadd:
    amoadd.w a1, a1, (a0)
    mv a0, a1
    ret

/* ebreak followed by an instruction that must run exactly once after the handler skips it. */
    .global do_ebreak_resume, t_ebreak_resume
do_ebreak_resume:
    li a0, 0
    .option push
    .option norvc
t_ebreak_resume:
    ebreak
    .option pop
    addi a0, a0, 1
    ret

/* run_user(entry, user_sp): drop to U-mode at entry with sp = user_sp. Returns when the trap
 * handler sends the hart back to user_return (in S-mode), with a0 set by the handler. */
    .global run_user, user_return
run_user:
    addi sp, sp, -112
    sd ra, 0(sp)
    sd s0, 8(sp)
    sd s1, 16(sp)
    sd s2, 24(sp)
    sd s3, 32(sp)
    sd s4, 40(sp)
    sd s5, 48(sp)
    sd s6, 56(sp)
    sd s7, 64(sp)
    sd s8, 72(sp)
    sd s9, 80(sp)
    sd s10, 88(sp)
    sd s11, 96(sp)
    la t0, user_saved_sp
    sd sp, 0(t0)
    csrw sscratch, sp           /* the kernel stack for traps from U-mode */
    csrw sepc, a0
    li t0, (1 << 8)             /* sstatus.SPP = 0: sret to U-mode */
    csrc sstatus, t0
    li t0, (1 << 5)             /* sstatus.SPIE = 0: U-mode runs with interrupts off */
    csrc sstatus, t0
    mv sp, a1
    sret
user_return:
    la t0, user_saved_sp
    ld sp, 0(t0)
    ld ra, 0(sp)
    ld s0, 8(sp)
    ld s1, 16(sp)
    ld s2, 24(sp)
    ld s3, 32(sp)
    ld s4, 40(sp)
    ld s5, 48(sp)
    ld s6, 56(sp)
    ld s7, 64(sp)
    ld s8, 72(sp)
    ld s9, 80(sp)
    ld s10, 88(sp)
    ld s11, 96(sp)
    addi sp, sp, 112
    ret

    .bss
    .balign 8
user_saved_sp:
    .8byte 0

/* The user page: mapped U|R|X at a separate virtual address; nothing else lives in it. */
    .section .text.user, "ax", @progbits
    .balign 4096
    .global user_page, user_entry, t_uecall
user_page:
user_entry:
    li a7, 0x55
    li a0, 0x1234
t_uecall:
    ecall
1:  j 1b
    .balign 4096

    .option pop
