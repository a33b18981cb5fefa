/* Console output over the SBI debug console (DBCN), falling back to the legacy putchar call.
 *
 * printf understands %s %c %d %i %u %x %X %p %% with the l/ll/z length modifiers, a field width
 * (or *), '0' padding and '-' left alignment. Each printf call is written with as few SBI calls
 * as possible (one per 128 bytes).
 */
#ifndef RT_CONSOLE_H
#define RT_CONSOLE_H

#include "types.h"

void console_write(const char *buf, size_t len);
void putchar_(char c);
int puts(const char *s); /* writes s and a newline */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* The formatter behind both: calls emit(ctx, c) for every output character; returns the count. */
typedef void (*fmt_emit_fn)(void *ctx, char c);
int fmt_format(fmt_emit_fn emit, void *ctx, const char *fmt, va_list ap);

/* True once the DBCN extension was found (the first write probes for it). */
bool console_has_dbcn(void);

#endif
