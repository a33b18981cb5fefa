#include "rt.h"

#define RAM_BASE 0x80000000UL
#define RAM_MIN 0x01000000UL /* the smallest hv-virt machine: 16 MiB */

static unsigned long boot_hartid;

unsigned long rt_hartid(void) { return boot_hartid; }

/* Heap: from the end of the image to the end of RAM, stopping below the device tree and the
 * initrd when they sit above the image (they are placed high in RAM). */
static void heap_init(void)
{
    uintptr_t start = (uintptr_t)__heap_start;
    uintptr_t end = RAM_BASE + RAM_MIN;
    uint64_t base, size;
    int mem = fdt_path_offset("/memory");
    if (mem >= 0 && fdt_reg(mem, 0, &base, &size) && base <= start && base + size > start)
        end = (uintptr_t)(base + size);
    uintptr_t dtb = (uintptr_t)fdt_blob();
    if (dtb > start && dtb < end)
        end = dtb;
    int chosen = fdt_path_offset("/chosen");
    uint32_t len;
    const uint8_t *p = fdt_getprop(chosen, "linux,initrd-start", &len);
    if (p && (len == 4 || len == 8)) {
        uintptr_t initrd = len == 8 ? ((uintptr_t)be32(p) << 32) | be32(p + 4) : be32(p);
        if (initrd > start && initrd < end)
            end = initrd;
    }
    alloc_init(start, end);
}

void rt_init(unsigned long hartid, const void *fdt)
{
    boot_hartid = hartid;
    trap_init();
    fdt_init(fdt);
    uint32_t hz;
    if (fdt_getprop_u32(fdt_path_offset("/cpus"), "timebase-frequency", &hz))
        timer_set_hz(hz);
    timer_init();
    heap_init();
}

void panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("panic: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    rt_exit(1);
}

bool bootarg_get(const char *key, const char **val, size_t *len)
{
    const char *s = fdt_bootargs();
    size_t klen = strlen(key);
    while (*s) {
        while (*s == ' ' || *s == '\t')
            s++;
        const char *tok = s;
        while (*s && *s != ' ' && *s != '\t')
            s++;
        size_t tlen = (size_t)(s - tok);
        if (tlen >= klen && strncmp(tok, key, klen) == 0) {
            if (tlen == klen) {
                *val = tok + tlen;
                *len = 0;
                return true;
            }
            if (tok[klen] == '=') {
                *val = tok + klen + 1;
                *len = tlen - klen - 1;
                return true;
            }
        }
    }
    return false;
}

unsigned long bootarg_ulong(const char *key, unsigned long dflt)
{
    const char *v;
    size_t len;
    unsigned long out;
    if (bootarg_get(key, &v, &len) && parse_ulong(v, len, &out))
        return out;
    return dflt;
}

const char *bootarg_str(const char *key, char *buf, size_t size, const char *dflt)
{
    const char *v;
    size_t len;
    if (!bootarg_get(key, &v, &len)) {
        v = dflt;
        len = strlen(dflt);
    }
    if (size == 0)
        return buf;
    if (len >= size)
        len = size - 1;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return buf;
}
