#include "fdt.h"
#include "str.h"

#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9
#define FDT_MAX_DEPTH 32

static const uint8_t *blob;
static const uint8_t *dt_struct;
static uint32_t struct_size;
static const char *dt_strings;
static uint32_t strings_size;

bool fdt_init(const void *fdt)
{
    blob = NULL;
    if (!fdt || ((uintptr_t)fdt & 3))
        return false;
    const uint8_t *h = fdt;
    if (be32(h) != FDT_MAGIC)
        return false;
    uint32_t total = be32(h + 4), off_struct = be32(h + 8), off_strings = be32(h + 12);
    uint32_t version = be32(h + 20), size_strings = be32(h + 32), size_struct = be32(h + 36);
    if (version < 17 || off_struct > total || size_struct > total - off_struct ||
        off_strings > total || size_strings > total - off_strings)
        return false;
    blob = h;
    dt_struct = h + off_struct;
    struct_size = size_struct;
    dt_strings = (const char *)h + off_strings;
    strings_size = size_strings;
    return true;
}

const void *fdt_blob(void) { return blob; }
uint32_t fdt_total_size(void) { return blob ? be32(blob + 4) : 0; }

/* Read the token at *off (skipping NOPs); advance *off past it and its payload.
 * For BEGIN_NODE, name gets the node name; for PROP, name, val and len the property. */
static int next_token(uint32_t *off, const char **name, const void **val, uint32_t *len)
{
    for (;;) {
        if (*off + 4 > struct_size)
            return -1;
        uint32_t tok = be32(dt_struct + *off);
        *off += 4;
        switch (tok) {
        case FDT_NOP:
            continue;
        case FDT_BEGIN_NODE: {
            const char *n = (const char *)dt_struct + *off;
            uint32_t l = 0;
            while (*off + l < struct_size && n[l])
                l++;
            if (*off + l >= struct_size)
                return -1;
            *name = n;
            *off += ALIGN_UP(l + 1, 4U);
            return FDT_BEGIN_NODE;
        }
        case FDT_PROP: {
            if (*off + 8 > struct_size)
                return -1;
            uint32_t plen = be32(dt_struct + *off), nameoff = be32(dt_struct + *off + 4);
            *off += 8;
            if (plen > struct_size - *off || nameoff >= strings_size)
                return -1;
            *name = dt_strings + nameoff;
            *val = dt_struct + *off;
            *len = plen;
            *off += ALIGN_UP(plen, 4U);
            return FDT_PROP;
        }
        case FDT_END_NODE:
        case FDT_END:
            return (int)tok;
        default:
            return -1;
        }
    }
}

const char *fdt_node_name(int node)
{
    if (!blob || node < 0)
        return NULL;
    uint32_t off = (uint32_t)node;
    const char *name;
    const void *val;
    uint32_t len;
    return next_token(&off, &name, &val, &len) == FDT_BEGIN_NODE ? name : NULL;
}

const void *fdt_getprop(int node, const char *pname, uint32_t *lenp)
{
    if (!blob || node < 0)
        return NULL;
    uint32_t off = (uint32_t)node;
    const char *name;
    const void *val;
    uint32_t len;
    if (next_token(&off, &name, &val, &len) != FDT_BEGIN_NODE)
        return NULL;
    /* Properties precede subnodes. */
    while (next_token(&off, &name, &val, &len) == FDT_PROP) {
        if (strcmp(name, pname) == 0) {
            if (lenp)
                *lenp = len;
            return val;
        }
    }
    return NULL;
}

bool fdt_getprop_u32(int node, const char *name, uint32_t *out)
{
    uint32_t len;
    const void *v = fdt_getprop(node, name, &len);
    if (!v || len < 4)
        return false;
    *out = be32(v);
    return true;
}

/* Does node name `n` match path component `c` (length clen)? */
static bool name_matches(const char *n, const char *c, size_t clen)
{
    if (strncmp(n, c, clen) != 0)
        return false;
    if (n[clen] == '\0')
        return true;
    if (n[clen] != '@')
        return false;
    for (size_t i = 0; i < clen; i++) /* "name@addr" components must match exactly */
        if (c[i] == '@')
            return false;
    return true;
}

int fdt_path_offset(const char *path)
{
    if (!blob || path[0] != '/')
        return -1;
    uint32_t off = 0;
    const char *name;
    const void *val;
    uint32_t len;
    int node = 0; /* the root */
    if (next_token(&off, &name, &val, &len) != FDT_BEGIN_NODE)
        return -1;
    const char *p = path + 1;
    while (*p) {
        size_t clen = 0;
        while (p[clen] && p[clen] != '/')
            clen++;
        /* Search the children of the current node (off is just past its BEGIN_NODE). */
        int depth = 0, found = -1;
        for (;;) {
            uint32_t here = off;
            int tok = next_token(&off, &name, &val, &len);
            if (tok == FDT_BEGIN_NODE) {
                if (depth == 0 && name_matches(name, p, clen)) {
                    found = (int)here;
                    break;
                }
                depth++;
            } else if (tok == FDT_END_NODE) {
                if (depth-- == 0)
                    break;
            } else if (tok != FDT_PROP) {
                return -1;
            }
        }
        if (found < 0)
            return -1;
        node = found;
        p += clen;
        while (*p == '/')
            p++;
    }
    return node;
}

static bool compat_contains(const char *list, uint32_t len, const char *compat)
{
    size_t clen = strlen(compat);
    uint32_t i = 0;
    while (i < len) {
        const char *s = list + i;
        size_t l = 0;
        while (i + l < len && s[l])
            l++;
        if (l == clen && memcmp(s, compat, clen) == 0)
            return true;
        i += (uint32_t)l + 1;
    }
    return false;
}

int fdt_node_by_compatible(const char *compat, int after)
{
    if (!blob)
        return -1;
    uint32_t off = 0;
    const char *name;
    const void *val;
    uint32_t len;
    int cur = -1;
    for (;;) {
        uint32_t here = off;
        int tok = next_token(&off, &name, &val, &len);
        if (tok == FDT_BEGIN_NODE) {
            cur = (int)here;
        } else if (tok == FDT_PROP) {
            if (cur > after && strcmp(name, "compatible") == 0 &&
                compat_contains(val, len, compat))
                return cur;
        } else if (tok != FDT_END_NODE) {
            return -1;
        }
    }
}

/* Find the parent of `node` and its #address-cells / #size-cells (defaults 2 and 1). */
static bool parent_cells(int node, uint32_t *ac, uint32_t *sc)
{
    int stack[FDT_MAX_DEPTH];
    int depth = 0;
    uint32_t off = 0;
    const char *name;
    const void *val;
    uint32_t len;
    for (;;) {
        uint32_t here = off;
        int tok = next_token(&off, &name, &val, &len);
        if (tok == FDT_BEGIN_NODE) {
            if ((int)here == node) {
                if (depth == 0)
                    return false; /* the root has no parent */
                int parent = stack[depth - 1];
                if (!fdt_getprop_u32(parent, "#address-cells", ac))
                    *ac = 2;
                if (!fdt_getprop_u32(parent, "#size-cells", sc))
                    *sc = 1;
                return true;
            }
            if (depth == FDT_MAX_DEPTH)
                return false;
            stack[depth++] = (int)here;
        } else if (tok == FDT_END_NODE) {
            if (depth)
                depth--;
        } else if (tok != FDT_PROP) {
            return false;
        }
    }
}

static uint64_t read_cells(const uint8_t *p, uint32_t n)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++)
        v = (v << 32) | be32(p + 4 * i);
    return v;
}

bool fdt_reg(int node, unsigned index, uint64_t *addr, uint64_t *size)
{
    uint32_t ac, sc, len;
    if (!parent_cells(node, &ac, &sc) || ac > 2 || sc > 2)
        return false;
    const uint8_t *reg = fdt_getprop(node, "reg", &len);
    uint32_t entry = 4 * (ac + sc);
    if (!reg || entry == 0 || (uint64_t)(index + 1) * entry > len)
        return false;
    reg += index * entry;
    *addr = read_cells(reg, ac);
    *size = read_cells(reg + 4 * ac, sc);
    return true;
}

const char *fdt_bootargs(void)
{
    uint32_t len;
    const char *v = fdt_getprop(fdt_path_offset("/chosen"), "bootargs", &len);
    if (!v || len == 0 || v[len - 1] != '\0')
        return "";
    return v;
}
