/* fault: takes a fault on purpose, to show that a guest's fatal fault stops only that guest.
 *
 * bootargs:
 *   mode=novector  (default) stvec = 0, then a load from an unmapped physical address
 *   mode=handler   the same load, reported by the runtime's default handler, which prints
 *                  "unhandled trap: ..." and shuts down with SRST "system failure"
 *   mode=loop      stvec points at a load from the unmapped address: every trap traps again
 *   mode=fetch     jump to the unmapped address (instruction access fault, MMU off), reported
 *                  by the runtime's default handler
 *   mode=ebreak    stvec = 0, then ebreak
 *   addr=<hex>     the unmapped physical address (default 0x20000000: no device on hv-virt)
 */
#include "rt.h"

static NORETURN void load_from(unsigned long addr)
{
    __asm__ volatile("ld t0, 0(%0)" ::"r"(addr) : "t0", "memory");
    panic("load from 0x%lx did not fault", addr);
}

static NORETURN void trap_loop(unsigned long addr)
{
    __asm__ volatile(".option push\n"
                     ".option norvc\n"
                     "mv t1, %0\n"
                     "la t0, 1f\n"
                     "csrw stvec, t0\n"
                     ".balign 4\n"
                     "1: ld t0, 0(t1)\n"
                     ".option pop\n" ::"r"(addr)
                     : "t0", "t1", "memory");
    panic("load from 0x%lx did not fault", addr);
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    char mode[16];
    bootarg_str("mode", mode, sizeof(mode), "novector");
    unsigned long addr = bootarg_ulong("addr", 0x20000000UL);
    printf("fault: mode=%s addr=0x%lx\n", mode, addr);

    if (strcmp(mode, "novector") == 0) {
        csr_write(stvec, 0);
        load_from(addr);
    } else if (strcmp(mode, "handler") == 0) {
        load_from(addr);
    } else if (strcmp(mode, "loop") == 0) {
        trap_loop(addr);
    } else if (strcmp(mode, "fetch") == 0) {
        void (*fn)(void) = (void (*)(void))addr;
        fn();
        panic("jump to 0x%lx returned", addr);
    } else if (strcmp(mode, "ebreak") == 0) {
        csr_write(stvec, 0);
        __asm__ volatile("ebreak" ::: "memory");
        panic("ebreak returned");
    }
    printf("fault: unknown mode %s (novector, handler, loop, fetch, ebreak)\n", mode);
    return 2;
}
