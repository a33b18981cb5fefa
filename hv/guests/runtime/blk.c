/* The bundled guests' virtio-blk driver: see blk.h. One split queue of QSIZE descriptors in
 * static memory; a request is three descriptors (header, data, status byte), made available
 * and polled for until the device hands it back. */
#include "rt.h"
#include "blk.h"
#include "virtio.h"

#define QSIZE 8
#define SECTOR 512
#define TIMEOUT_MS 10000

#define F_SIZE_MAX (1ull << 1)
#define F_SEG_MAX (1ull << 2)
#define F_RO (1ull << 5)
#define F_BLK_SIZE (1ull << 6)
#define F_FLUSH (1ull << 9)

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8

#define DEFAULT_MAX_BYTES (64u << 10) /* per request, without F_SIZE_MAX */

struct req_header {
    uint32_t type, reserved;
    uint64_t sector;
};

static struct {
    struct virtq_desc desc[QSIZE] __attribute__((aligned(16)));
    struct {
        uint16_t flags, idx, ring[QSIZE], used_event;
    } avail __attribute__((aligned(4)));
    struct {
        uint16_t flags, idx;
        struct virtq_used_elem ring[QSIZE];
        uint16_t avail_event;
    } used __attribute__((aligned(4)));
    uint16_t next_avail, last_used;
} q __attribute__((aligned(4096)));

static struct req_header hdr;
static volatile uint8_t status;
static struct virtio_dev dev;
static struct blk_info info;
static uint32_t max_sectors;

const struct blk_info *blk_info(void) { return &info; }
uint32_t blk_max_sectors(void) { return max_sectors; }

static uint32_t cfg32(unsigned off)
{
    volatile uint8_t *c = virtio_config(&dev);
    return (uint32_t)c[off] | (uint32_t)c[off + 1] << 8 | (uint32_t)c[off + 2] << 16 |
           (uint32_t)c[off + 3] << 24;
}

bool blk_init(void)
{
    if (!virtio_find(VIRTIO_DEVICE_BLK, &dev)) {
        puts("blk: no virtio-blk device in the device tree");
        return false;
    }
    if (!virtio_negotiate(&dev, F_SIZE_MAX | F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH)) {
        puts("blk: the device refused our features");
        return false;
    }
    if (!virtio_setup_queue(&dev, 0, QSIZE, q.desc, &q.avail, &q.used)) {
        puts("blk: the device's queue is too small");
        return false;
    }
    info.base = dev.base;
    info.capacity = (uint64_t)cfg32(0) | (uint64_t)cfg32(4) << 32;
    info.blk_size = dev.features & F_BLK_SIZE ? cfg32(20) : SECTOR;
    info.read_only = (dev.features & F_RO) != 0;
    info.flush = (dev.features & F_FLUSH) != 0;
    uint32_t max_bytes = DEFAULT_MAX_BYTES;
    if (dev.features & F_SIZE_MAX) {
        uint32_t size_max = cfg32(8);
        if (size_max >= SECTOR && size_max < max_bytes)
            max_bytes = size_max;
    }
    max_sectors = max_bytes / SECTOR;
    virtio_driver_ok(&dev);
    return true;
}

/* One request: header, an optional data buffer (device-writable if `into`), the status. */
static int submit(uint32_t type, uint64_t sector, void *data, uint32_t len, bool into)
{
    if (!dev.regs)
        return BLK_TIMEOUT;
    hdr.type = type, hdr.reserved = 0, hdr.sector = sector;
    status = 0xff;
    unsigned n = 0;
    q.desc[n] = (struct virtq_desc){(uintptr_t)&hdr, sizeof hdr, VIRTQ_DESC_F_NEXT, 1};
    n++;
    if (len) {
        uint16_t flags = VIRTQ_DESC_F_NEXT | (into ? VIRTQ_DESC_F_WRITE : 0);
        q.desc[n] = (struct virtq_desc){(uintptr_t)data, len, flags, 2};
        n++;
    }
    q.desc[n] = (struct virtq_desc){(uintptr_t)&status, 1, VIRTQ_DESC_F_WRITE, 0};
    q.avail.ring[q.next_avail % QSIZE] = 0;
    virtio_mb();
    q.next_avail++;
    q.avail.idx = q.next_avail;
    virtio_mb();
    virtio_w(&dev, VIRTIO_R_QUEUE_NOTIFY, 0);
    uint64_t deadline = time_now() + timer_ms_to_ticks(TIMEOUT_MS);
    for (unsigned spins = 1;; spins++) {
        virtio_mb();
        if (q.used.idx != q.last_used)
            break;
        /* a register read is an exit to the host: look at the status only now and then */
        if (time_now() >= deadline ||
            (spins % 256 == 0 && virtio_r(&dev, VIRTIO_R_STATUS) & VIRTIO_S_NEEDS_RESET))
            return BLK_TIMEOUT;
    }
    q.last_used++;
    virtio_ack_interrupt(&dev);
    virtio_mb();
    return status;
}

static int rw(uint32_t type, uint64_t sector, uint8_t *buf, uint64_t count)
{
    while (count) {
        uint64_t n = count < max_sectors ? count : max_sectors;
        int st = submit(type, sector, buf, (uint32_t)(n * SECTOR), type == T_IN);
        if (st != BLK_OK)
            return st;
        sector += n, buf += n * SECTOR, count -= n;
    }
    return BLK_OK;
}

int blk_read(uint64_t sector, void *buf, uint64_t count) { return rw(T_IN, sector, buf, count); }

int blk_write(uint64_t sector, const void *buf, uint64_t count)
{
    return rw(T_OUT, sector, (uint8_t *)(uintptr_t)buf, count);
}

int blk_flush(void) { return submit(T_FLUSH, 0, NULL, 0, false); }

int blk_get_id(char *out)
{
    static uint8_t id[20];
    memset(id, 0, sizeof id);
    int st = submit(T_GET_ID, 0, id, sizeof id, true);
    memcpy(out, id, sizeof id);
    out[20] = '\0';
    if (st != BLK_OK)
        out[0] = '\0';
    return st;
}

const char *blk_status_name(int st)
{
    switch (st) {
    case BLK_OK:
        return "ok";
    case BLK_IOERR:
        return "I/O error";
    case BLK_UNSUPP:
        return "unsupported";
    case BLK_TIMEOUT:
        return "timeout";
    default:
        return "bad status";
    }
}
