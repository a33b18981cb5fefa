/* Fixed-width types and small helpers for a freestanding runtime (no libc). */
#ifndef RT_TYPES_H
#define RT_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdbool.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define UNUSED(x) ((void)(x))
#define NORETURN __attribute__((noreturn))

#endif
