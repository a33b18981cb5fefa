/*
 * The vCPU's native helpers. First, its preemption point on a stock Unicorn: a block hook, in
 * C, that ends a time slice (the fast engine does this itself, see hv/engine).
 *
 * Why native code: stopping Unicorn from another thread (uc_emu_stop, or its own timeout=)
 * can land inside an instruction's memory helper; the instruction is then restarted after
 * its side effect happened, so an AMO is applied twice and an MMIO write reaches the device
 * twice. Counting instructions (emu_start count=N) is exact but puts a helper call on every
 * instruction (2-7x slower). A block hook runs at the entry of every translated block,
 * before any of its instructions; stopping there is exact and costs one short call per block.
 * A Python block hook would cost a microsecond per block; this one costs nanoseconds.
 *
 * The slice ends when its budget of code bytes is spent (a deterministic proxy for
 * instructions) or when the host sets `request` (from a hook, or another thread).
 */
#include <stddef.h>
#include <stdint.h>

typedef int (*hv_stop_fn)(void *uc);

struct hv_slice {
    int64_t budget;            /* code bytes left in this slice */
    volatile int32_t request;  /* host asks for a stop at the next block entry */
    int32_t stopped;           /* set when this hook ended the slice */
    hv_stop_fn stop;           /* uc_emu_stop, passed in by the host */
    uint64_t executed;         /* code bytes executed, for statistics */
};

void hv_block_hook(void *uc, uint64_t address, uint32_t size, struct hv_slice *s)
{
    (void)address;
    /* Check before charging: the first block of a slice always runs, so a slice makes
     * progress whatever its budget. A stop here happens before the block's first instruction. */
    if (__builtin_expect(s->budget <= 0 || s->request, 0)) {
        s->request = 0;
        s->stopped = 1;
        s->stop(uc);
        return;
    }
    s->executed += size;
    s->budget -= (int64_t)size;
}

/*
 * Exact instruction counting, for profiling runs only (e.g. bench/boot.py): a code hook on
 * every instruction. It slows the guest several times, so it is off unless asked for.
 */
void hv_count_hook(void *uc, uint64_t address, uint32_t size, uint64_t *count)
{
    (void)uc;
    (void)address;
    (void)size;
    (*count)++;
}

#include <time.h>

static int64_t hv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The exits the native layer answers or watches. Everything else goes to the Python INTR
 * handler (`slow`), which stays the reference (tests compare both paths).
 *
 * The console fast path: the SBI legacy console_putchar (a Linux `earlycon=sbi` boot makes
 * thousands of them, one per character) answered here, into a byte buffer the host drains
 * after the slice, instead of a trip through Python for each byte. Order with the UART's
 * output is kept by the host: it drains this buffer before each UART write, and sets `hold`
 * while the UART has bytes the host has not taken (or its console reader is behind), which
 * sends putchar the slow way too.
 *
 * Host time: a slice's budget counts instructions, but an exit costs the host far more than
 * an instruction (0.05-10 us). So every exception seen here, and every read of the native
 * clock, also checks the slice's host-time deadline, and past it ends the slice at the next
 * block: a slice holds the event loop about as long as the host wants, whatever the guest does.
 */
typedef void (*hv_intr_fn)(void *uc, uint32_t intno, void *user);
typedef int (*hv_reg_fn)(void *uc, int regid, void *value);

struct hv_exits {
    hv_intr_fn slow;
    void *slow_user;
    hv_reg_fn reg_read;
    hv_reg_fn reg_write;
    int32_t reg_priv, reg_a0, reg_a7;
    int32_t hold;             /* the host holds console output: no fast putchar now */
    uint8_t *buf;             /* console bytes, in order */
    uint32_t len, cap;
    uint32_t stop_at;         /* end the slice once this many bytes wait */
    uint32_t pad;
    int64_t *budget;          /* the slice's budget (engine's or block hook's): 0 ends it */
    int64_t unspent;          /* budget given up that way, for the host's statistics */
    uint64_t putchar;         /* statistics */
    int64_t deadline_ns;      /* CLOCK_MONOTONIC: the slice ends at the next block after it */
    uint64_t late_stops;      /* slices ended by the deadline here */
    int32_t event;            /* the slice ends for a reason of the guest's (not host time) */
    int32_t late;             /* the slice ended for host time alone (virtual time resumes it) */
};

/* An event ends the slice (a full console buffer, a clock read at a timer's deadline): in
 * virtual time such a stop is part of the guest's run; a host-time one (below) is not. */
static void hv_end_slice(struct hv_exits *e)
{
    e->event = 1;
    if (e->budget && *e->budget > 0) {
        e->unspent += *e->budget;
        *e->budget = 0;  /* the engine (or block hook) stops at the next block entry */
    }
}

static void hv_check_deadline(struct hv_exits *e, int64_t now)
{
    if (now > e->deadline_ns && e->budget && *e->budget > 0) {
        e->late_stops++;
        e->late = 1;
        e->unspent += *e->budget;
        *e->budget = 0;
    }
}

#define SBI_LEGACY_PUTCHAR 1
#define PRIV_S 1
#define INTR_ECALL 8

void hv_intr_hook(void *uc, uint32_t intno, struct hv_exits *e)
{
    hv_check_deadline(e, hv_now_ns());
    if (intno == INTR_ECALL && !e->hold && e->len < e->cap) {
        uint64_t priv = 0, a7 = 0, a0 = 0;
        e->reg_read(uc, e->reg_priv, &priv);
        if (priv == PRIV_S) {
            e->reg_read(uc, e->reg_a7, &a7);
            if (a7 == SBI_LEGACY_PUTCHAR) {
                e->reg_read(uc, e->reg_a0, &a0);
                e->buf[e->len++] = (uint8_t)a0;
                a0 = 0;  /* legacy calls return in a0 and leave a1 alone */
                e->reg_write(uc, e->reg_a0, &a0);
                e->putchar++;
                if (e->len >= e->stop_at)
                    hv_end_slice(e);  /* hand the output to the host at the next block */
                return;
            }
        }
    }
    e->slow(uc, intno, e->slow_user);
}

/*
 * The clock behind the riscv `time` CSR on the fast engine (hv/engine patch 0003 lets the
 * engine call this instead of trapping rdtime to Python: 4-5 us per read becomes a few tens
 * of nanoseconds). The same arithmetic as hv's Python Clock (hv/hw/_clock.py), which stays
 * the source of truth. Two modes:
 *  - real time: ticks = (CLOCK_MONOTONIC now - offset) * hz / 1e9, with offset = start + time
 *    spent paused, written by the host before every slice;
 *  - virtual time (`virtual` set): guest time comes from the instructions the hart retired,
 *    never from the host: ps = base_ps + charged * ps_per_insn, where charged is what the
 *    engine has charged to this slice's budget so far (whole blocks, at their entry), base_ps
 *    the guest's time when the slice started. The host's clock is not read at all.
 * In both, `limit` keeps the timer exact: while a timer is armed whose interrupt is not yet in
 * mip, a read that reaches limit (the deadline) first raises STIP in mip itself (hv_clock_fire)
 * and ends the slice at the next block, where the host takes note. So the guest never reads a
 * time at or past its deadline without the interrupt pending (a wait on the slice's end would
 * otherwise show it a time up to a slice late with no interrupt), and the read before the
 * interrupt is taken shows the deadline reached (a read held below it until the slice's end
 * would show the interrupt early: kvm-unit-tests' sbi "timer delay honored"). Without `uc`
 * (no register access) a read is held at limit - 1 instead, until the host raises it.
 */
struct hv_clock {
    int64_t offset_ns;
    uint64_t hz;
    uint64_t reads;  /* statistics */
    struct hv_exits *exits;  /* for the slice's host-time deadline, and its unspent budget */
    int64_t virt;           /* 1: virtual time (below); 0: CLOCK_MONOTONIC */
    int64_t base_ps;        /* virtual: guest time (ps since boot) at the slice's start */
    int64_t ps_per_insn;    /* virtual: picoseconds per retired instruction */
    int64_t budget0;        /* virtual: the slice's budget when it started */
    int64_t *budget;        /* virtual: the engine's budget (HvSlice.budget) */
    uint64_t limit;         /* ticks a read may reach (an armed timer's deadline), or ~0 */
    uint64_t clamped;       /* statistics: reads held below the deadline */
    void *uc;               /* the engine, to raise STIP from a read (hv_clock_fire) */
    int32_t reg_mip;        /* its register id for mip */
    int32_t fired;          /* set when a read raised STIP; the host clears it */
};

#define PRIV_M 3
#define MIP_STIP (1ull << 5)

/* A read reached the armed timer's deadline: STIP into mip now (a write of mip needs M-mode,
 * as in the host's update_interrupts), and the slice ends at the next block so that the host
 * sees the interrupt (its counters, a sleeping hart's wake-up) and lifts the limit (until
 * then, a further read raises it again: no harm). */
static void hv_clock_fire(struct hv_clock *c)
{
    struct hv_exits *e = c->exits;
    uint64_t priv = 0, m = PRIV_M, mip = 0;
    e->reg_read(c->uc, e->reg_priv, &priv);
    e->reg_write(c->uc, e->reg_priv, &m);
    e->reg_read(c->uc, c->reg_mip, &mip);
    mip |= MIP_STIP;
    e->reg_write(c->uc, c->reg_mip, &mip);
    e->reg_write(c->uc, e->reg_priv, &priv);
    c->fired = 1;
    hv_end_slice(e);
}

uint64_t hv_clock_ticks(struct hv_clock *c)
{
    uint64_t ticks;
    c->reads++;
    if (c->virt) {
        int64_t charged = c->budget0 - *c->budget - (c->exits ? c->exits->unspent : 0);
        int64_t ps = c->base_ps + charged * c->ps_per_insn;
        if (ps < 0)
            ps = 0;
        ticks = (uint64_t)((unsigned __int128)ps * c->hz / 1000000000000ull);
    } else {
        int64_t now = hv_now_ns();
        int64_t ns = now - c->offset_ns;
        if (c->exits)
            hv_check_deadline(c->exits, now);
        if (ns < 0)
            ns = 0;
        ticks = (uint64_t)((unsigned __int128)ns * c->hz / 1000000000u);
    }
    if (ticks >= c->limit) {
        if (c->uc && c->exits) {
            hv_clock_fire(c);
            return ticks;
        }
        ticks = c->limit ? c->limit - 1 : 0;
        c->clamped++;
        if (c->exits)
            hv_end_slice(c->exits);
    }
    return ticks;
}

/*
 * The layouts hv/engine/_abi.py mirrors with ctypes (_Slice, _Exits, _Clock), as this compiler
 * lays them out: each struct's size and each field's offset, by name, ending with a NULL name.
 * tests/test_native_exits.py checks the two sides against each other.
 */
struct hv_layout_entry {
    const char *name;
    uint64_t value;
};

#define HV_SIZE(s) {#s, sizeof(struct s)}
#define HV_FIELD(s, f) {#s "." #f, offsetof(struct s, f)}

static const struct hv_layout_entry hv_layouts[] = {
    HV_SIZE(hv_slice),
    HV_FIELD(hv_slice, budget),
    HV_FIELD(hv_slice, request),
    HV_FIELD(hv_slice, stopped),
    HV_FIELD(hv_slice, stop),
    HV_FIELD(hv_slice, executed),
    HV_SIZE(hv_exits),
    HV_FIELD(hv_exits, slow),
    HV_FIELD(hv_exits, slow_user),
    HV_FIELD(hv_exits, reg_read),
    HV_FIELD(hv_exits, reg_write),
    HV_FIELD(hv_exits, reg_priv),
    HV_FIELD(hv_exits, reg_a0),
    HV_FIELD(hv_exits, reg_a7),
    HV_FIELD(hv_exits, hold),
    HV_FIELD(hv_exits, buf),
    HV_FIELD(hv_exits, len),
    HV_FIELD(hv_exits, cap),
    HV_FIELD(hv_exits, stop_at),
    HV_FIELD(hv_exits, pad),
    HV_FIELD(hv_exits, budget),
    HV_FIELD(hv_exits, unspent),
    HV_FIELD(hv_exits, putchar),
    HV_FIELD(hv_exits, deadline_ns),
    HV_FIELD(hv_exits, late_stops),
    HV_FIELD(hv_exits, event),
    HV_FIELD(hv_exits, late),
    HV_SIZE(hv_clock),
    HV_FIELD(hv_clock, offset_ns),
    HV_FIELD(hv_clock, hz),
    HV_FIELD(hv_clock, reads),
    HV_FIELD(hv_clock, exits),
    HV_FIELD(hv_clock, virt),
    HV_FIELD(hv_clock, base_ps),
    HV_FIELD(hv_clock, ps_per_insn),
    HV_FIELD(hv_clock, budget0),
    HV_FIELD(hv_clock, budget),
    HV_FIELD(hv_clock, limit),
    HV_FIELD(hv_clock, clamped),
    HV_FIELD(hv_clock, uc),
    HV_FIELD(hv_clock, reg_mip),
    HV_FIELD(hv_clock, fired),
    {0, 0},
};

const struct hv_layout_entry *hv_layouts_table(void)
{
    return hv_layouts;
}
