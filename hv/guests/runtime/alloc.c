#include "alloc.h"
#include "rt.h"
#include "str.h"

static uintptr_t heap_cur, heap_end;

void alloc_init(uintptr_t start, uintptr_t end)
{
    heap_cur = start;
    heap_end = end > start ? end : start;
}

void *alloc_try(size_t size, size_t align)
{
    if (!align)
        align = 16;
    uintptr_t p = ALIGN_UP(heap_cur, (uintptr_t)align);
    if (p < heap_cur || p > heap_end || size > heap_end - p)
        return NULL;
    heap_cur = p + size;
    return (void *)p;
}

void *alloc(size_t size, size_t align)
{
    void *p = alloc_try(size, align);
    if (!p)
        panic("out of memory: %zu bytes wanted, %zu left", size, alloc_remaining());
    return p;
}

void *zalloc(size_t size, size_t align)
{
    void *p = alloc(size, align);
    memset(p, 0, size);
    return p;
}

size_t alloc_remaining(void) { return heap_end - heap_cur; }
