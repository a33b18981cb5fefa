/* blktest: exercises the first virtio-blk disk through the runtime's driver (blk.h).
 *
 * bootargs:
 *   blk.mode=write (default)  write the pattern over the first N sectors, FLUSH, read them
 *                             back and check them
 *   blk.mode=verify           only read the first N sectors and check the pattern (what an
 *                             earlier boot, or another VM, wrote)
 *   blk.mode=write-flush-hang write and FLUSH, print "blktest: flushed", then hang forever
 *                             (for a test that kills the host process and checks the disk)
 *   blk.sectors=N             how many sectors (default 2048)
 *   blk.seed=S                the pattern's seed (default 1)
 *   blk.chunk=C               sectors per request (default and at most: the driver's limit)
 *
 * The pattern: 64-bit little-endian word w of the disk (byte offset 8w) holds
 * splitmix64(seed ^ (w * 0x9e3779b97f4a7c15)), so any range can be checked on its own.
 *
 * Console, one line each, stable for tests and scripts:
 *   blktest: virtio-blk at 0x10001000: 8192 sectors (4 MiB), blk_size 512, rw, serial hv-disk0
 *   blktest: wrote 2048 sectors, flushed, read back 2048 sectors: ok (serial hv-disk0)
 *   blktest: verified 2048 sectors: ok (serial hv-disk0)
 *   blktest: wrote 2048 sectors           (write-flush-hang, then)
 *   blktest: flushed
 * and on failure (the guest then shuts down with "system failure"):
 *   blktest: verify failed at sector S (offset O: got 0x..., want 0x...)
 *   blktest: write of sectors S+N failed: I/O error
 *   blktest: N sectors do not fit on the disk (C sectors)
 *   blktest: the disk is read-only
 */
#include "rt.h"
#include "blk.h"

#define SECTOR 512

static uint64_t pattern_word(uint64_t seed, uint64_t w)
{
    uint64_t z = seed ^ (w * 0x9e3779b97f4a7c15ull);
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(uint64_t *buf, uint64_t sector, uint64_t count, uint64_t seed)
{
    uint64_t w0 = sector * (SECTOR / 8);
    for (uint64_t i = 0; i < count * (SECTOR / 8); i++)
        buf[i] = pattern_word(seed, w0 + i);
}

/* Check count sectors at `sector` in buf; false (with the failure line) on a mismatch. */
static bool check(const uint64_t *buf, uint64_t sector, uint64_t count, uint64_t seed)
{
    uint64_t w0 = sector * (SECTOR / 8);
    for (uint64_t i = 0; i < count * (SECTOR / 8); i++) {
        uint64_t want = pattern_word(seed, w0 + i);
        if (buf[i] != want) {
            uint64_t off = (w0 + i) * 8;
            printf("blktest: verify failed at sector %lu (offset %lu: got 0x%016lx, want "
                   "0x%016lx)\n",
                   (unsigned long)(off / SECTOR), (unsigned long)off, (unsigned long)buf[i],
                   (unsigned long)want);
            return false;
        }
    }
    return true;
}

static bool io_failed(const char *what, uint64_t sector, uint64_t n, int st)
{
    if (st == BLK_OK)
        return false;
    printf("blktest: %s of sectors %lu+%lu failed: %s\n", what, (unsigned long)sector,
           (unsigned long)n, blk_status_name(st));
    return true;
}

static bool write_all(uint64_t *buf, uint64_t sectors, uint64_t chunk, uint64_t seed)
{
    for (uint64_t s = 0; s < sectors; s += chunk) {
        uint64_t n = sectors - s < chunk ? sectors - s : chunk;
        fill(buf, s, n, seed);
        if (io_failed("write", s, n, blk_write(s, buf, n)))
            return false;
    }
    return true;
}

static bool verify_all(uint64_t *buf, uint64_t sectors, uint64_t chunk, uint64_t seed)
{
    for (uint64_t s = 0; s < sectors; s += chunk) {
        uint64_t n = sectors - s < chunk ? sectors - s : chunk;
        memset(buf, 0xa5, n * SECTOR); /* stale data must not pass for read data */
        if (io_failed("read", s, n, blk_read(s, buf, n)) || !check(buf, s, n, seed))
            return false;
    }
    return true;
}

static bool flush(void)
{
    int st = blk_flush();
    if (st != BLK_OK) {
        printf("blktest: flush failed: %s\n", blk_status_name(st));
        return false;
    }
    return true;
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    if (!blk_init())
        return 1;
    const struct blk_info *d = blk_info();
    char serial[21];
    int st = blk_get_id(serial);
    if (st != BLK_OK) {
        printf("blktest: GET_ID failed: %s\n", blk_status_name(st));
        return 1;
    }
    printf("blktest: virtio-blk at 0x%lx: %lu sectors (%lu MiB), blk_size %u, %s, serial %s\n",
           (unsigned long)d->base, (unsigned long)d->capacity,
           (unsigned long)(d->capacity >> 11), d->blk_size, d->read_only ? "ro" : "rw", serial);

    char mode[24];
    bootarg_str("blk.mode", mode, sizeof mode, "write");
    uint64_t sectors = bootarg_ulong("blk.sectors", 2048);
    uint64_t seed = bootarg_ulong("blk.seed", 1);
    uint64_t chunk = bootarg_ulong("blk.chunk", blk_max_sectors());
    if (chunk == 0 || chunk > blk_max_sectors())
        chunk = blk_max_sectors();
    bool verify = strcmp(mode, "verify") == 0, hang = strcmp(mode, "write-flush-hang") == 0;
    if (!verify && !hang && strcmp(mode, "write") != 0) {
        printf("blktest: unknown blk.mode=%s (write, verify, write-flush-hang)\n", mode);
        return 1;
    }
    if (sectors > d->capacity) {
        printf("blktest: %lu sectors do not fit on the disk (%lu sectors)\n",
               (unsigned long)sectors, (unsigned long)d->capacity);
        return 1;
    }
    if (!verify && d->read_only) {
        puts("blktest: the disk is read-only");
        return 1;
    }
    uint64_t *buf = alloc(chunk * SECTOR, 4096);

    if (verify) {
        if (!verify_all(buf, sectors, chunk, seed))
            return 1;
        printf("blktest: verified %lu sectors: ok (serial %s)\n", (unsigned long)sectors, serial);
        return 0;
    }
    if (!write_all(buf, sectors, chunk, seed))
        return 1;
    if (hang) {
        printf("blktest: wrote %lu sectors\n", (unsigned long)sectors);
        if (!flush())
            return 1;
        puts("blktest: flushed");
        for (;;) /* hang, idle: wfi with no interrupt enabled waits for good */
            __asm__ volatile("wfi");
    }
    if (!flush() || !verify_all(buf, sectors, chunk, seed))
        return 1;
    printf("blktest: wrote %lu sectors, flushed, read back %lu sectors: ok (serial %s)\n",
           (unsigned long)sectors, (unsigned long)sectors, serial);
    return 0;
}
