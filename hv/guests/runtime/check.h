/* Self-checking guests: one "PASS <name>" or "FAIL <name>: <details>" line per check, counted
 * in rt_passed and rt_failed. */
#ifndef RT_CHECK_H
#define RT_CHECK_H

#include "types.h"

extern int rt_passed, rt_failed;

void rt_check(const char *name, bool ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
