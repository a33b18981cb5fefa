/* hello: the smallest guest. Prints a greeting with its hart id and device tree address.
 *
 * bootargs: fdt=1 also prints what the runtime's device tree reader finds (memory, timebase,
 * the UART and the virtio-mmio slots).
 */
#include "rt.h"

static void dump_compatible(const char *compat)
{
    for (int node = fdt_node_by_compatible(compat, -1); node >= 0;
         node = fdt_node_by_compatible(compat, node)) {
        uint64_t base, size;
        uint32_t irq = 0;
        fdt_getprop_u32(node, "interrupts", &irq);
        if (fdt_reg(node, 0, &base, &size))
            printf("fdt: %s %s reg=0x%lx+0x%lx irq=%u\n", compat, fdt_node_name(node),
                   (unsigned long)base, (unsigned long)size, irq);
    }
}

int main(unsigned long hartid, const void *fdt)
{
    puts("Hello from hvfabric guest!");
    printf("hart %lu, dtb at %p\n", hartid, fdt);
    const char *args = fdt_bootargs();
    if (*args)
        printf("bootargs: %s\n", args);
    if (bootarg_ulong("fdt", 0)) {
        uint64_t base, size;
        if (fdt_reg(fdt_path_offset("/memory"), 0, &base, &size))
            printf("fdt: memory 0x%lx+0x%lx\n", (unsigned long)base, (unsigned long)size);
        printf("fdt: timebase %lu Hz, heap %lu KiB free\n", (unsigned long)timer_hz(),
               (unsigned long)(alloc_remaining() / 1024));
        dump_compatible("ns16550a");
        dump_compatible("virtio,mmio");
    }
    return 0;
}
