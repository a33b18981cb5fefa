/* smp: a self-checking test of a multi-hart machine through the SBI (HSM, IPI, RFENCE).
 *
 * The boot hart (any id: OpenSBI picks one) starts every other hart with HSM hart_start; then
 * all harts race amoadd.w, amoadd.d and an LR/SC increment on shared counters and the totals
 * must be exact. Then, one hart at a time through a mailbox: IPIs (SBI IPI with a mask, with
 * base -1, the legacy call with a mask in memory; each hart takes SSIP through its own
 * stvec), a remote fence.i after rewriting code another hart has run, a remote sfence.vma
 * after changing a PTE another hart uses, hart_stop and a restart, and hart_suspend
 * retentive and non-retentive. Bootarg "hostile" adds bad calls (hv: they must get their
 * error codes; OpenSBI would let some of them start a hart at a bad address).
 *
 * Output (the boot hart's alone): "PASS <name>" or "FAIL <name>: <details>" per check, then
 * "smp: N passed, M failed". Exits non-zero if any check failed.
 */
#include "rt.h"

#define MAX_HARTS 8
#define ITERS 20000UL
#define WAIT_S 20
#define MAGIC 0x5150000UL

#define SBI_EXT_FWFT 0x46574654UL
#define SBI_HSM_HART_SUSPEND 3
#define HSM_START_PENDING 2
#define HSM_STOP_PENDING 3
#define HSM_SUSPENDED 4
#define SUSPEND_RETENTIVE 0x0UL
#define SUSPEND_NON_RETENTIVE 0x80000000UL

extern char smp_hart_entry[], smp_resume_entry[];
NORETURN void smp_hart_main(unsigned long hartid, unsigned long opaque, unsigned long resumed);

#define result rt_check
#define passed rt_passed
#define failed rt_failed

/* ---- shared state (every hart's) ---- */

static unsigned long nharts, boot;
static volatile unsigned long checked_in[MAX_HARTS]; /* times each hart entered */
static volatile unsigned long got_a0[MAX_HARTS], got_a1[MAX_HARTS], got_satp[MAX_HARTS];
static volatile unsigned long got_sie[MAX_HARTS];
static volatile unsigned long go, done;
static volatile uint32_t count32;
static volatile uint64_t count64, count_lrsc;
static volatile unsigned long ipis[MAX_HARTS]; /* SSIP taken, by hart */
static volatile unsigned long ipi_stvec_ok[MAX_HARTS];
/* the mailbox: the boot hart writes cmd[h], hart h does it, sets cmd[h] = 0 and reply[h] */
static volatile unsigned long cmd[MAX_HARTS], arg[MAX_HARTS], reply[MAX_HARTS];
static volatile unsigned long legacy_mask;
static volatile unsigned long sc_retries[MAX_HARTS]; /* schedule-dependent: printed */

enum { CMD_NONE, CMD_CALL_CODE, CMD_PAGING_ON, CMD_READ_VA, CMD_PAGING_OFF, CMD_STOP,
       CMD_SUSPEND_RET, CMD_SUSPEND_NONRET, CMD_CHECK_SSIP, CMD_LR_WAIT_SC };
static volatile uint64_t lr_word;
static volatile unsigned long lr_loaded, lr_stored;

/* code another hart runs: "li a0, N; ret" (rewritten in place) */
static uint32_t code_buf[16] __attribute__((aligned(64)));

/* Sv39: VA 0x40000000 is one 4 KiB page of page_a or page_b; RAM is identity-mapped by a
 * gigapage (0x80000000..0xbfffffff). */
#define TEST_VA 0x40000000UL
static uint64_t pt_root[512] __attribute__((aligned(4096)));
static uint64_t pt_mid[512] __attribute__((aligned(4096)));
static uint64_t pt_leaf[512] __attribute__((aligned(4096)));
static volatile uint64_t page_a[512] __attribute__((aligned(4096)));
static volatile uint64_t page_b[512] __attribute__((aligned(4096)));
#define PTE_V 1UL
#define PTE_R 2UL
#define PTE_W 4UL
#define PTE_X 8UL
#define PTE_A 0x40UL
#define PTE_D 0x80UL
#define PTE_LEAF (PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)
#define PTE_TABLE(p) ((((unsigned long)(p)) >> 12) << 10 | PTE_V)
#define PTE_PAGE(p) ((((unsigned long)(p)) >> 12) << 10 | PTE_LEAF)

static struct sbiret hart_suspend(unsigned long type, unsigned long addr, unsigned long opaque)
{
    return SBI_CALL3(SBI_EXT_HSM, SBI_HSM_HART_SUSPEND, type, addr, opaque);
}

static long legacy_send_ipi(const volatile unsigned long *mask)
{
    register unsigned long a0 __asm__("a0") = (unsigned long)mask;
    register unsigned long a7 __asm__("a7") = 4; /* legacy send_ipi */
    __asm__ volatile("ecall" : "+r"(a0) : "r"(a7) : "memory", "a1");
    return (long)a0;
}

static unsigned long hartid_now(void)
{
    unsigned long tp;
    __asm__ volatile("mv %0, tp" : "=r"(tp));
    return tp;
}

static void on_soft(struct trap_frame *tf)
{
    unsigned long h = hartid_now();
    csr_clear(sip, SIP_SSIP);
    if (h < MAX_HARTS) {
        if (tf->scause == (SCAUSE_INTERRUPT | IRQ_S_SOFT) &&
            csr_read(stvec) == (unsigned long)&trap_vector)
            ipi_stvec_ok[h]++;
        __atomic_fetch_add(&ipis[h], 1, __ATOMIC_SEQ_CST);
    }
}

/* ---- the race ---- */

static void race(void)
{
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
        ;
    for (unsigned long i = 0; i < ITERS; i++) {
        __asm__ volatile("amoadd.w zero, %1, (%0)" ::"r"(&count32), "r"(1) : "memory");
        __asm__ volatile("amoadd.d zero, %1, (%0)" ::"r"(&count64), "r"(1L) : "memory");
        unsigned long tmp, fail;
        for (;;) {
            __asm__ volatile("lr.d %0, (%2)\n"
                             "addi %0, %0, 1\n"
                             "sc.d %1, %0, (%2)\n"
                             : "=&r"(tmp), "=&r"(fail)
                             : "r"(&count_lrsc)
                             : "memory");
            if (!fail)
                break;
            sc_retries[hartid_now()]++;
        }
    }
    __atomic_fetch_add(&done, 1, __ATOMIC_SEQ_CST);
}

/* ---- bootarg work=N: every hart computes (a benchmark), nothing is checked ---- */

static unsigned long work_iters;
static volatile uint64_t work_sum;

static void work(void)
{
    uint64_t x = 0x9E3779B97F4A7C15UL ^ hartid_now();
    for (unsigned long i = 0; i < work_iters; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x += i * 0x2545F4914F6CDD1DUL;
    }
    __atomic_fetch_add(&work_sum, x, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&done, 1, __ATOMIC_SEQ_CST);
}

/* ---- secondary harts ---- */

static unsigned long call_code(void)
{
    unsigned long (*fn)(void) = (unsigned long (*)(void))(void *)code_buf;
    return fn();
}

NORETURN void smp_hart_main(unsigned long hartid, unsigned long opaque, unsigned long resumed)
{
    unsigned long h = hartid;
    got_a0[h] = hartid;
    got_a1[h] = opaque;
    got_satp[h] = csr_read(satp);
    got_sie[h] = csr_read(sstatus) & SSTATUS_SIE;
    __atomic_fetch_add(&checked_in[h], 1, __ATOMIC_SEQ_CST);
    if (work_iters) {
        work();
        for (;;)
            __asm__ volatile("wfi");
    }
    if (!resumed)
        race();
    else
        cmd[h] = CMD_NONE; /* the suspend command is done: it resumed here */
    csr_set(sie, SIE_SSIE);
    irq_enable();
    for (;;) {
        unsigned long c = cmd[h];
        if (c == CMD_NONE)
            continue;
        unsigned long r = 0;
        switch (c) {
        case CMD_CALL_CODE:
            __asm__ volatile("fence.i" ::: "memory");
            r = call_code();
            break;
        case CMD_PAGING_ON:
            csr_write(satp, SATP_MODE_SV39 | ((unsigned long)pt_root >> 12));
            __asm__ volatile("sfence.vma" ::: "memory");
            break;
        case CMD_READ_VA:
            r = *(volatile uint64_t *)TEST_VA;
            break;
        case CMD_PAGING_OFF:
            csr_write(satp, 0);
            __asm__ volatile("sfence.vma" ::: "memory");
            break;
        case CMD_STOP:
            cmd[h] = CMD_NONE;
            irq_disable();
            SBI_CALL0(SBI_EXT_HSM, SBI_HSM_HART_STOP);
            reply[h] = 0xdead; /* hart_stop returned: it failed */
            continue;
        case CMD_SUSPEND_RET: {
            irq_disable(); /* wake on SSIP (sie.SSIE) without taking it */
            unsigned long before = csr_read(sip);
            (void)before;
            struct sbiret s = hart_suspend(SUSPEND_RETENTIVE, 0, 0);
            r = (unsigned long)s.error == 0 && (csr_read(sip) & SIP_SSIP) ? 1 : 2 + s.error;
            irq_enable(); /* take the IPI now */
            break;
        }
        case CMD_SUSPEND_NONRET:
            irq_disable();
            hart_suspend(SUSPEND_NON_RETENTIVE, (unsigned long)smp_resume_entry, arg[h]);
            reply[h] = 0xdead; /* it returned: it failed */
            continue;
        case CMD_CHECK_SSIP:
            r = ipis[h];
            break;
        case CMD_LR_WAIT_SC: { /* lr.d, wait for the boot hart's store, sc.d: 0 if it held */
            unsigned long v, fail;
            __asm__ volatile("lr.d %0, (%2)\n"
                             "li t0, 1\n"
                             "sd t0, (%3)\n"
                             "1: ld t0, (%4)\n"
                             "beqz t0, 1b\n"
                             "sc.d %1, %0, (%2)\n"
                             : "=&r"(v), "=&r"(fail)
                             : "r"(&lr_word), "r"(&lr_loaded), "r"(&lr_stored)
                             : "t0", "memory");
            r = fail ? 1 : 0;
            break;
        }
        }
        reply[h] = r;
        __atomic_store_n(&cmd[h], CMD_NONE, __ATOMIC_RELEASE);
    }
}

/* ---- the boot hart ---- */

static uint64_t deadline(void) { return time_now() + (uint64_t)WAIT_S * timer_hz(); }

/* Wait until *p == want (or the deadline): true if it did. */
static bool wait_eq(volatile unsigned long *p, unsigned long want)
{
    uint64_t end = deadline();
    while (*p != want)
        if (time_now() > end)
            return false;
    return true;
}

static bool wait_status(unsigned long h, long want)
{
    uint64_t end = deadline();
    for (;;) {
        struct sbiret r = sbi_hart_get_status(h);
        if (r.error == 0 && r.value == want)
            return true;
        if (time_now() > end)
            return false;
    }
}

/* Have hart h do command c (with argument a); its reply, or -1 if it did not answer. */
static unsigned long ask(unsigned long h, unsigned long c, unsigned long a)
{
    arg[h] = a;
    reply[h] = ~0UL;
    __atomic_store_n(&cmd[h], c, __ATOMIC_RELEASE);
    if (!wait_eq(&cmd[h], CMD_NONE))
        return ~0UL;
    return reply[h];
}

static unsigned long others_mask(void)
{
    return ((1UL << nharts) - 1) & ~(1UL << boot);
}

static void set_code(uint32_t value)
{
    code_buf[0] = 0x00000513u | (value << 20); /* addi a0, zero, value */
    code_buf[1] = 0x00008067u;                 /* jalr zero, 0(ra) */
    __asm__ volatile("fence.i" ::: "memory");
}

static void test_start(void)
{
    for (unsigned long h = 0; h < nharts; h++) {
        if (h == boot)
            continue;
        struct sbiret r = sbi_hart_get_status(h);
        result("status_stopped", r.error == 0 && r.value == SBI_HSM_STATE_STOPPED,
               "hart %lu: error=%ld status=%ld", h, r.error, r.value);
    }
    for (unsigned long h = 0; h < nharts; h++) {
        if (h == boot)
            continue;
        struct sbiret r = sbi_hart_start(h, (unsigned long)smp_hart_entry, MAGIC + h);
        result("hart_start", r.error == 0, "hart %lu: error=%ld", h, r.error);
        r = sbi_hart_get_status(h);
        result("status_after_start",
               r.error == 0 && (r.value == SBI_HSM_STATE_STARTED || r.value == HSM_START_PENDING),
               "hart %lu: error=%ld status=%ld", h, r.error, r.value);
    }
    for (unsigned long h = 0; h < nharts; h++) {
        if (h == boot)
            continue;
        bool in = wait_eq(&checked_in[h], 1);
        result("hart_entered", in, "hart %lu never ran", h);
        result("start_registers",
               in && got_a0[h] == h && got_a1[h] == MAGIC + h && got_satp[h] == 0 && !got_sie[h],
               "hart %lu: a0=%lu a1=0x%lx satp=0x%lx sie=%lu", h, got_a0[h], got_a1[h],
               got_satp[h], got_sie[h]);
        result("status_started", wait_status(h, SBI_HSM_STATE_STARTED), "hart %lu", h);
        struct sbiret r = sbi_hart_start(h, (unsigned long)smp_hart_entry, 0);
        result("start_started_hart", r.error == SBI_ERR_ALREADY_AVAILABLE, "hart %lu: error=%ld",
               h, r.error);
    }
    struct sbiret r = sbi_hart_start(nharts, (unsigned long)smp_hart_entry, 0);
    result("start_bad_hartid", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
    r = sbi_hart_get_status(nharts);
    result("status_bad_hartid", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
    r = sbi_hart_get_status(boot);
    result("status_self", r.error == 0 && r.value == SBI_HSM_STATE_STARTED, "error=%ld value=%ld",
           r.error, r.value);
}

static void test_race(void)
{
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    race();
    bool all = wait_eq(&done, nharts);
    unsigned long want = nharts * ITERS;
    result("race_finished", all, "%lu of %lu harts finished", done, nharts);
    result("amoadd_w", count32 == (uint32_t)want, "%u (want %lu)", count32, want);
    result("amoadd_d", count64 == want, "%lu (want %lu)", (unsigned long)count64, want);
    result("lr_sc", count_lrsc == want, "%lu (want %lu)", (unsigned long)count_lrsc, want);
    printf("smp: sc retries by hart:");
    for (unsigned long h = 0; h < nharts; h++)
        printf(" %lu", sc_retries[h]);
    printf("\n");
}

static bool wait_ipis(unsigned long h, unsigned long want)
{
    if (h == boot) {
        uint64_t end = deadline();
        while (ipis[h] < want && time_now() < end)
            ;
        return ipis[h] >= want;
    }
    uint64_t end = deadline();
    while (ipis[h] < want)
        if (time_now() > end)
            return false;
    return true;
}

static void test_ipi(void)
{
    csr_set(sie, SIE_SSIE);
    irq_enable();
    for (unsigned long h = 0; h < nharts; h++) { /* one hart at a time: mask, base 0 */
        unsigned long before = ipis[h];
        struct sbiret r = sbi_send_ipi(1UL << h, 0);
        result("ipi_mask", r.error == 0 && wait_ipis(h, before + 1),
               "hart %lu: error=%ld ipis %lu -> %lu", h, r.error, before, ipis[h]);
    }
    for (unsigned long h = 0; h < nharts; h++) { /* mask 1 at base h */
        unsigned long before = ipis[h];
        struct sbiret r = sbi_send_ipi(1, h);
        result("ipi_base", r.error == 0 && wait_ipis(h, before + 1),
               "hart %lu: error=%ld ipis %lu -> %lu", h, r.error, before, ipis[h]);
    }
    unsigned long before[MAX_HARTS];
    for (unsigned long h = 0; h < nharts; h++)
        before[h] = ipis[h];
    struct sbiret r = sbi_send_ipi(0, -1UL); /* every hart */
    bool ok = r.error == 0;
    for (unsigned long h = 0; h < nharts; h++)
        ok = ok && wait_ipis(h, before[h] + 1);
    result("ipi_all", ok, "error=%ld", r.error);
    for (unsigned long h = 0; h < nharts; h++)
        before[h] = ipis[h];
    legacy_mask = others_mask();
    long e = legacy_send_ipi(&legacy_mask);
    ok = e == 0;
    for (unsigned long h = 0; h < nharts; h++)
        if (h != boot)
            ok = ok && wait_ipis(h, before[h] + 1);
    result("ipi_legacy", ok && ipis[boot] == before[boot], "error=%ld", e);
    bool stvec_ok = true;
    for (unsigned long h = 0; h < nharts; h++)
        stvec_ok = stvec_ok && ipi_stvec_ok[h] == ipis[h];
    result("ipi_own_stvec", stvec_ok, "an SSIP came with a wrong scause or stvec");
    r = sbi_send_ipi(1, nharts);
    result("ipi_bad_base", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
    irq_disable();
}

static void test_fence_i(unsigned long h)
{
    set_code(1);
    unsigned long first = ask(h, CMD_CALL_CODE, 0);
    /* hart h has translated code_buf; rewrite it here and fence hart h from afar (its own
     * fence.i runs too, but only the remote one tells its engine) */
    code_buf[0] = 0x00000513u | (2u << 20);
    __asm__ volatile("fence.i" ::: "memory");
    struct sbiret r = sbi_remote_fence_i(1UL << h, 0);
    (void)r;
    code_buf[0] = 0x00000513u | (3u << 20);
    __asm__ volatile("fence.i" ::: "memory");
    r = sbi_remote_fence_i(1UL << h, 0);
    unsigned long second = ask(h, CMD_CALL_CODE, 0);
    result("remote_fence_i", first == 1 && r.error == 0 && second == 3,
           "hart %lu ran %ld, then %ld (want 1 then 3), error=%ld", h, (long)first, (long)second,
           r.error);
    r = sbi_remote_fence_i(0, -1UL);
    result("remote_fence_i_all", r.error == 0, "error=%ld", r.error);
    r = sbi_remote_fence_i(1, nharts);
    result("remote_fence_i_bad_base", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
}

static void test_sfence_vma(unsigned long h)
{
    page_a[0] = 111;
    page_b[0] = 222;
    pt_root[1] = PTE_TABLE(pt_mid);       /* VA 0x40000000.. */
    pt_root[2] = PTE_PAGE(0x80000000UL);  /* RAM, a gigapage */
    pt_mid[0] = PTE_TABLE(pt_leaf);
    pt_leaf[0] = PTE_PAGE(page_a);
    __asm__ volatile("fence rw, rw" ::: "memory");
    unsigned long on = ask(h, CMD_PAGING_ON, 0);
    unsigned long first = ask(h, CMD_READ_VA, 0);
    pt_leaf[0] = PTE_PAGE(page_b);
    __asm__ volatile("fence rw, rw" ::: "memory");
    struct sbiret r = sbi_remote_sfence_vma(1UL << h, 0, TEST_VA, 4096);
    unsigned long second = ask(h, CMD_READ_VA, 0);
    ask(h, CMD_PAGING_OFF, 0);
    result("remote_sfence_vma", on == 0 && first == 111 && r.error == 0 && second == 222,
           "hart %lu read %ld, then %ld (want 111 then 222), error=%ld", h, (long)first,
           (long)second, r.error);
    r = sbi_remote_sfence_vma(0, -1UL, 0, 0);
    result("remote_sfence_vma_all", r.error == 0, "error=%ld", r.error);
    r = SBI_CALL3(SBI_EXT_RFENCE, 2, 1UL << h, 0, 0); /* sfence.vma.asid: whole space */
    result("remote_sfence_vma_asid", r.error == 0, "error=%ld", r.error);
    r = sbi_remote_sfence_vma(1, nharts, 0, 0);
    result("remote_sfence_vma_bad_base", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
}

static void test_stop_restart(unsigned long h)
{
    arg[h] = 0;
    cmd[h] = CMD_STOP;
    bool stopped = wait_status(h, SBI_HSM_STATE_STOPPED);
    result("hart_stop", stopped && reply[h] != 0xdead, "hart %lu: status never STOPPED", h);
    unsigned long before = checked_in[h];
    struct sbiret r = sbi_hart_start(h, (unsigned long)smp_hart_entry, MAGIC + 0x100 + h);
    bool in = r.error == 0 && wait_eq(&checked_in[h], before + 1);
    result("hart_restart", in && got_a1[h] == MAGIC + 0x100 + h && got_satp[h] == 0,
           "hart %lu: error=%ld a1=0x%lx", h, r.error, got_a1[h]);
    result("status_restarted", wait_status(h, SBI_HSM_STATE_STARTED), "hart %lu", h);
}

static void test_suspend(unsigned long h)
{
    /* retentive: the call returns SUCCESS once an IPI wakes it */
    reply[h] = ~0UL;
    __atomic_store_n(&cmd[h], CMD_SUSPEND_RET, __ATOMIC_RELEASE);
    bool suspended = wait_status(h, HSM_SUSPENDED);
    result("suspend_retentive_status", suspended, "hart %lu never SUSPENDED", h);
    sbi_send_ipi(1UL << h, 0);
    bool back = wait_eq(&cmd[h], CMD_NONE);
    result("suspend_retentive_resumes", back && reply[h] == 1, "hart %lu: reply %ld", h,
           (long)reply[h]);
    result("status_after_resume", wait_status(h, SBI_HSM_STATE_STARTED), "hart %lu", h);

    /* non-retentive: it resumes at resume_addr with a0 = hartid, a1 = opaque */
    unsigned long before = checked_in[h];
    arg[h] = MAGIC + 0x200 + h;
    __atomic_store_n(&cmd[h], CMD_SUSPEND_NONRET, __ATOMIC_RELEASE);
    suspended = wait_status(h, HSM_SUSPENDED);
    result("suspend_non_retentive_status", suspended, "hart %lu never SUSPENDED", h);
    sbi_send_ipi(1UL << h, 0);
    bool in = wait_eq(&checked_in[h], before + 1);
    result("suspend_non_retentive_resumes",
           in && got_a0[h] == h && got_a1[h] == MAGIC + 0x200 + h && got_satp[h] == 0 &&
               !got_sie[h],
           "hart %lu: resumed=%d a0=%lu a1=0x%lx satp=0x%lx sie=%lu", h, in, got_a0[h],
           got_a1[h], got_satp[h], got_sie[h]);
    wait_eq(&cmd[h], CMD_NONE);
    result("status_after_non_retentive", wait_status(h, SBI_HSM_STATE_STARTED), "hart %lu", h);
}

/* Hart h holds a reservation on lr_word while this hart stores to it: its sc.d must fail
 * (value: what to store; the same value it loaded needs the reservation itself to be lost,
 * which qemu's sc, a compare-and-swap on the value, does not see). */
static void test_lr_sc_lost(unsigned long h, const char *name, bool same_value)
{
    lr_word = 40;
    lr_loaded = lr_stored = 0;
    reply[h] = ~0UL;
    __atomic_store_n(&cmd[h], CMD_LR_WAIT_SC, __ATOMIC_RELEASE);
    bool loaded = wait_eq(&lr_loaded, 1);
    lr_word = same_value ? 40 : 41;
    __atomic_store_n(&lr_stored, 1, __ATOMIC_RELEASE);
    bool back = wait_eq(&cmd[h], CMD_NONE);
    result(name, loaded && back && reply[h] == 1 && lr_word == (same_value ? 40 : 41),
           "hart %lu: sc.d %s (reply %ld), word %lu", h, reply[h] ? "failed" : "succeeded",
           (long)reply[h], (unsigned long)lr_word);
}

static void test_fwft(void)
{
    long have = sbi_probe_extension(SBI_EXT_FWFT);
    struct sbiret r = {0, 0};
    if (have)
        r = SBI_CALL1(SBI_EXT_FWFT, 1, 0); /* get MISALIGNED_EXC_DELEG */
    result("fwft", !have || (r.error == 0 && r.value <= 1), "error=%ld value=%ld", r.error,
           r.value);
}

static void test_hostile(unsigned long h)
{
    /* h is stopped here */
    struct sbiret r = sbi_hart_start(h, 0x1000, 0);
    result("hostile_start_bad_address", r.error == SBI_ERR_INVALID_ADDRESS, "error=%ld", r.error);
    r = sbi_hart_start(h, 0x80200001UL, 0);
    result("hostile_start_odd_address", r.error == SBI_ERR_INVALID_ADDRESS, "error=%ld",
           r.error);
    r = sbi_hart_start(1UL << 40, (unsigned long)smp_hart_entry, 0);
    result("hostile_start_huge_hartid", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
    r = sbi_hart_start(-1UL, (unsigned long)smp_hart_entry, 0);
    result("hostile_start_hartid_minus_1", r.error == SBI_ERR_INVALID_PARAM, "error=%ld",
           r.error);
    r = sbi_send_ipi(1UL << nharts, 0);
    result("hostile_ipi_mask_beyond", r.error == SBI_ERR_INVALID_PARAM, "error=%ld", r.error);
    r = sbi_remote_sfence_vma(1UL << boot, 0, -4096UL, 8192);
    result("hostile_sfence_wrapping_range", r.error == SBI_ERR_INVALID_ADDRESS, "error=%ld",
           r.error);
    r = hart_suspend(SUSPEND_NON_RETENTIVE, 0x1000, 0);
    result("hostile_suspend_bad_address", r.error == SBI_ERR_INVALID_ADDRESS, "error=%ld",
           r.error);
    r = hart_suspend(0x10000000UL, 0, 0);
    result("hostile_suspend_reserved_type", r.error == SBI_ERR_INVALID_PARAM, "error=%ld",
           r.error);
    r = sbi_hart_get_status(h);
    result("hostile_hart_still_stopped", r.error == 0 && r.value == SBI_HSM_STATE_STOPPED,
           "error=%ld status=%ld", r.error, r.value);
}

int main(unsigned long hartid, const void *fdt)
{
    (void)fdt;
    boot = hartid;
    __asm__ volatile("mv tp, %0" ::"r"(hartid));
    trap_set_interrupt_handler(IRQ_S_SOFT, on_soft);
    nharts = 0;
    while (nharts < MAX_HARTS && sbi_hart_get_status(nharts).error == 0)
        nharts++;
    printf("smp: %lu harts, booted on hart %lu\n", nharts, boot);
    work_iters = bootarg_ulong("work", 0);
    if (work_iters) {
        for (unsigned long h = 0; h < nharts; h++)
            if (h != boot)
                sbi_hart_start(h, (unsigned long)smp_hart_entry, 0);
        work();
        while (done < nharts)
            ;
        printf("work: %lu harts x %lu iterations, sum %lx\n", nharts, work_iters,
               (unsigned long)work_sum);
        return 0;
    }
    result("harts", nharts >= 2, "%lu harts (want 2 or more: run with smp 2..8)", nharts);
    if (nharts < 2) {
        printf("smp: %d passed, %d failed\n", passed, failed);
        return 1;
    }
    checked_in[boot] = 1;
    test_start();
    test_race();
    test_ipi();
    unsigned long h1 = boot == 0 ? 1 : 0;          /* a hart other than the boot hart */
    unsigned long h2 = nharts > 2 ? (boot == nharts - 1 ? nharts - 2 : nharts - 1) : h1;
    test_fence_i(h1);
    test_sfence_vma(h1);
    test_suspend(h2);
    test_stop_restart(h2);
    test_fwft();
    test_lr_sc_lost(h1, "lr_sc_lost_to_store", false);
    const char *val;
    size_t len;
    if (bootarg_get("strict", &val, &len)) /* hv: the reservation itself is lost */
        test_lr_sc_lost(h1, "lr_sc_lost_to_same_value_store", true);
    if (bootarg_get("hostile", &val, &len)) {
        arg[h2] = 0;
        cmd[h2] = CMD_STOP;
        wait_status(h2, SBI_HSM_STATE_STOPPED);
        test_hostile(h2);
    }
    printf("smp: done at tick %lu\n", (unsigned long)time_now());
    printf("smp: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
