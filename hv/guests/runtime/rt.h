/* The bundled-guest runtime: include this one header.
 *
 * Startup (start.S) calls rt_init(hartid, fdt) and then
 *     int main(unsigned long hartid, const void *fdt);
 * and shuts down through SBI SRST: reason "none" if main returns 0, "system failure" otherwise.
 */
#ifndef RT_RT_H
#define RT_RT_H

#include "types.h"
#include "csr.h"
#include "sbi.h"
#include "console.h"
#include "trap.h"
#include "timer.h"
#include "alloc.h"
#include "fdt.h"
#include "str.h"
#include "check.h"

int main(unsigned long hartid, const void *fdt);

void rt_init(unsigned long hartid, const void *fdt);
/* Shut down now: SRST reason "none" if code == 0, "system failure" otherwise. */
NORETURN void rt_exit(int code);
/* Print "panic: <message>" and shut down with "system failure". */
NORETURN void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

unsigned long rt_hartid(void);

/* Linker-script symbols. */
extern char __image_start[], __image_end[], __heap_start[], __stack_top[];

/* bootargs ("key=value key2 ...", from /chosen in the device tree).
 * bootarg_get finds key and gives its value (empty for a bare "key"). */
bool bootarg_get(const char *key, const char **val, size_t *len);
/* The value as a number (decimal or 0x hex), or dflt if absent or not a number. */
unsigned long bootarg_ulong(const char *key, unsigned long dflt);
/* Copy the value into buf (NUL-terminated, truncated); returns dflt's copy if absent. */
const char *bootarg_str(const char *key, char *buf, size_t size, const char *dflt);

#endif
