/* The few libc string functions the runtime provides (the compiler may emit memcpy/memset). */
#ifndef RT_STR_H
#define RT_STR_H

#include "types.h"

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* Parse an unsigned number: decimal, or hex with a 0x prefix. Returns false on junk. */
bool parse_ulong(const char *s, size_t len, unsigned long *out);

#endif
