#include "sbi.h"
#include "csr.h"

struct sbiret sbi_call(unsigned long eid, unsigned long fid, unsigned long a0, unsigned long a1,
                       unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
{
    register unsigned long r_a0 __asm__("a0") = a0;
    register unsigned long r_a1 __asm__("a1") = a1;
    register unsigned long r_a2 __asm__("a2") = a2;
    register unsigned long r_a3 __asm__("a3") = a3;
    register unsigned long r_a4 __asm__("a4") = a4;
    register unsigned long r_a5 __asm__("a5") = a5;
    register unsigned long r_a6 __asm__("a6") = fid;
    register unsigned long r_a7 __asm__("a7") = eid;
    __asm__ volatile("ecall"
                     : "+r"(r_a0), "+r"(r_a1)
                     : "r"(r_a2), "r"(r_a3), "r"(r_a4), "r"(r_a5), "r"(r_a6), "r"(r_a7)
                     : "memory");
    struct sbiret ret = {(long)r_a0, (long)r_a1};
    return ret;
}

struct sbiret sbi_get_spec_version(void)
{
    return SBI_CALL0(SBI_EXT_BASE, SBI_BASE_GET_SPEC_VERSION);
}

struct sbiret sbi_get_impl_id(void) { return SBI_CALL0(SBI_EXT_BASE, SBI_BASE_GET_IMPL_ID); }

struct sbiret sbi_get_impl_version(void)
{
    return SBI_CALL0(SBI_EXT_BASE, SBI_BASE_GET_IMPL_VERSION);
}

long sbi_probe_extension(unsigned long eid)
{
    struct sbiret r = SBI_CALL1(SBI_EXT_BASE, SBI_BASE_PROBE_EXTENSION, eid);
    return r.error ? 0 : r.value;
}

struct sbiret sbi_set_timer(uint64_t stime_value)
{
    return SBI_CALL1(SBI_EXT_TIME, 0, stime_value);
}

struct sbiret sbi_send_ipi(unsigned long hart_mask, unsigned long hart_mask_base)
{
    return SBI_CALL2(SBI_EXT_IPI, 0, hart_mask, hart_mask_base);
}

struct sbiret sbi_remote_fence_i(unsigned long hart_mask, unsigned long hart_mask_base)
{
    return SBI_CALL2(SBI_EXT_RFENCE, SBI_RFENCE_FENCE_I, hart_mask, hart_mask_base);
}

struct sbiret sbi_remote_sfence_vma(unsigned long hart_mask, unsigned long hart_mask_base,
                                    unsigned long start, unsigned long size)
{
    return sbi_call(SBI_EXT_RFENCE, SBI_RFENCE_SFENCE_VMA, hart_mask, hart_mask_base, start, size,
                    0, 0);
}

struct sbiret sbi_hart_get_status(unsigned long hartid)
{
    return SBI_CALL1(SBI_EXT_HSM, SBI_HSM_HART_GET_STATUS, hartid);
}

struct sbiret sbi_hart_start(unsigned long hartid, unsigned long start_addr, unsigned long opaque)
{
    return SBI_CALL3(SBI_EXT_HSM, SBI_HSM_HART_START, hartid, start_addr, opaque);
}

struct sbiret sbi_system_reset(uint32_t type, uint32_t reason)
{
    return SBI_CALL2(SBI_EXT_SRST, 0, type, reason);
}

void sbi_shutdown(uint32_t reason)
{
    sbi_system_reset(SBI_SRST_TYPE_SHUTDOWN, reason);
    /* SRST missing or refused: park the hart with interrupts off. */
    csr_clear(sstatus, SSTATUS_SIE);
    for (;;)
        wfi();
}

struct sbiret sbi_debug_console_write(unsigned long num_bytes, unsigned long base_addr)
{
    /* rv64: the whole physical address fits in base_addr_lo; base_addr_hi is 0. */
    return SBI_CALL3(SBI_EXT_DBCN, SBI_DBCN_WRITE, num_bytes, base_addr, 0);
}

struct sbiret sbi_debug_console_write_byte(uint8_t byte)
{
    return SBI_CALL1(SBI_EXT_DBCN, SBI_DBCN_WRITE_BYTE, byte);
}

long sbi_legacy_putchar(int c)
{
    return SBI_CALL1(SBI_EXT_LEGACY_PUTCHAR, 0, (unsigned long)(unsigned char)c).error;
}

long sbi_legacy_getchar(void) { return SBI_CALL0(SBI_EXT_LEGACY_GETCHAR, 0).error; }
