/* RISC-V Supervisor Binary Interface (SBI v2.0) calls made by S-mode guests.
 *
 * Calling convention: a7 = extension id (EID), a6 = function id (FID), arguments in a0..a5;
 * the firmware returns an error code in a0 and a value in a1.
 */
#ifndef RT_SBI_H
#define RT_SBI_H

#include "types.h"

/* Extension ids. */
#define SBI_EXT_LEGACY_SET_TIMER 0x00
#define SBI_EXT_LEGACY_PUTCHAR 0x01
#define SBI_EXT_LEGACY_GETCHAR 0x02
#define SBI_EXT_BASE 0x10
#define SBI_EXT_TIME 0x54494D45   /* "TIME" */
#define SBI_EXT_IPI 0x735049      /* "sPI" */
#define SBI_EXT_RFENCE 0x52464E43 /* "RFNC" */
#define SBI_EXT_HSM 0x48534D      /* "HSM" */
#define SBI_EXT_SRST 0x53525354   /* "SRST" */
#define SBI_EXT_DBCN 0x4442434E   /* "DBCN" */

/* BASE function ids. */
#define SBI_BASE_GET_SPEC_VERSION 0
#define SBI_BASE_GET_IMPL_ID 1
#define SBI_BASE_GET_IMPL_VERSION 2
#define SBI_BASE_PROBE_EXTENSION 3
#define SBI_BASE_GET_MVENDORID 4
#define SBI_BASE_GET_MARCHID 5
#define SBI_BASE_GET_MIMPID 6

/* HSM function ids and hart states. */
#define SBI_HSM_HART_START 0
#define SBI_HSM_HART_STOP 1
#define SBI_HSM_HART_GET_STATUS 2
#define SBI_HSM_STATE_STARTED 0
#define SBI_HSM_STATE_STOPPED 1

/* RFENCE function ids. */
#define SBI_RFENCE_FENCE_I 0
#define SBI_RFENCE_SFENCE_VMA 1

/* SRST types and reasons. */
#define SBI_SRST_TYPE_SHUTDOWN 0
#define SBI_SRST_TYPE_COLD_REBOOT 1
#define SBI_SRST_TYPE_WARM_REBOOT 2
#define SBI_SRST_REASON_NONE 0
#define SBI_SRST_REASON_SYSTEM_FAILURE 1

/* DBCN function ids. */
#define SBI_DBCN_WRITE 0
#define SBI_DBCN_READ 1
#define SBI_DBCN_WRITE_BYTE 2

/* Standard error codes. */
#define SBI_SUCCESS 0
#define SBI_ERR_FAILED (-1)
#define SBI_ERR_NOT_SUPPORTED (-2)
#define SBI_ERR_INVALID_PARAM (-3)
#define SBI_ERR_DENIED (-4)
#define SBI_ERR_INVALID_ADDRESS (-5)
#define SBI_ERR_ALREADY_AVAILABLE (-6)
#define SBI_ERR_ALREADY_STARTED (-7)
#define SBI_ERR_ALREADY_STOPPED (-8)

struct sbiret {
    long error;
    long value;
};

struct sbiret sbi_call(unsigned long eid, unsigned long fid, unsigned long a0, unsigned long a1,
                       unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5);

#define SBI_CALL0(e, f) sbi_call((e), (f), 0, 0, 0, 0, 0, 0)
#define SBI_CALL1(e, f, a) sbi_call((e), (f), (a), 0, 0, 0, 0, 0)
#define SBI_CALL2(e, f, a, b) sbi_call((e), (f), (a), (b), 0, 0, 0, 0)
#define SBI_CALL3(e, f, a, b, c) sbi_call((e), (f), (a), (b), (c), 0, 0, 0)

/* BASE */
struct sbiret sbi_get_spec_version(void); /* value: bits 30:24 major, 23:0 minor */
struct sbiret sbi_get_impl_id(void);
struct sbiret sbi_get_impl_version(void);
long sbi_probe_extension(unsigned long eid); /* 0 if absent, non-zero if present */
#define SBI_SPEC_MAJOR(v) (((unsigned long)(v) >> 24) & 0x7f)
#define SBI_SPEC_MINOR(v) ((unsigned long)(v) & 0xffffff)

/* TIME */
struct sbiret sbi_set_timer(uint64_t stime_value);

/* IPI */
struct sbiret sbi_send_ipi(unsigned long hart_mask, unsigned long hart_mask_base);

/* RFENCE */
struct sbiret sbi_remote_fence_i(unsigned long hart_mask, unsigned long hart_mask_base);
struct sbiret sbi_remote_sfence_vma(unsigned long hart_mask, unsigned long hart_mask_base,
                                    unsigned long start, unsigned long size);

/* HSM */
struct sbiret sbi_hart_get_status(unsigned long hartid);
struct sbiret sbi_hart_start(unsigned long hartid, unsigned long start_addr, unsigned long opaque);

/* SRST: system_reset returns only on error. */
struct sbiret sbi_system_reset(uint32_t type, uint32_t reason);
NORETURN void sbi_shutdown(uint32_t reason);

/* DBCN: write num_bytes from the physical address base. value = bytes written. */
struct sbiret sbi_debug_console_write(unsigned long num_bytes, unsigned long base_addr);
struct sbiret sbi_debug_console_write_byte(uint8_t byte);

/* Legacy console (EID 0x01 / 0x02): the result is in a0. */
long sbi_legacy_putchar(int c);
long sbi_legacy_getchar(void);

#endif
