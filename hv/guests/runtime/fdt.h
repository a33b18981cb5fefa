/* A minimal flattened device tree (DTB, Devicetree Specification v0.4 chapter 5) reader.
 *
 * Nodes are named by their offset in the structure block (>= 0); functions that find a node
 * return -1 when there is none.
 */
#ifndef RT_FDT_H
#define RT_FDT_H

#include "types.h"

#define FDT_MAGIC 0xd00dfeedU

/* Validate the header and remember the blob. Returns false (and forgets it) if invalid. */
bool fdt_init(const void *fdt);
const void *fdt_blob(void);
uint32_t fdt_total_size(void);

/* An absolute path such as "/chosen" or "/soc/plic@c000000". A component without a unit
 * address ("memory") also matches a node that has one ("memory@80000000"). "/" is the root. */
int fdt_path_offset(const char *path);
/* The first node after `after` (-1: from the start) whose compatible list contains compat. */
int fdt_node_by_compatible(const char *compat, int after);
/* The node's name (with unit address), or NULL. */
const char *fdt_node_name(int node);

/* A property's value and length, or NULL. */
const void *fdt_getprop(int node, const char *name, uint32_t *len);
bool fdt_getprop_u32(int node, const char *name, uint32_t *out);
/* The index-th (address, size) pair of the node's "reg", using its parent's #address-cells
 * and #size-cells. */
bool fdt_reg(int node, unsigned index, uint64_t *addr, uint64_t *size);

/* /chosen bootargs, or "" when absent. */
const char *fdt_bootargs(void);

/* Big-endian loads (the DTB is big-endian). */
static inline uint32_t be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

#endif
