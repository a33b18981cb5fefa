/* traps: a self-checking trap test. For each case it triggers one trap and checks scause,
 * sepc and stval against the RISC-V privileged spec, and that the handler ran exactly once.
 *
 * Output: one "PASS <name>" or "FAIL <name>: <details>" line per case (some with the observed
 * stval in parentheses), then "traps: N passed, M failed". Exits non-zero if any case failed.
 */
#include "rt.h"

/* Labels in cases.S */
extern char t_ebreak[], t_cebreak[], t_illegal32[], t_illegal16[], t_load_pf[], t_store_pf[],
    t_cload_pf[], t_cstore_pf[], t_amoadd[], t_ebreak_resume[], user_page[], t_uecall[],
    user_return[];
void do_ebreak(void);
void do_cebreak(void);
void do_illegal32(void);
void do_illegal16(void);
void do_load_pf(unsigned long va);
void do_store_pf(unsigned long va);
void do_cload_pf(unsigned long va);
void do_cstore_pf(unsigned long va);
void do_fetch(unsigned long va);
unsigned long do_amoadd(unsigned long addr, unsigned long inc);
unsigned long do_ebreak_resume(void);
unsigned long run_user(unsigned long entry, unsigned long user_sp);

/* ---- the test handler ---- */

enum resume { RESUME_SKIP, RESUME_RA, RESUME_USER_RETURN };

static volatile struct {
    enum resume how;
    unsigned long entries;
    unsigned long scause, sepc, stval, sstatus, a0, a7;
} rec;

static void test_handler(struct trap_frame *tf)
{
    rec.entries++;
    rec.scause = tf->scause;
    rec.sepc = tf->sepc;
    rec.stval = tf->stval;
    rec.sstatus = tf->sstatus;
    rec.a0 = tf->regs[REG_A0];
    rec.a7 = tf->regs[REG_A7];
    if (rec.entries > 8) {
        printf("FAIL: trap storm (scause=0x%lx sepc=0x%lx)\n", tf->scause, tf->sepc);
        rt_exit(1);
    }
    switch (rec.how) {
    case RESUME_SKIP:
        trap_skip_insn(tf);
        break;
    case RESUME_RA:
        tf->sepc = tf->regs[REG_RA];
        break;
    case RESUME_USER_RETURN:
        tf->sepc = (unsigned long)user_return;
        tf->sstatus |= SSTATUS_SPP; /* back to S-mode */
        tf->regs[REG_A0] = 0xC0FFEE;
        break;
    }
}

static void arm(enum resume how)
{
    rec.how = how;
    rec.entries = 0;
    rec.scause = rec.sepc = rec.stval = rec.sstatus = ~0UL;
}

/* ---- checking ---- */

static int passed, failed;


struct expect {
    unsigned long scause, sepc;
    unsigned long stval, stval_alt; /* stval must equal one of these */
    bool from_user;
};

static void check(const char *name, const struct expect *e)
{
    char why[200];
    size_t n = 0;
    why[0] = '\0';
    if (rec.entries != 1)
        n += (size_t)snprintf(why + n, sizeof(why) - n, " entries=%lu (want 1)", rec.entries);
    if (rec.entries) {
        if (rec.scause != e->scause)
            n += (size_t)snprintf(why + n, sizeof(why) - n, " scause=0x%lx (want 0x%lx)",
                                  rec.scause, e->scause);
        if (rec.sepc != e->sepc)
            n += (size_t)snprintf(why + n, sizeof(why) - n, " sepc=0x%lx (want 0x%lx)",
                                  rec.sepc, e->sepc);
        if (rec.stval != e->stval && rec.stval != e->stval_alt)
            n += (size_t)snprintf(why + n, sizeof(why) - n, " stval=0x%lx (want 0x%lx)",
                                  rec.stval, e->stval);
        bool spp = (rec.sstatus & SSTATUS_SPP) != 0;
        if (spp == e->from_user)
            n += (size_t)snprintf(why + n, sizeof(why) - n, " sstatus.SPP=%d (want %d)", spp,
                                  !e->from_user);
    }
    if (n == 0) {
        passed++;
        if (e->stval != e->stval_alt)
            printf("PASS %s (stval=0x%lx)\n", name, rec.stval);
        else
            printf("PASS %s\n", name);
    } else {
        failed++;
        printf("FAIL %s:%s\n", name, why);
    }
}

static void result(const char *name, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void result(const char *name, bool ok, const char *fmt, ...)
{
    if (ok) {
        passed++;
        printf("PASS %s\n", name);
        return;
    }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

#define U(x) ((unsigned long)(x))

/* ---- Sv39 page tables ---- */

#define PTE_V (1UL << 0)
#define PTE_R (1UL << 1)
#define PTE_W (1UL << 2)
#define PTE_X (1UL << 3)
#define PTE_U (1UL << 4)
#define PTE_G (1UL << 5)
#define PTE_A (1UL << 6)
#define PTE_D (1UL << 7)
#define PTE(pa, flags) ((((unsigned long)(pa) >> 12) << 10) | (flags))

/* Virtual layout: 0x8000_0000..0xbfff_ffff identity-mapped (a 1 GiB page, S-only RWX) and
 * one 2 MiB window of 4 KiB pages at 0x4000_0000:
 *   +0x0000 -> data_page (S, RW)     +0x1000 unmapped
 *   +0x2000 -> user_page (U, RX)     +0x3000 -> user_stack (U, RW)  */
#define VA_WINDOW 0x40000000UL
#define VA_DATA (VA_WINDOW + 0x0000)
#define VA_HOLE (VA_WINDOW + 0x1000)
#define VA_USER_CODE (VA_WINDOW + 0x2000)
#define VA_USER_STACK (VA_WINDOW + 0x3000)

static uint64_t pt_root[512] __attribute__((aligned(4096)));
static uint64_t pt_l1[512] __attribute__((aligned(4096)));
static uint64_t pt_l0[512] __attribute__((aligned(4096)));
static volatile uint64_t data_page[512] __attribute__((aligned(4096)));
static uint64_t user_stack[512] __attribute__((aligned(4096)));

static void mmu_on(void)
{
    const unsigned long leaf = PTE_V | PTE_A | PTE_D;
    pt_root[2] = PTE(0x80000000UL, leaf | PTE_R | PTE_W | PTE_X | PTE_G);
    pt_root[1] = PTE(pt_l1, PTE_V);
    pt_l1[0] = PTE(pt_l0, PTE_V);
    pt_l0[0] = PTE(data_page, leaf | PTE_R | PTE_W);
    pt_l0[1] = 0;
    pt_l0[2] = PTE(user_page, leaf | PTE_R | PTE_X | PTE_U);
    pt_l0[3] = PTE(user_stack, leaf | PTE_R | PTE_W | PTE_U);
    sfence_vma();
    csr_write(satp, SATP_MODE_SV39 | ((unsigned long)pt_root >> 12));
    sfence_vma();
}

static void mmu_off(void)
{
    csr_write(satp, 0);
    sfence_vma();
}

/* ---- cases ---- */

static void case_ebreak(void)
{
    arm(RESUME_SKIP);
    do_ebreak();
    struct expect e = {EXC_BREAKPOINT, U(t_ebreak), 0, U(t_ebreak), false};
    check("ebreak", &e);
}

static void case_cebreak(void)
{
    arm(RESUME_SKIP);
    do_cebreak();
    struct expect e = {EXC_BREAKPOINT, U(t_cebreak), 0, U(t_cebreak), false};
    check("c.ebreak", &e);
}

static void case_illegal32(void)
{
    arm(RESUME_SKIP);
    do_illegal32();
    struct expect e = {EXC_ILLEGAL_INSN, U(t_illegal32), 0, 0xc0001073UL, false};
    check("illegal_after_compressed", &e);
}

static void case_illegal16(void)
{
    arm(RESUME_SKIP);
    do_illegal16();
    struct expect e = {EXC_ILLEGAL_INSN, U(t_illegal16), 0, 0, false};
    check("illegal_compressed_zero", &e);
}

static void case_sv39_map(void)
{
    data_page[5] = 0x5EED5EED5EEDULL;
    arm(RESUME_SKIP);
    uint64_t v = *(volatile uint64_t *)(VA_DATA + 5 * 8);
    result("sv39_mapping", v == 0x5EED5EED5EEDULL && rec.entries == 0,
           "read 0x%lx through VA 0x%lx, %lu traps", (unsigned long)v, VA_DATA + 40, rec.entries);
}

static void case_load_pf(void)
{
    arm(RESUME_SKIP);
    do_load_pf(VA_HOLE + 0x100);
    struct expect e = {EXC_LOAD_PAGE_FAULT, U(t_load_pf), VA_HOLE + 0x108, VA_HOLE + 0x108,
                       false};
    check("load_page_fault", &e);
}

static void case_store_pf(void)
{
    arm(RESUME_SKIP);
    do_store_pf(VA_HOLE + 0x200);
    struct expect e = {EXC_STORE_PAGE_FAULT, U(t_store_pf), VA_HOLE + 0x210, VA_HOLE + 0x210,
                       false};
    check("store_page_fault", &e);
}

static void case_cload_pf(void)
{
    arm(RESUME_SKIP);
    do_cload_pf(VA_HOLE + 0x300);
    struct expect e = {EXC_LOAD_PAGE_FAULT, U(t_cload_pf), VA_HOLE + 0x304, VA_HOLE + 0x304,
                       false};
    check("c.lw_page_fault", &e);
}

static void case_cstore_pf(void)
{
    arm(RESUME_SKIP);
    do_cstore_pf(VA_HOLE + 0x400);
    struct expect e = {EXC_STORE_PAGE_FAULT, U(t_cstore_pf), VA_HOLE + 0x40c, VA_HOLE + 0x40c,
                       false};
    check("c.sw_page_fault", &e);
}

static void case_fetch_pf(void)
{
    arm(RESUME_RA);
    do_fetch(VA_HOLE + 0x40);
    struct expect e = {EXC_INSN_PAGE_FAULT, VA_HOLE + 0x40, VA_HOLE + 0x40, VA_HOLE + 0x40,
                       false};
    check("insn_page_fault", &e);
}

static void case_user_ecall(void)
{
    arm(RESUME_USER_RETURN);
    unsigned long va_entry = VA_USER_CODE;
    unsigned long ret = run_user(va_entry, VA_USER_STACK + 4096);
    unsigned long va_ecall = VA_USER_CODE + (U(t_uecall) - U(user_page));
    struct expect e = {EXC_ECALL_U, va_ecall, 0, 0, true};
    check("ecall_from_u", &e);
    result("ecall_from_u_regs", ret == 0xC0FFEE && rec.a0 == 0x1234 && rec.a7 == 0x55,
           "a0=0x%lx a7=0x%lx in the frame, run_user returned 0x%lx", rec.a0, rec.a7, ret);
}

static uint32_t amo_buf[4] __attribute__((aligned(16)));

static void case_amo_misaligned(void)
{
    amo_buf[0] = 0x11111111;
    amo_buf[1] = 0x22222222;
    unsigned long addr = U(amo_buf) + 2;
    arm(RESUME_SKIP);
    do_amoadd(addr, 1);
    struct expect e = {EXC_STORE_MISALIGNED, U(t_amoadd), addr, addr, false};
    check("amo_misaligned", &e);
    result("amo_misaligned_no_write", amo_buf[0] == 0x11111111 && amo_buf[1] == 0x22222222,
           "memory changed to 0x%08x 0x%08x", amo_buf[0], amo_buf[1]);
}

static void case_rdtime(void)
{
    arm(RESUME_SKIP);
    uint64_t t1 = time_now();
    for (volatile int i = 0; i < 20000; i++)
        ;
    uint64_t t2 = time_now();
    for (volatile int i = 0; i < 20000; i++)
        ;
    uint64_t t3 = time_now();
    result("rdtime_increases", t1 < t2 && t2 < t3 && rec.entries == 0,
           "t1=%lu t2=%lu t3=%lu, %lu traps reached the guest", (unsigned long)t1,
           (unsigned long)t2, (unsigned long)t3, rec.entries);
}

static void case_ebreak_resume(void)
{
    arm(RESUME_SKIP);
    unsigned long after = do_ebreak_resume();
    result("ebreak_resume_once", rec.entries == 1 && after == 1 && rec.sepc == U(t_ebreak_resume),
           "handler entries=%lu (want 1), instruction after ebreak ran %lu times (want 1), "
           "sepc=0x%lx (want 0x%lx)",
           rec.entries, after, rec.sepc, U(t_ebreak_resume));
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    trap_set_fallback(test_handler);
    puts("traps: start");

    case_ebreak();
    case_cebreak();
    case_illegal32();
    case_illegal16();

    mmu_on();
    case_sv39_map();
    case_load_pf();
    case_store_pf();
    case_cload_pf();
    case_cstore_pf();
    case_fetch_pf();
    case_user_ecall();
    mmu_off();

    case_amo_misaligned();
    case_rdtime();
    case_ebreak_resume();

    trap_set_fallback(NULL);
    printf("traps: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
