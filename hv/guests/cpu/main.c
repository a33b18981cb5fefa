/* cpu: a deterministic CPU-bound workload for benchmarks. Each iteration refills a 256 KiB
 * buffer from a xorshift64* generator (stores), runs a table-driven CRC32 over it (loads) and
 * folds in integer multiply/divide arithmetic. The hot loop makes no SBI calls and takes no
 * traps (no rdtime, no output): a benchmark may run it on a bare vCPU in one go.
 *
 * bootargs: iters=<n> (default 100: about 300 M instructions).
 * Output, at the end only:
 *   cpu: iters=<n> bytes=<buffer size>
 *   checksum: 0x<16 hex digits>
 */
#include "rt.h"

#define BUF_BYTES (256 * 1024)
#define DEFAULT_ITERS 100

static uint32_t crc_table[256];

static void crc32_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static uint64_t xorshift64s(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t run(uint64_t *buf, unsigned long iters)
{
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    uint64_t acc = 0;
    const size_t words = BUF_BYTES / sizeof(uint64_t);
    for (unsigned long it = 0; it < iters; it++) {
        for (size_t i = 0; i < words; i++)
            buf[i] = xorshift64s(&rng);
        uint32_t crc = crc32_update((uint32_t)it, (const uint8_t *)buf, BUF_BYTES);
        /* Integer arithmetic over a strided sample of the buffer. */
        uint64_t mix = crc;
        for (size_t i = 0; i < words; i += 64) {
            uint64_t v = buf[i] | 1;
            mix = mix * 6364136223846793005ULL + v;
            mix ^= (mix >> 29) + v % 1000003;
            mix += (mix / v) ^ (uint64_t)(i * 7);
        }
        acc = (acc << 7 | acc >> 57) ^ mix ^ crc;
    }
    return acc;
}

int main(unsigned long hartid, const void *fdt)
{
    UNUSED(hartid);
    UNUSED(fdt);
    unsigned long iters = bootarg_ulong("iters", DEFAULT_ITERS);
    uint64_t *buf = alloc(BUF_BYTES, 4096);
    crc32_init();
    uint64_t sum = run(buf, iters);
    printf("cpu: iters=%lu bytes=%u\n", iters, BUF_BYTES);
    printf("checksum: 0x%016lx\n", (unsigned long)sum);
    return 0;
}
