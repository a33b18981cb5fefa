/* virtio-mmio helpers shared by the bundled guests' drivers: see virtio.h. */
#include "rt.h"
#include "virtio.h"

bool virtio_find(uint32_t device_id, struct virtio_dev *d)
{
    int node = -1;
    while ((node = fdt_node_by_compatible("virtio,mmio", node)) >= 0) {
        uint64_t base, size;
        if (!fdt_reg(node, 0, &base, &size))
            continue;
        volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)base;
        if (p[VIRTIO_R_MAGIC / 4] == VIRTIO_MAGIC && p[VIRTIO_R_VERSION / 4] == 2 &&
            p[VIRTIO_R_DEVICE_ID / 4] == device_id) {
            d->regs = p;
            d->base = base;
            d->features = 0;
            d->irq = 0;
            fdt_getprop_u32(node, "interrupts", &d->irq);
            return true;
        }
    }
    return false;
}

bool virtio_negotiate(struct virtio_dev *d, uint64_t want)
{
    virtio_w(d, VIRTIO_R_STATUS, 0);
    virtio_w(d, VIRTIO_R_STATUS, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER);
    want |= VIRTIO_F_VERSION_1;
    uint64_t offered = 0;
    for (uint32_t sel = 0; sel < 2; sel++) {
        virtio_w(d, VIRTIO_R_DEV_FEATURES_SEL, sel);
        offered |= (uint64_t)virtio_r(d, VIRTIO_R_DEV_FEATURES) << (32 * sel);
    }
    d->features = offered & want;
    for (uint32_t sel = 0; sel < 2; sel++) {
        virtio_w(d, VIRTIO_R_DRV_FEATURES_SEL, sel);
        virtio_w(d, VIRTIO_R_DRV_FEATURES, (uint32_t)(d->features >> (32 * sel)));
    }
    virtio_w(d, VIRTIO_R_STATUS, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
    return (virtio_r(d, VIRTIO_R_STATUS) & VIRTIO_S_FEATURES_OK) != 0;
}

bool virtio_setup_queue(struct virtio_dev *d, unsigned index, unsigned num, const void *desc,
                        const void *avail, const void *used)
{
    virtio_w(d, VIRTIO_R_QUEUE_SEL, index);
    if (virtio_r(d, VIRTIO_R_QUEUE_NUM_MAX) < num)
        return false;
    virtio_w(d, VIRTIO_R_QUEUE_NUM, num);
    uint64_t a = (uintptr_t)desc, b = (uintptr_t)avail, c = (uintptr_t)used;
    virtio_w(d, VIRTIO_R_DESC_LO, (uint32_t)a), virtio_w(d, VIRTIO_R_DESC_HI, (uint32_t)(a >> 32));
    virtio_w(d, VIRTIO_R_DRIVER_LO, (uint32_t)b), virtio_w(d, VIRTIO_R_DRIVER_HI, (uint32_t)(b >> 32));
    virtio_w(d, VIRTIO_R_DEVICE_LO, (uint32_t)c), virtio_w(d, VIRTIO_R_DEVICE_HI, (uint32_t)(c >> 32));
    virtio_w(d, VIRTIO_R_QUEUE_READY, 1);
    return true;
}

void virtio_driver_ok(struct virtio_dev *d)
{
    virtio_w(d, VIRTIO_R_STATUS,
             VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK | VIRTIO_S_DRIVER_OK);
}

void virtio_ack_interrupt(struct virtio_dev *d)
{
    uint32_t pending = virtio_r(d, VIRTIO_R_INT_STATUS);
    if (pending)
        virtio_w(d, VIRTIO_R_INT_ACK, pending);
}
