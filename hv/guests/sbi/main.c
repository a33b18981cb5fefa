/* sbi: a self-checking test of the SBI v2.0 firmware interface.
 *
 * Output: one "PASS <name>" or "FAIL <name>: <details>" line per check (a few print what they
 * saw in parentheses), then "sbi: N passed, M failed". Exits non-zero if any check failed.
 */
#include "rt.h"

#define result rt_check
#define passed rt_passed
#define failed rt_failed

static void check_ret(const char *name, struct sbiret r, long want_error)
{
    result(name, r.error == want_error, "error=%ld (want %ld) value=%ld", r.error, want_error,
           r.value);
}

/* ---- interrupts ---- */

static volatile unsigned long timer_hits, soft_hits;
static volatile uint64_t timer_seen_at;
static volatile unsigned long last_scause;

static void on_timer(struct trap_frame *tf)
{
    timer_seen_at = time_now();
    last_scause = tf->scause;
    timer_hits++;
    sbi_set_timer(UINT64_MAX);
}

static void on_soft(struct trap_frame *tf)
{
    last_scause = tf->scause;
    soft_hits++;
    csr_clear(sip, SIP_SSIP);
}

static void test_base(void)
{
    struct sbiret r = sbi_get_spec_version();
    unsigned long major = SBI_SPEC_MAJOR(r.value), minor = SBI_SPEC_MINOR(r.value);
    printf("sbi: spec version %lu.%lu\n", major, minor);
    result("spec_version", r.error == 0 && major >= 2, "error=%ld version=%lu.%lu (want >= 2.0)",
           r.error, major, minor);

    r = sbi_get_impl_id();
    printf("sbi: impl id %ld\n", r.value);
    result("impl_id", r.error == 0, "error=%ld id=%ld", r.error, r.value);
    r = sbi_get_impl_version();
    result("impl_version", r.error == 0, "error=%ld version=0x%lx", r.error, r.value);
    for (unsigned long f = SBI_BASE_GET_MVENDORID; f <= SBI_BASE_GET_MIMPID; f++) {
        static const char *const names[] = {"mvendorid", "marchid", "mimpid"};
        r = SBI_CALL0(SBI_EXT_BASE, f);
        result(names[f - SBI_BASE_GET_MVENDORID], r.error == 0, "error=%ld value=0x%lx",
               r.error, r.value);
    }

    static const struct {
        const char *name;
        unsigned long eid;
    } exts[] = {
        {"probe_base", SBI_EXT_BASE}, {"probe_time", SBI_EXT_TIME}, {"probe_ipi", SBI_EXT_IPI},
        {"probe_rfence", SBI_EXT_RFENCE}, {"probe_hsm", SBI_EXT_HSM},
        {"probe_srst", SBI_EXT_SRST}, {"probe_dbcn", SBI_EXT_DBCN},
    };
    for (size_t i = 0; i < ARRAY_SIZE(exts); i++) {
        r = SBI_CALL1(SBI_EXT_BASE, SBI_BASE_PROBE_EXTENSION, exts[i].eid);
        result(exts[i].name, r.error == 0 && r.value != 0, "error=%ld value=%ld (want != 0)",
               r.error, r.value);
    }
    r = SBI_CALL1(SBI_EXT_BASE, SBI_BASE_PROBE_EXTENSION, 0x0ABCDEF0UL);
    result("probe_unknown", r.error == 0 && r.value == 0, "error=%ld value=%ld (want 0, 0)",
           r.error, r.value);

    check_ret("unknown_extension", SBI_CALL0(0x0ABCDEF0UL, 0), SBI_ERR_NOT_SUPPORTED);
    check_ret("base_unknown_fid", SBI_CALL0(SBI_EXT_BASE, 99), SBI_ERR_NOT_SUPPORTED);
}

static void test_hsm(unsigned long hartid)
{
    struct sbiret r = sbi_hart_get_status(hartid);
    result("hsm_status_self", r.error == 0 && r.value == SBI_HSM_STATE_STARTED,
           "error=%ld state=%ld (want 0, started 0)", r.error, r.value);
    check_ret("hsm_status_invalid_hart", sbi_hart_get_status(5), SBI_ERR_INVALID_PARAM);
    check_ret("hsm_start_self", sbi_hart_start(hartid, 0x80200000UL, 0),
              SBI_ERR_ALREADY_AVAILABLE);
}

static void test_rfence(unsigned long hartid)
{
    check_ret("rfence_fence_i", sbi_remote_fence_i(1UL << hartid, 0), SBI_SUCCESS);
    check_ret("rfence_sfence_vma", sbi_remote_sfence_vma(1UL << hartid, 0, 0, ~0UL),
              SBI_SUCCESS);
}

static void test_dbcn(void)
{
    /* The newline comes from write_byte. */
    static const char msg[] = "dbcn: hello through DBCN console_write";
    const unsigned long len = sizeof(msg) - 1;
    struct sbiret r = sbi_debug_console_write(len, (unsigned long)msg);
    struct sbiret rb = sbi_debug_console_write_byte('\n');
    result("dbcn_write", r.error == 0 && r.value == (long)len,
           "error=%ld value=%ld (want 0, %lu)", r.error, r.value, len);
    result("dbcn_write_byte", rb.error == 0, "error=%ld", rb.error);
}

static void test_legacy(void)
{
    static const char msg[] = "legacy: hello through putchar\n";
    long bad = 0;
    for (const char *p = msg; *p; p++)
        if (sbi_legacy_putchar(*p) != 0)
            bad++;
    result("legacy_putchar", bad == 0, "%ld calls returned non-zero", bad);
}

static void test_srst_invalid(void)
{
    /* Types 3..0xEFFFFFFF are reserved: the call must fail and return. */
    check_ret("srst_reserved_type", sbi_system_reset(3, SBI_SRST_REASON_NONE),
              SBI_ERR_INVALID_PARAM);
}

static void test_timer(void)
{
    const uint64_t delay = timer_ms_to_ticks(20);
    trap_handler_fn old = trap_set_interrupt_handler(IRQ_S_TIMER, on_timer);
    timer_hits = 0;
    irq_disable();
    csr_set(sie, SIE_STIE);
    uint64_t start = time_now();
    uint64_t deadline = start + delay;
    struct sbiret r = sbi_set_timer(deadline);
    check_ret("set_timer", r, SBI_SUCCESS);
    /* Wait in wfi (SIE off: wfi still wakes on an interrupt enabled in sie), then open SIE to
     * take it. Give up after 2 s. */
    while (!timer_hits && time_now() - start < timer_hz() * 2) {
        wfi();
        irq_enable();
        irq_disable();
    }
    csr_clear(sie, SIE_STIE);
    unsigned long early = 0;
    if (timer_hits && timer_seen_at < deadline)
        early = (unsigned long)(deadline - timer_seen_at);
    if (timer_hits)
        printf("sbi: timer interrupt %lu us after arming a %lu us timer\n",
               (unsigned long)timer_ticks_to_us(timer_seen_at - start),
               (unsigned long)timer_ticks_to_us(delay));
    result("timer_interrupt", timer_hits == 1 && timer_seen_at >= deadline &&
                                  last_scause == (SCAUSE_INTERRUPT | IRQ_S_TIMER),
           "hits=%lu scause=0x%lx, %lu ticks early (want 1 hit, 0x%lx, not early)",
           timer_hits, last_scause, early, SCAUSE_INTERRUPT | IRQ_S_TIMER);
    result("timer_cleared", (csr_read(sip) & SIP_STIP) == 0, "sip=0x%lx after set_timer(-1)",
           csr_read(sip));
    trap_set_interrupt_handler(IRQ_S_TIMER, old);
}

/* The timer is exact: for a timer set for T, the guest never reads a time >= T while STIP is
 * not pending, and STIP is never pending while the time still reads < T. Polled with SIE off,
 * on timers a few microseconds out (a slice of the host is far longer), both orders of reads. */
static void test_timer_exact(void)
{
    unsigned long late = 0, early = 0, reads = 0, fired = 0;
    irq_disable();
    for (int k = 0; k < 8; k++) {
        uint64_t start = time_now();
        uint64_t deadline = start + 20 + 13 * (uint64_t)k;
        sbi_set_timer(deadline);
        for (;;) {
            uint64_t t = time_now();
            unsigned long p = csr_read(sip) & SIP_STIP;
            unsigned long p2 = csr_read(sip) & SIP_STIP;
            uint64_t t2 = time_now();
            reads++;
            if (t >= deadline && !p)
                late++;
            if (p2 && t2 < deadline)
                early++;
            if (p && p2) {
                fired++;
                break;
            }
            if (t - start > timer_hz())
                break; /* 1 s: it never fired */
        }
    }
    sbi_set_timer(UINT64_MAX);
    result("timer_exact", fired == 8 && !late && !early,
           "%lu of 8 fired; %lu reads at or past the deadline without STIP, %lu with STIP "
           "before it (%lu reads)",
           fired, late, early, reads);
}

/* SBI set_timer (spec, Timer extension): the interrupt is due once time >= stime_value.
 * Polled with SIE on, as a kernel's busy wait (or kvm-unit-tests' sbi "timer delay honored")
 * does: read the time, then look for the handler's mark. The read before the handler ran must
 * not be one held a tick short of the deadline (a clock held below it until the interrupt is
 * taken shows the guest an early interrupt). A read further before it is a hart paused by its
 * host across the deadline, as any hypervisor's vCPU may be: counted, and none in virtual time. */
static void test_timer_not_early(void)
{
    trap_handler_fn old = trap_set_interrupt_handler(IRQ_S_TIMER, on_timer);
    unsigned long fired = 0, held = 0, paused = 0;
    irq_disable();
    csr_set(sie, SIE_STIE);
    for (int k = 0; k < 4; k++) {
        timer_hits = 0;
        uint64_t start = time_now(), last = start;
        uint64_t deadline = start + timer_ms_to_ticks(1) + 7 * (uint64_t)k;
        sbi_set_timer(deadline);
        irq_enable();
        for (;;) {
            last = time_now();
            if (last - start > timer_hz())
                break; /* 1 s: it never fired */
            if (timer_hits)
                break;
        }
        irq_disable();
        if (timer_hits) {
            fired++;
            if (last + 1 == deadline)
                held++;
            else if (last < deadline)
                paused++;
        }
    }
    csr_clear(sie, SIE_STIE);
    sbi_set_timer(UINT64_MAX);
    trap_set_interrupt_handler(IRQ_S_TIMER, old);
    printf("sbi: timer_not_early: %lu of 4 taken after the hart was paused across the deadline\n",
           paused);
    result("timer_not_early", fired == 4 && !held,
           "%lu of 4 fired; %lu taken right after a read held one tick before the deadline",
           fired, held);
}

static void test_ipi(unsigned long hartid)
{
    trap_set_interrupt_handler(IRQ_S_SOFT, on_soft);
    soft_hits = 0;
    csr_set(sie, SIE_SSIE);
    irq_enable();
    struct sbiret r = sbi_send_ipi(1UL << hartid, 0);
    check_ret("send_ipi", r, SBI_SUCCESS);
    /* The interrupt may be taken right after the ecall or a little later. */
    uint64_t start = time_now();
    while (!soft_hits && time_now() - start < timer_ms_to_ticks(500))
        ;
    irq_disable();
    csr_clear(sie, SIE_SSIE);
    result("ipi_self", soft_hits == 1 && last_scause == (SCAUSE_INTERRUPT | IRQ_S_SOFT),
           "hits=%lu scause=0x%lx", soft_hits, last_scause);
    /* hart_mask_base = -1 means all harts. */
    csr_set(sie, SIE_SSIE);
    soft_hits = 0;
    irq_enable();
    r = sbi_send_ipi(0, ~0UL);
    start = time_now();
    while (!soft_hits && time_now() - start < timer_ms_to_ticks(500))
        ;
    irq_disable();
    csr_clear(sie, SIE_SSIE);
    result("ipi_all_harts", r.error == 0 && soft_hits == 1, "error=%ld hits=%lu", r.error,
           soft_hits);
    trap_set_interrupt_handler(IRQ_S_SOFT, NULL);
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(fdt);
    printf("sbi: hart %lu, DBCN console %s\n", hartid, console_has_dbcn() ? "yes" : "no");
    test_base();
    test_hsm(hartid);
    test_rfence(hartid);
    test_dbcn();
    test_legacy();
    test_srst_invalid();
    test_timer();
    test_timer_exact();
    test_timer_not_early();
    test_ipi(hartid);
    printf("sbi: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
