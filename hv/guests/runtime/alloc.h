/* A bump allocator over the RAM after the image (never frees). */
#ifndef RT_ALLOC_H
#define RT_ALLOC_H

#include "types.h"

void alloc_init(uintptr_t start, uintptr_t end);
/* align must be a power of two (0 means 16). alloc_try returns NULL when out of memory;
 * alloc and zalloc panic instead. zalloc zeroes the block. */
void *alloc_try(size_t size, size_t align);
void *alloc(size_t size, size_t align);
void *zalloc(size_t size, size_t align);
size_t alloc_remaining(void);

#endif
