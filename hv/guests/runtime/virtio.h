/* virtio-mmio (version 2, virtio 1.x) for the bundled guests' drivers: the registers, finding
 * a device of a given type in the device tree, the status/feature handshake, and setting up a
 * split virtqueue whose rings the driver keeps in its own static memory. */
#ifndef RT_VIRTIO_H
#define RT_VIRTIO_H

#include "types.h"

/* registers */
#define VIRTIO_R_MAGIC 0x000
#define VIRTIO_R_VERSION 0x004
#define VIRTIO_R_DEVICE_ID 0x008
#define VIRTIO_R_DEV_FEATURES 0x010
#define VIRTIO_R_DEV_FEATURES_SEL 0x014
#define VIRTIO_R_DRV_FEATURES 0x020
#define VIRTIO_R_DRV_FEATURES_SEL 0x024
#define VIRTIO_R_QUEUE_SEL 0x030
#define VIRTIO_R_QUEUE_NUM_MAX 0x034
#define VIRTIO_R_QUEUE_NUM 0x038
#define VIRTIO_R_QUEUE_READY 0x044
#define VIRTIO_R_QUEUE_NOTIFY 0x050
#define VIRTIO_R_INT_STATUS 0x060
#define VIRTIO_R_INT_ACK 0x064
#define VIRTIO_R_STATUS 0x070
#define VIRTIO_R_DESC_LO 0x080
#define VIRTIO_R_DESC_HI 0x084
#define VIRTIO_R_DRIVER_LO 0x090
#define VIRTIO_R_DRIVER_HI 0x094
#define VIRTIO_R_DEVICE_LO 0x0a0
#define VIRTIO_R_DEVICE_HI 0x0a4
#define VIRTIO_R_CONFIG 0x100

#define VIRTIO_MAGIC 0x74726976u /* "virt" */

/* device status bits */
#define VIRTIO_S_ACKNOWLEDGE 1u
#define VIRTIO_S_DRIVER 2u
#define VIRTIO_S_DRIVER_OK 4u
#define VIRTIO_S_FEATURES_OK 8u
#define VIRTIO_S_NEEDS_RESET 64u

#define VIRTIO_F_VERSION_1 (1ull << 32)
#define VIRTIO_F_RING_EVENT_IDX (1ull << 29)

#define VIRTIO_DEVICE_NET 1
#define VIRTIO_DEVICE_BLK 2

/* descriptor flags */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};
struct virtq_used_elem {
    uint32_t id, len;
};

struct virtio_dev {
    volatile uint32_t *regs;
    uint64_t base; /* guest-physical address of the register window */
    uint64_t features; /* negotiated */
    uint32_t irq;      /* its PLIC source ("interrupts" in the device tree; 0: none) */
};

/* EVENT_IDX (virtio 1.x, 2.7.10): does moving an index from `old` to `now` pass `event`, the
 * index the other side asked to hear about? */
static inline bool virtio_need_event(uint16_t event, uint16_t now, uint16_t old)
{
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

static inline void virtio_w(const struct virtio_dev *d, unsigned off, uint32_t v)
{
    d->regs[off / 4] = v;
}
static inline uint32_t virtio_r(const struct virtio_dev *d, unsigned off)
{
    return d->regs[off / 4];
}
static inline volatile uint8_t *virtio_config(const struct virtio_dev *d)
{
    return (volatile uint8_t *)d->regs + VIRTIO_R_CONFIG;
}
static inline void virtio_mb(void) { __asm__ volatile("fence rw, rw" ::: "memory"); }

/* The first virtio-mmio device (modern, version 2) of `device_id` in the device tree. */
bool virtio_find(uint32_t device_id, struct virtio_dev *d);
/* Reset, ACKNOWLEDGE | DRIVER, then take the features in `want` that the device offers
 * (VIRTIO_F_VERSION_1 always) and set FEATURES_OK; false if the device refused them. */
bool virtio_negotiate(struct virtio_dev *d, uint64_t want);
/* Set up queue `index` with `num` descriptors at the given ring addresses; false if the
 * device's queues are smaller. */
bool virtio_setup_queue(struct virtio_dev *d, unsigned index, unsigned num, const void *desc,
                        const void *avail, const void *used);
/* DRIVER_OK: the device is live. */
void virtio_driver_ok(struct virtio_dev *d);
/* Acknowledge any pending interrupt (polling drivers do this after taking used buffers). */
void virtio_ack_interrupt(struct virtio_dev *d);

#endif
