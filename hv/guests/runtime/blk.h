/* A virtio-blk driver for the bundled guests (virtio-mmio, found in the device tree). One
 * request at a time, polled: the caller's buffer is the request's data (no copy), at most
 * blk_max_sectors() sectors per request (the driver splits larger ones). Requests are in
 * 512-byte sectors whatever the disk's blk_size. */
#ifndef RT_BLK_H
#define RT_BLK_H

#include "types.h"

/* Status of a request: the device's status byte (0 ok, 1 I/O error, 2 unsupported), or
 * BLK_TIMEOUT if the device did not answer in time (or needs a reset). */
#define BLK_OK 0
#define BLK_IOERR 1
#define BLK_UNSUPP 2
#define BLK_TIMEOUT (-1)

struct blk_info {
    uint64_t base;       /* the device's register window */
    uint64_t capacity;   /* in 512-byte sectors */
    uint32_t blk_size;   /* the device's block size (512 unless it says otherwise) */
    bool read_only;      /* VIRTIO_BLK_F_RO */
    bool flush;          /* VIRTIO_BLK_F_FLUSH negotiated */
};

/* Find and start the first virtio-blk device; false (with a message) if there is none or it
 * refuses us. */
bool blk_init(void);
const struct blk_info *blk_info(void);
uint32_t blk_max_sectors(void);

int blk_read(uint64_t sector, void *buf, uint64_t count);
int blk_write(uint64_t sector, const void *buf, uint64_t count);
int blk_flush(void);
/* The device's ID string (its serial), NUL-terminated: out has room for 21 bytes. */
int blk_get_id(char *out);
/* "ok", "I/O error", "unsupported" or "timeout" */
const char *blk_status_name(int status);

#endif
