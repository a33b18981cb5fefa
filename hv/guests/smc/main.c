/* smc: a self-checking test of self-modifying code and code loading.
 *
 * Every check writes instructions into RAM, runs them (at least twice, so an emulator has
 * translated and cached them), rewrites them in some way, makes the stores visible to
 * instruction fetch (fence.i, unless the check says otherwise), runs them again and checks that
 * the new code's result came back. The ways covered: code on a page full of data stores, code
 * that stores to its own page, functions and single instructions across a page boundary, one
 * instruction rewritten with sw / sh / sb / sd / amoswap / lr-sc / fsw, instruction length
 * changes, a function grown past its old end, 1000 rewrite-and-run rounds, a stack
 * trampoline, code patching itself, direct-jump chains, SBI remote fence.i; under Sv39: a
 * rewrite through the executing virtual address, a virtually contiguous function on two
 * non-contiguous physical pages, one physical page at two virtual addresses (an R+X alias run,
 * an R+W alias written), leaf PTE remaps; then a loader that memcpys multi-page programs into
 * RAM and overwrites them.
 *
 * Output, one line per check (TAP style):
 *     ok N - name
 *     not ok N - name # what went wrong
 * then "1..N" and "smc: P passed, F failed" (plus ", X expected failures" when there were
 * some). Exits non-zero (SRST "system failure") if any check failed.
 *
 * bootargs: xfail=name[,name...] marks checks that are known to fail on this machine (the
 * line then reads "not ok N - name # TODO expected failure: ..."); they do not count as
 * failures. A listed check that passes prints "ok N - name # TODO passed unexpectedly".
 */
#include "rt.h"

#define PAGE 4096UL

/* ---- the guarded call (call.S) ---- */

long smc_call(unsigned long fn, long a0, long a1, long a2);
extern char smc_call_recover[];
extern const char smc_prog1[], smc_prog1_end[], smc_prog2[], smc_prog2_end[];

#define TRAPPED ((long)0xDEAD7A9DEAD7A9L)

static volatile bool armed;
static volatile unsigned long trap_scause, trap_sepc, trap_stval;

static void on_trap(struct trap_frame *tf)
{
    if (!armed)
        trap_unhandled(tf);
    armed = false;
    trap_scause = tf->scause;
    trap_sepc = tf->sepc;
    trap_stval = tf->stval;
    tf->regs[REG_A0] = (unsigned long)TRAPPED;
    tf->sepc = (unsigned long)smc_call_recover;
}

/* Run the code at addr (a function of up to three arguments). */
static long run3(unsigned long addr, long a0, long a1, long a2)
{
    armed = true;
    long r = smc_call(addr, a0, a1, a2);
    armed = false;
    return r;
}

static long run(const volatile void *addr) { return run3((unsigned long)addr, 0, 0, 0); }

/* ---- reporting ---- */

static int n_checks, n_passed, n_failed, n_xfail;
static char xfail_list[256];

static bool xfail_listed(const char *name)
{
    size_t nlen = strlen(name);
    const char *s = xfail_list;
    while (*s) {
        const char *e = s;
        while (*e && *e != ',')
            e++;
        if ((size_t)(e - s) == nlen && strncmp(s, name, nlen) == 0)
            return true;
        s = *e ? e + 1 : e;
    }
    return false;
}

static void report(const char *name, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(const char *name, bool ok, const char *fmt, ...)
{
    int n = ++n_checks;
    bool xfail = xfail_listed(name);
    if (ok) {
        n_passed++;
        printf("ok %d - %s%s\n", n, name, xfail ? " # TODO passed unexpectedly" : "");
        return;
    }
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (xfail) {
        n_xfail++;
        printf("not ok %d - %s # TODO expected failure: %s\n", n, name, why);
    } else {
        n_failed++;
        printf("not ok %d - %s # %s\n", n, name, why);
    }
}

/* A value as a short description: "0x.." or "a trap (scause=..)". */
static const char *val(char *buf, size_t size, long v)
{
    if (v == TRAPPED)
        snprintf(buf, size, "a trap (scause=0x%lx sepc=0x%lx stval=0x%lx)", trap_scause,
                 trap_sepc, trap_stval);
    else
        snprintf(buf, size, "%ld", v);
    return buf;
}

/* The common shape: the old code ran twice giving `old` (wanted old_want), then the new code
 * ran giving `got` (wanted want). */
static void report_rewrite(const char *name, long old1, long old2, long old_want, long got,
                           long want)
{
    char a[96], b[96];
    if (old1 != old_want || old2 != old_want)
        report(name, false, "the old code gave %s and %s, want %ld",
               val(a, sizeof(a), old1), val(b, sizeof(b), old2), old_want);
    else if (got != want)
        report(name, false, "after the rewrite got %s, want %ld%s", val(a, sizeof(a), got), want,
               got == old_want ? " (the old code ran: stale translation)" : "");
    else
        report(name, true, "");
}

/* ---- instruction encoders ---- */

enum { ZERO = 0, RA = 1, T0 = 5, T1 = 6, T2 = 7, A0 = 10, A1 = 11, T3 = 28, T4 = 29 };

static uint32_t i_type(int32_t imm, unsigned rs1, unsigned f3, unsigned rd, unsigned op)
{
    return ((uint32_t)imm & 0xfff) << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op;
}

static uint32_t s_type(int32_t imm, unsigned rs2, unsigned rs1, unsigned f3, unsigned op)
{
    uint32_t i = (uint32_t)imm & 0xfff;
    return (i >> 5) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (i & 0x1f) << 7 | op;
}

static uint32_t ADDI(unsigned rd, unsigned rs1, int32_t imm) { return i_type(imm, rs1, 0, rd, 0x13); }
static uint32_t XORI(unsigned rd, unsigned rs1, int32_t imm) { return i_type(imm, rs1, 4, rd, 0x13); }
static uint32_t ADDIW(unsigned rd, unsigned rs1, int32_t imm) { return i_type(imm, rs1, 0, rd, 0x1b); }
static uint32_t LW(unsigned rd, unsigned rs1, int32_t imm) { return i_type(imm, rs1, 2, rd, 0x03); }
static uint32_t LD(unsigned rd, unsigned rs1, int32_t imm) { return i_type(imm, rs1, 3, rd, 0x03); }
static uint32_t SW(unsigned rs2, unsigned rs1, int32_t imm) { return s_type(imm, rs2, rs1, 2, 0x23); }
static uint32_t SD(unsigned rs2, unsigned rs1, int32_t imm) { return s_type(imm, rs2, rs1, 3, 0x23); }
static uint32_t LUI(unsigned rd, uint32_t imm20) { return (imm20 & 0xfffff) << 12 | rd << 7 | 0x37; }
static uint32_t AUIPC(unsigned rd, uint32_t imm20) { return (imm20 & 0xfffff) << 12 | rd << 7 | 0x17; }
static uint32_t ADD(unsigned rd, unsigned rs1, unsigned rs2) { return rs2 << 20 | rs1 << 15 | rd << 7 | 0x33; }

static uint32_t JAL(unsigned rd, int32_t off)
{
    uint32_t o = (uint32_t)off;
    return ((o >> 20) & 1) << 31 | ((o >> 1) & 0x3ff) << 21 | ((o >> 11) & 1) << 20 |
           ((o >> 12) & 0xff) << 12 | rd << 7 | 0x6f;
}

static uint32_t BNE(unsigned rs1, unsigned rs2, int32_t off)
{
    uint32_t o = (uint32_t)off;
    return ((o >> 12) & 1) << 31 | ((o >> 5) & 0x3f) << 25 | rs2 << 20 | rs1 << 15 | 1 << 12 |
           ((o >> 1) & 0xf) << 8 | ((o >> 11) & 1) << 7 | 0x63;
}

#define RET 0x00008067U     /* jalr zero, 0(ra) */
#define FENCE_I 0x0000100fU /* fence.i */

/* Compressed: c.li / c.addi rd, imm (-32..31), c.jr ra. */
static uint16_t C_LI(unsigned rd, int imm)
{
    uint32_t i = (uint32_t)imm;
    return (uint16_t)(0x4000 | ((i >> 5) & 1) << 12 | rd << 7 | (i & 0x1f) << 2 | 1);
}

static uint16_t C_ADDI(unsigned rd, int imm)
{
    uint32_t i = (uint32_t)imm;
    return (uint16_t)(((i >> 5) & 1) << 12 | rd << 7 | (i & 0x1f) << 2 | 1);
}

#define C_RET ((uint16_t)0x8082)

/* lui + addiw: rd = v (any 32-bit value, sign-extended). */
static void li32(uint32_t out[2], unsigned rd, int32_t v)
{
    int32_t lo = (int32_t)((uint32_t)v << 20) >> 20;
    out[0] = LUI(rd, ((uint32_t)v - (uint32_t)lo) >> 12);
    out[1] = ADDIW(rd, rd, lo);
}

/* ---- stores of a given width into code ---- */

static void st8(volatile void *p, uint8_t v) { *(volatile uint8_t *)p = v; }
static void st16(volatile void *p, uint16_t v) { *(volatile uint16_t *)p = v; }
static void st32(volatile void *p, uint32_t v) { *(volatile uint32_t *)p = v; }
static void st64(volatile void *p, uint64_t v) { *(volatile uint64_t *)p = v; }

/* Emit instructions with halfword stores (works at any 2-byte aligned address). */
static volatile uint8_t *emit32(volatile uint8_t *p, uint32_t w)
{
    st16(p, (uint16_t)w);
    st16(p + 2, (uint16_t)(w >> 16));
    return p + 4;
}

static volatile uint8_t *emit16(volatile uint8_t *p, uint16_t h)
{
    st16(p, h);
    return p + 2;
}

/* Emit "li a0, v; ret" (v in -2048..2047). */
static void emit_ret_val(volatile uint8_t *p, int32_t v)
{
    p = emit32(p, ADDI(A0, ZERO, v));
    emit32(p, RET);
}

/* ---- memory ---- */

/* Test pages, one (or a few) per check so the checks stay independent. */
enum {
    PG_SAME,
    PG_CROSS_A, PG_CROSS_A2,
    PG_CROSS_B, PG_CROSS_B2,
    PG_MID_SW, PG_MID_SH, PG_MID_SB, PG_MID_SB1, PG_MID_SD, PG_LEN, PG_GROW,
    PG_LOOP, PG_LOOP_C, PG_SELF, PG_SELF_LOOP,
    PG_CHAIN, PG_CHAIN_X, PG_CHAIN_X2,
    PG_AMO, PG_SBI,
    PG_MMU, PG_MMU_LO, PG_MMU_GAP, PG_MMU_HI,
    PG_ALIAS, PG_ALIAS_EXEC, PG_ALIAS_FLUSH,
    PG_REMAP_A, PG_REMAP_B,
    PG_COUNT
};

static uint8_t arena[PG_COUNT * PAGE] __attribute__((aligned(4096)));

static volatile uint8_t *pg(int i) { return arena + (unsigned long)i * PAGE; }

#define LOAD_PAGES 4
static uint8_t load_area[LOAD_PAGES * PAGE] __attribute__((aligned(4096)));

/* ---- bare-mode checks ---- */

/* 1. A function at the start of a page whose second half is data the program keeps writing. */
static void check_same_page(void)
{
    volatile uint8_t *page = pg(PG_SAME);
    volatile uint64_t *data = (volatile uint64_t *)(page + 2048);
    emit_ret_val(page, 1);
    fence_i();
    long old1 = run(page), old2 = run(page);

    unsigned bad_calls = 0;
    for (unsigned i = 0; i < 2000; i++) {
        data[i % 256] = (uint64_t)i * 0x9E3779B97F4A7C15ULL;
        if (i % 50 == 0 && run(page) != 1)
            bad_calls++;
    }
    unsigned bad_data = 0;
    for (unsigned i = 1744; i < 2000; i++)
        if (data[i % 256] != (uint64_t)i * 0x9E3779B97F4A7C15ULL)
            bad_data++;
    report("same_page_data_stores", old1 == 1 && old2 == 1 && !bad_calls && !bad_data,
           "old code %ld/%ld, %u of 40 calls between data stores went wrong, %u bad data words",
           old1, old2, bad_calls, bad_data);

    st32(page, ADDI(A0, ZERO, 2));
    fence_i();
    long got = run(page);
    for (unsigned i = 0; i < 256; i++)
        data[i] = i;
    long again = run(page);
    report("same_page_code_rewrite", got == 2 && again == 2,
           "after the rewrite got %ld, after more data stores %ld, want 2 (1 is the old code)",
           got, again);
}

/* 1b. Code that stores to (and loads from) its own page while it runs. */
static void check_own_page_stores(void)
{
    volatile uint8_t *f = pg(PG_SAME) + 512; /* data at f + 1024, still on the page */
    volatile uint8_t *p = f;
    p = emit32(p, AUIPC(T0, 0));
    p = emit32(p, SD(A0, T0, 1024));
    p = emit32(p, LD(A1, T0, 1024));
    volatile uint8_t *target = p;
    p = emit32(p, ADDI(A0, A1, 1));
    emit32(p, RET);
    fence_i();
    long old1 = run3((unsigned long)f, 100, 0, 0), old2 = run3((unsigned long)f, 200, 0, 0);
    st32(target, ADDI(A0, A1, 7));
    fence_i();
    long got = run3((unsigned long)f, 300, 0, 0);
    long stored = (long)*(volatile uint64_t *)(f + 1024);
    report("code_stores_to_own_page", old1 == 101 && old2 == 201 && got == 307 && stored == 300,
           "old code gave %ld, %ld (want 101, 201), new %ld (want 307), stored word %ld", old1,
           old2, got, stored);
}

/* 2. A function of 4-byte instructions spanning two pages, rewritten on either side. */
static void check_cross_page(void)
{
    volatile uint8_t *f = pg(PG_CROSS_A2) - 12;
    volatile uint8_t *p = f;
    p = emit32(p, ADDI(A0, ZERO, 0));
    volatile uint8_t *before = p;
    p = emit32(p, ADDI(A0, A0, 1));
    p = emit32(p, ADDI(A0, A0, 2));
    volatile uint8_t *after = p; /* first instruction on the second page */
    p = emit32(p, ADDI(A0, A0, 4));
    p = emit32(p, ADDI(A0, A0, 8));
    emit32(p, RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st32(after, ADDI(A0, A0, 64));
    fence_i();
    long got = run(f);
    report_rewrite("cross_page_rewrite_second_page", old1, old2, 15, got, 75);

    old1 = run(f);
    st32(before, ADDI(A0, A0, 32));
    fence_i();
    got = run(f);
    report_rewrite("cross_page_rewrite_first_page", old1, old1, 75, got, 106);
}

/* 2b. A 4-byte instruction straddling the page boundary (at page offset 4094): its upper half
 * (the immediate) is on the second page, its lower half (opcode, funct3) on the first. */
static void check_straddle(void)
{
    volatile uint8_t *f = pg(PG_CROSS_B2) - 4;
    volatile uint8_t *p = f;
    p = emit16(p, C_LI(A0, 3));
    volatile uint8_t *insn = p; /* page offset 4094 */
    p = emit32(p, ADDI(A0, A0, 5));
    emit16(p, C_RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st16(insn + 2, (uint16_t)(ADDI(A0, A0, 9) >> 16)); /* imm: second page only */
    fence_i();
    long got = run(f);
    report_rewrite("straddling_insn_second_half", old1, old2, 8, got, 12);

    old1 = run(f);
    st16(insn, (uint16_t)XORI(A0, A0, 9)); /* funct3 addi -> xori: first page only */
    fence_i();
    got = run(f);
    report_rewrite("straddling_insn_first_half", old1, old1, 12, got, 3 ^ 9);
}

/* Emit li a0,0; addi a0,a0,1; ..2; ..4; ..8; ret (returns 15). */
static void emit_sum15(volatile uint8_t *f)
{
    volatile uint8_t *p = emit32(f, ADDI(A0, ZERO, 0));
    for (int k = 1; k <= 8; k <<= 1)
        p = emit32(p, ADDI(A0, A0, k));
    emit32(p, RET);
}

/* 3. One instruction in the middle of an executed function, rewritten with one sw. */
static void check_mid_sw(void)
{
    volatile uint8_t *f = pg(PG_MID_SW);
    emit_sum15(f);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st32(f + 12, ADDI(A0, A0, 100)); /* was addi a0, a0, 4 */
    fence_i();
    report_rewrite("mid_insn_sw", old1, old2, 15, run(f), 111);
}

/* 3b. A compressed instruction at an address = 2 mod 4, rewritten with one sh. */
static void check_mid_sh(void)
{
    volatile uint8_t *f = pg(PG_MID_SH);
    volatile uint8_t *p = emit16(f, C_LI(A0, 0));
    p = emit16(p, C_ADDI(A0, 1));
    p = emit16(p, C_ADDI(A0, 2));
    volatile uint8_t *mid = p; /* offset 6 */
    p = emit16(p, C_ADDI(A0, 4));
    p = emit16(p, C_ADDI(A0, 8));
    emit16(p, C_RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st16(mid, C_ADDI(A0, 20));
    fence_i();
    report_rewrite("mid_insn_sh_compressed", old1, old2, 15, run(f), 31);
}

/* 3c. A 4-byte instruction assembled with four sb (fence.i only after the last). */
static void check_mid_sb(void)
{
    volatile uint8_t *f = pg(PG_MID_SB);
    emit_sum15(f);
    fence_i();
    long old1 = run(f), old2 = run(f);
    uint32_t w = XORI(A0, A0, -1000); /* replaces addi a0, a0, 4 at +12 */
    for (int i = 0; i < 4; i++)
        st8(f + 12 + i, (uint8_t)(w >> (8 * i)));
    fence_i();
    report_rewrite("mid_insn_sb_bytes", old1, old2, 15, run(f), ((1 + 2) ^ -1000) + 8);

    /* One byte only: the top byte of addi a0, a0, 8 (imm[11:4]) becomes 0x10: imm 0x108. */
    f = pg(PG_MID_SB1);
    emit_sum15(f);
    fence_i();
    old1 = run(f);
    old2 = run(f);
    st8(f + 16 + 3, 0x10);
    fence_i();
    report_rewrite("mid_insn_sb_single_byte", old1, old2, 15, run(f), 7 + 0x108);
}

/* 3d. Two adjacent 4-byte instructions replaced by one 64-bit sd. */
static void check_mid_sd(void)
{
    volatile uint8_t *f = pg(PG_MID_SD);
    emit_sum15(f);
    fence_i();
    long old1 = run(f), old2 = run(f);
    /* +8: addi a0,a0,2 and +12: addi a0,a0,4 -> addi a0,a0,200 and addi a0,a0,400 */
    st64(f + 8, (uint64_t)ADDI(A0, A0, 400) << 32 | ADDI(A0, A0, 200));
    fence_i();
    report_rewrite("mid_insns_sd_pair", old1, old2, 15, run(f), 1 + 200 + 400 + 8);
}

/* 3e. Instruction length changes: two compressed instructions become one 4-byte one, then
 * the reverse, each with one sw. */
static void check_length_change(void)
{
    volatile uint8_t *f = pg(PG_LEN);
    volatile uint8_t *p = emit32(f, ADDI(A0, ZERO, 0));
    volatile uint8_t *pair = p; /* 4-aligned */
    p = emit16(p, C_ADDI(A0, 1));
    p = emit16(p, C_ADDI(A0, 2));
    p = emit32(p, ADDI(A0, A0, 4));
    emit32(p, RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st32(pair, ADDI(A0, A0, 300));
    fence_i();
    long got = run(f);
    report_rewrite("compressed_pair_to_32bit", old1, old2, 7, got, 304);

    old1 = run(f);
    st32(pair, (uint32_t)C_ADDI(A0, 10) | (uint32_t)C_ADDI(A0, 20) << 16);
    fence_i();
    report_rewrite("32bit_to_compressed_pair", old1, old1, 304, run(f), 34);
}

/* 3f. A function grown past its old end: its ret is overwritten and a new ret appended. */
static void check_grow(void)
{
    volatile uint8_t *f = pg(PG_GROW);
    emit_ret_val(f, 5);
    fence_i();
    long old1 = run(f), old2 = run(f);
    volatile uint8_t *p = emit32(f + 4, ADDI(A0, A0, 10));
    p = emit32(p, ADDI(A0, A0, 100));
    emit32(p, RET);
    fence_i();
    report_rewrite("grow_function", old1, old2, 5, run(f), 115);
}

/* 4. 1000 rounds of rewrite (lui + addiw, a new 32-bit value each time) and run. */
static void check_rewrite_loop(void)
{
    volatile uint8_t *f = pg(PG_LOOP);
    uint32_t w[2];
    li32(w, A0, -1);
    emit32(emit32(emit32(f, w[0]), w[1]), RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    unsigned bad = 0, first_bad = 0;
    long first_got = 0, first_want = 0;
    for (unsigned i = 0; i < 1000; i++) {
        int32_t v = (int32_t)(i * 0x9E3779B1U);
        li32(w, A0, v);
        st32(f, w[0]);
        st32(f + 4, w[1]);
        fence_i();
        long got = run(f);
        if (got != v && !bad++) {
            first_bad = i;
            first_got = got;
            first_want = v;
        }
    }
    char a[96];
    if (old1 != -1 || old2 != -1)
        report("rewrite_loop_1000", false, "the old code gave %ld and %ld, want -1", old1, old2);
    else
        report("rewrite_loop_1000", !bad, "%u of 1000 rounds wrong, first at round %u: got %s, "
               "want %ld", bad, first_bad, val(a, sizeof(a), first_got), first_want);
}

/* 4b. The same with a compressed c.li rewritten by sh, 512 rounds. */
static void check_rewrite_loop_compressed(void)
{
    volatile uint8_t *f = pg(PG_LOOP_C);
    emit16(emit16(f, C_LI(A0, 31)), C_RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    unsigned bad = 0;
    long first_got = 0, first_want = 0;
    for (int i = 0; i < 512; i++) {
        int v = (i * 37) % 64 - 32; /* never the same value twice in a row */
        st16(f, C_LI(A0, v));
        fence_i();
        long got = run(f);
        if (got != v && !bad++) {
            first_got = got;
            first_want = v;
        }
    }
    if (old1 != 31 || old2 != 31)
        report("rewrite_loop_compressed", false, "the old code gave %ld and %ld, want 31", old1,
               old2);
    else
        report("rewrite_loop_compressed", !bad, "%u of 512 rounds wrong, first: got %ld want %ld",
               bad, first_got, first_want);
}

/* 4c. A trampoline written on the stack (as GCC's nested-function trampolines are). */
static void __attribute__((noinline)) check_stack_trampoline(void)
{
    volatile uint32_t tramp[4] __attribute__((aligned(16)));
    tramp[0] = ADDI(A0, ZERO, 41);
    tramp[1] = RET;
    fence_i();
    long old1 = run(tramp), old2 = run(tramp);
    tramp[0] = ADDI(A0, ZERO, 42);
    fence_i();
    report_rewrite("stack_trampoline", old1, old2, 41, run(tramp), 42);
}

/* 5. Code that patches its own next instructions: sw to an instruction ahead of pc on the same
 * page, fence.i, then run it. a1 is the instruction to write. */
static void check_self_patch(void)
{
    volatile uint8_t *f = pg(PG_SELF);
    volatile uint8_t *p = emit32(f, AUIPC(T0, 0));
    p = emit32(p, SW(A1, T0, 12));
    p = emit32(p, FENCE_I);
    p = emit32(p, ADDI(A0, ZERO, 1)); /* +12: the patched instruction */
    emit32(p, RET);
    fence_i();
    unsigned long fn = (unsigned long)f;
    long old1 = run3(fn, 0, ADDI(A0, ZERO, 1), 0), old2 = run3(fn, 0, ADDI(A0, ZERO, 1), 0);
    long got = run3(fn, 0, ADDI(A0, ZERO, 2), 0);
    long got3 = run3(fn, 0, ADDI(A0, ZERO, 3), 0);
    char a[96], b[96];
    report("self_patch_ahead", old1 == 1 && old2 == 1 && got == 2 && got3 == 3,
           "the old code gave %ld, %ld (want 1), patched: %s and %s (want 2 and 3)", old1, old2,
           val(a, sizeof(a), got), val(b, sizeof(b), got3));
}

/* 5b. A loop that rewrites an instruction of its own body each round (addi t1, zero, k with
 * k = 0, 1, 2, ...) and sums t1: a0 = n(n-1)/2. */
static void check_self_patch_loop(void)
{
    volatile uint8_t *f = pg(PG_SELF_LOOP);
    volatile uint8_t *p = emit32(f, ADDI(T2, A0, 0)); /* t2 = n */
    p = emit32(p, AUIPC(T0, 0));                      /* t0 = f + 4 */
    p = emit32(p, ADDI(A0, ZERO, 0));
    p = emit32(p, LUI(T4, 0x100)); /* t4 = 1 << 20: +1 in an I-type immediate */
    volatile uint8_t *loop = p;    /* f + 16 = t0 + 12 */
    p = emit32(p, ADDI(T1, ZERO, 0));
    p = emit32(p, ADD(A0, A0, T1));
    p = emit32(p, LW(T3, T0, 12));
    p = emit32(p, ADD(T3, T3, T4));
    p = emit32(p, SW(T3, T0, 12));
    p = emit32(p, FENCE_I);
    p = emit32(p, ADDI(T2, T2, -1));
    p = emit32(p, BNE(T2, ZERO, (int32_t)(loop - p)));
    emit32(p, RET);
    fence_i();
    unsigned long fn = (unsigned long)f;
    long old1 = run3(fn, 1, 0, 0);
    st32(loop, ADDI(T1, ZERO, 0));
    fence_i();
    long old2 = run3(fn, 1, 0, 0);
    st32(loop, ADDI(T1, ZERO, 0));
    fence_i();
    long got = run3(fn, 100, 0, 0);
    char a[96];
    report("self_patch_loop", old1 == 0 && old2 == 0 && got == 4950,
           "one round gave %ld, %ld (want 0), 100 rounds %s (want 4950)", old1, old2,
           val(a, sizeof(a), got));
}

/* 6. Direct-jump chains: A jumps (jal) to B, run often enough to be chained; then B is
 * rewritten, then A's jump is retargeted to C. Once within a page, once across pages. */
static void check_chain(const char *name_target, const char *name_jump, volatile uint8_t *a,
                        volatile uint8_t *b, volatile uint8_t *c)
{
    emit32(a, JAL(ZERO, (int32_t)(b - a)));
    emit_ret_val(b, 1);
    emit_ret_val(c, 3);
    fence_i();
    long old1 = run(a), old2 = old1;
    for (int i = 0; i < 20; i++)
        old2 = old2 == old1 ? run(a) : old2;
    st32(b, ADDI(A0, ZERO, 2));
    fence_i();
    long got = run(a);
    for (int i = 0; i < 20; i++)
        got = got == 2 ? run(a) : got; /* keeps the first wrong result */
    report_rewrite(name_target, old1, old2, 1, got, 2);

    st32(a, JAL(ZERO, (int32_t)(c - a)));
    fence_i();
    got = run(a);
    for (int i = 0; i < 20; i++)
        got = got == 3 ? run(a) : got;
    report_rewrite(name_jump, 2, 2, 2, got, 3);
}

/* 7. Other kinds of store: amoswap.w, lr.w/sc.w, fsw (FP store). */
static void check_other_stores(void)
{
    volatile uint8_t *f = pg(PG_AMO);
    emit_ret_val(f, 0x11);
    fence_i();
    long old1 = run(f), old2 = run(f);
    uint32_t w = ADDI(A0, ZERO, 0x22);
    __asm__ volatile("amoswap.w zero, %0, (%1)" ::"r"(w), "r"(f) : "memory");
    fence_i();
    report_rewrite("rewrite_amoswap", old1, old2, 0x11, run(f), 0x22);

    old1 = run(f);
    w = ADDI(A0, ZERO, 0x33);
    unsigned long prev, fail;
    do {
        __asm__ volatile("lr.w %0, (%2)\n\tsc.w %1, %3, (%2)"
                         : "=&r"(prev), "=&r"(fail)
                         : "r"(f), "r"(w)
                         : "memory");
    } while (fail);
    fence_i();
    report_rewrite("rewrite_lr_sc", old1, old1, 0x22, run(f), 0x33);

    old1 = run(f);
    w = ADDI(A0, ZERO, 0x44);
    __asm__ volatile("fmv.w.x ft0, %0\n\tfsw ft0, 0(%1)" ::"r"(w), "r"(f) : "ft0", "memory");
    fence_i();
    report_rewrite("rewrite_fsw", old1, old1, 0x33, run(f), 0x44);
}

/* 7b. A rewrite made visible by SBI remote fence.i (to this hart) instead of fence.i. */
static void check_sbi_fence_i(unsigned long hartid)
{
    volatile uint8_t *f = pg(PG_SBI);
    emit_ret_val(f, 7);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st32(f, ADDI(A0, ZERO, 8));
    struct sbiret r = sbi_remote_fence_i(1UL << hartid, 0);
    long got = run(f);
    if (r.error)
        report("rewrite_sbi_remote_fence_i", false, "sbi_remote_fence_i error %ld", r.error);
    else
        report_rewrite("rewrite_sbi_remote_fence_i", old1, old2, 7, got, 8);
}

/* ---- Sv39 ---- */

#define PTE_V (1UL << 0)
#define PTE_R (1UL << 1)
#define PTE_W (1UL << 2)
#define PTE_X (1UL << 3)
#define PTE_G (1UL << 5)
#define PTE_A (1UL << 6)
#define PTE_D (1UL << 7)
#define PTE(pa, flags) ((((unsigned long)(pa) >> 12) << 10) | (flags))
#define LEAF (PTE_V | PTE_A | PTE_D)

/* 0x0000_0000 and 0x8000_0000: identity gigapages (devices; RAM and this image, RWX).
 * 0x4000_0000: a window of 4 KiB pages, slot n at VA_WINDOW + n * 4 KiB. */
#define VA_WINDOW 0x40000000UL
#define VA(slot) (VA_WINDOW + (unsigned long)(slot) * PAGE)
enum {
    SLOT_MMU,      /* RWX -> PG_MMU */
    SLOT_MMU_LO,   /* RWX -> PG_MMU_HI (virtually contiguous, physically reversed) */
    SLOT_MMU_HI,   /* RWX -> PG_MMU_LO */
    SLOT_ALIAS_X,  /* R+X -> PG_ALIAS */
    SLOT_ALIAS_W,  /* R+W -> PG_ALIAS */
    SLOT_EXEC_X,   /* R+X -> PG_ALIAS_EXEC (written through the identity RWX gigapage) */
    SLOT_FLUSH_X,  /* R+X -> PG_ALIAS_FLUSH */
    SLOT_FLUSH_W,  /* R+W -> PG_ALIAS_FLUSH */
    SLOT_REMAP,    /* R+X -> PG_REMAP_A or PG_REMAP_B */
};

static uint64_t pt_root[512] __attribute__((aligned(4096)));
static uint64_t pt_l1[512] __attribute__((aligned(4096)));
static uint64_t pt_l0[512] __attribute__((aligned(4096)));

static void map(int slot, volatile void *pa, unsigned long perms)
{
    pt_l0[slot] = PTE(pa, LEAF | perms);
}

static void mmu_on(void)
{
    pt_root[0] = PTE(0x00000000UL, LEAF | PTE_R | PTE_W | PTE_G);
    pt_root[1] = PTE(pt_l1, PTE_V);
    pt_root[2] = PTE(0x80000000UL, LEAF | PTE_R | PTE_W | PTE_X | PTE_G);
    pt_l1[0] = PTE(pt_l0, PTE_V);
    map(SLOT_MMU, pg(PG_MMU), PTE_R | PTE_W | PTE_X);
    map(SLOT_MMU_LO, pg(PG_MMU_HI), PTE_R | PTE_W | PTE_X);
    map(SLOT_MMU_HI, pg(PG_MMU_LO), PTE_R | PTE_W | PTE_X);
    map(SLOT_ALIAS_X, pg(PG_ALIAS), PTE_R | PTE_X);
    map(SLOT_ALIAS_W, pg(PG_ALIAS), PTE_R | PTE_W);
    map(SLOT_EXEC_X, pg(PG_ALIAS_EXEC), PTE_R | PTE_X);
    map(SLOT_FLUSH_X, pg(PG_ALIAS_FLUSH), PTE_R | PTE_X);
    map(SLOT_FLUSH_W, pg(PG_ALIAS_FLUSH), PTE_R | PTE_W);
    map(SLOT_REMAP, pg(PG_REMAP_A), PTE_R | PTE_X);
    sfence_vma();
    csr_write(satp, SATP_MODE_SV39 | ((unsigned long)pt_root >> 12));
    sfence_vma();
}

static void mmu_off(void)
{
    csr_write(satp, 0);
    sfence_vma();
}

#define VP(slot) ((volatile uint8_t *)VA(slot))

/* 8. Run through a virtual address, rewrite through the same virtual address. */
static void check_mmu_same_va(void)
{
    volatile uint8_t *f = VP(SLOT_MMU);
    emit_ret_val(f, 1);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st32(f, ADDI(A0, ZERO, 2));
    fence_i();
    report_rewrite("mmu_rewrite_same_va", old1, old2, 1, run(f), 2);
}

/* 8b. A function across a virtual page boundary whose two pages are not physically adjacent
 * (the second virtual page is the lower physical one); the part on the second page is
 * rewritten. */
static void check_mmu_cross_page(void)
{
    volatile uint8_t *f = VP(SLOT_MMU_HI) - 8;
    volatile uint8_t *p = emit32(f, ADDI(A0, ZERO, 1));
    p = emit32(p, ADDI(A0, A0, 2));
    volatile uint8_t *second = p;
    p = emit32(p, ADDI(A0, A0, 4));
    emit32(p, RET);
    fence_i();
    long old1 = run(f), old2 = run(f);
    st32(second, ADDI(A0, A0, 40));
    fence_i();
    report_rewrite("mmu_cross_page_noncontiguous", old1, old2, 7, run(f), 43);
}

/* 9. The alias case: one physical page mapped R+X at one virtual address and R+W at another
 * (as Linux's linear map aliases user pages). The code is written through the W alias, run
 * through the X alias, rewritten through the W alias: four rounds, all must be seen. Nothing
 * (no SBI call, no output) happens between the stores and the runs. */
static void check_alias(void)
{
    volatile uint8_t *x = VP(SLOT_ALIAS_X), *w = VP(SLOT_ALIAS_W);
    emit_ret_val(w, 1);
    fence_i();
    long old1 = run(x), old2 = run(x);
    int seen = 0, first_k = 0;
    long first_got = 0;
    uint32_t first_mem = 0;
    for (int k = 2; k <= 5; k++) {
        st32(w, ADDI(A0, ZERO, k));
        fence_i();
        long got = run(x);
        if (got == k) {
            seen++;
        } else if (!first_k) {
            first_k = k;
            first_got = got;
            first_mem = *(volatile uint32_t *)x;
        }
    }
    char a[96];
    if (old1 != 1 || old2 != 1)
        report("alias_rx_rw", false, "the old code gave %ld and %ld, want 1", old1, old2);
    else
        report("alias_rx_rw", seen == 4,
               "%d of 4 rewrites through the R+W alias seen by the R+X alias; first miss: got %s, "
               "want %d, though the X alias reads insn 0x%08x (want 0x%08x): stale translation",
               seen, val(a, sizeof(a), first_got), first_k, first_mem,
               ADDI(A0, ZERO, first_k));
}

/* 9b. Run through an R+X alias, rewrite through another mapping that is executable too (the
 * identity RWX gigapage). */
static void check_alias_exec_writer(void)
{
    volatile uint8_t *x = VP(SLOT_EXEC_X), *w = pg(PG_ALIAS_EXEC);
    emit_ret_val(w, 1);
    fence_i();
    long old1 = run(x), old2 = run(x);
    st32(w, ADDI(A0, ZERO, 2));
    fence_i();
    long got2 = run(x);
    st32(w, ADDI(A0, ZERO, 3));
    fence_i();
    long got3 = run(x);
    char a[96], b[96];
    if (old1 != 1 || old2 != 1)
        report("alias_write_via_exec_mapping", false, "the old code gave %ld and %ld, want 1",
               old1, old2);
    else
        report("alias_write_via_exec_mapping", got2 == 2 && got3 == 3,
               "after two rewrites got %s and %s, want 2 and 3", val(a, sizeof(a), got2),
               val(b, sizeof(b), got3));
}

/* 9c. The alias case again, with an sfence.vma between the run and the rewrite (a fresh TLB
 * entry for the W alias). */
static void check_alias_after_sfence(void)
{
    volatile uint8_t *x = VP(SLOT_FLUSH_X), *w = VP(SLOT_FLUSH_W);
    emit_ret_val(w, 1);
    fence_i();
    long old1 = run(x), old2 = run(x);
    sfence_vma();
    st32(w, ADDI(A0, ZERO, 2));
    fence_i();
    report_rewrite("alias_rx_rw_after_sfence_vma", old1, old2, 1, run(x), 2);
}

/* 10. Remap: the leaf PTE of an executed virtual page is pointed at another physical page
 * holding other code; sfence.vma (global, then for the one address); and back. */
static void check_remap(void)
{
    volatile uint8_t *v = VP(SLOT_REMAP);
    emit_ret_val(pg(PG_REMAP_A), 0x71);
    emit_ret_val(pg(PG_REMAP_B), 0x72);
    fence_i();
    long old1 = run(v), old2 = run(v);
    map(SLOT_REMAP, pg(PG_REMAP_B), PTE_R | PTE_X);
    sfence_vma();
    long got = run(v);
    report_rewrite("remap_leaf_pte", old1, old2, 0x71, got, 0x72);

    old1 = run(v);
    map(SLOT_REMAP, pg(PG_REMAP_A), PTE_R | PTE_X);
    sfence_vma();
    report_rewrite("remap_back", old1, old1, 0x72, run(v), 0x71);

    old1 = run(v);
    map(SLOT_REMAP, pg(PG_REMAP_B), PTE_R | PTE_X);
    sfence_vma_addr(VA(SLOT_REMAP));
    report_rewrite("remap_sfence_vma_addr", old1, old1, 0x71, run(v), 0x72);
}

/* 10b. After the MMU is off: the page rewritten through its virtual address runs at its
 * physical address with the latest code. */
static void check_phys_after_mmu_off(void)
{
    volatile uint8_t *f = pg(PG_MMU);
    long got = run(f);
    char a[96];
    report("phys_exec_after_mmu_off", got == 2,
           "the page rewritten through VA 0x%lx runs at PA %p: got %s, want 2", VA(SLOT_MMU),
           (const void *)f, val(a, sizeof(a), got));
}

/* ---- 11. a loader ---- */

static void copy64(volatile uint8_t *dst, const void *src, size_t n)
{
    const uint64_t *s = src;
    volatile uint64_t *d = (volatile uint64_t *)dst;
    for (size_t i = 0; i < (n + 7) / 8; i++)
        d[i] = s[i];
}

static void check_loader(void)
{
    volatile uint8_t *entry = load_area;
    size_t len1 = (size_t)(smc_prog1_end - smc_prog1), len2 = (size_t)(smc_prog2_end - smc_prog2);
    if (len2 > sizeof(load_area) || len1 <= PAGE || len2 <= 2 * PAGE) {
        report("loader_memcpy", false, "program sizes %zu and %zu", len1, len2);
        return;
    }
    /* A stub runs first, so the page is translated before the real load. */
    emit_ret_val(entry, -1);
    fence_i();
    long stub = run(entry);
    memcpy(load_area, smc_prog1, len1);
    fence_i();
    long got1 = run(entry), got1b = run(entry);
    char a[96];
    report("loader_memcpy", stub == -1 && got1 == 1500 && got1b == 1500,
           "stub gave %ld (want -1), the %zu-byte program %s and %ld (want 1500)", stub, len1,
           val(a, sizeof(a), got1), got1b);

    copy64(load_area, smc_prog2, len2);
    fence_i();
    long got2 = run(entry), got2b = run(entry);
    report_rewrite("loader_overwrite", got1, got1b, 1500, got2, 15077);

    memset(load_area, 0, sizeof(load_area));
    memcpy(load_area, smc_prog1, len1);
    fence_i();
    report_rewrite("loader_reload_first", got2, got2b, 15077, run(entry), 1500);
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(fdt);
    bootarg_str("xfail", xfail_list, sizeof(xfail_list), "");
    trap_set_fallback(on_trap);
    puts("smc: start");

    check_same_page();
    check_own_page_stores();
    check_cross_page();
    check_straddle();
    check_mid_sw();
    check_mid_sh();
    check_mid_sb();
    check_mid_sd();
    check_length_change();
    check_grow();
    check_rewrite_loop();
    check_rewrite_loop_compressed();
    check_stack_trampoline();
    check_self_patch();
    check_self_patch_loop();
    check_chain("chained_jump_target_rewritten", "chained_jump_retargeted", pg(PG_CHAIN),
                pg(PG_CHAIN) + 256, pg(PG_CHAIN) + 512);
    check_chain("cross_page_jump_target_rewritten", "cross_page_jump_retargeted", pg(PG_CHAIN_X),
                pg(PG_CHAIN_X2), pg(PG_CHAIN_X2) + 256);
    check_other_stores();
    check_sbi_fence_i(hartid);

    mmu_on();
    check_mmu_same_va();
    check_mmu_cross_page();
    check_alias();
    check_alias_exec_writer();
    check_alias_after_sfence();
    check_remap();
    mmu_off();
    check_phys_after_mmu_off();

    check_loader();

    trap_set_fallback(NULL);
    printf("1..%d\n", n_checks);
    if (n_xfail)
        printf("smc: %d passed, %d failed, %d expected failure%s\n", n_passed, n_failed, n_xfail,
               n_xfail == 1 ? "" : "s");
    else
        printf("smc: %d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
