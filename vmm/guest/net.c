/*
 * vhostkit test guest: a minimal interrupt-driven virtio-net driver. It finds the
 * first virtio-mmio network device through ACPI (see virtio_guest.h), negotiates
 * VERSION_1 and MAC, reads its MAC from config space, posts receive buffers on
 * queue 0, sends one broadcast frame on queue 1 (ethertype 0x88b5, the IEEE local
 * experimental type, payload HELLO) and waits by interrupt for a frame of that
 * type carrying REPLY, skipping whatever else arrives (the host's IPv6 neighbour
 * discovery, for one). The host side of the test answers through the tap.
 *
 * On COM1 it prints
 *   virtio-net: LNRO0005 at 0x... GSI g (ACPI)
 *   virtio-net: mac 52:54:00:12:34:56
 *   virtio-net: sent 60 bytes, got the reply (N bytes) after K other frames ok
 * or
 *   virtio-net: FAIL: <what went wrong>
 * and powers off either way.
 */

#include "virtio_guest.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_NET_F_MAC 5
#define ETHERTYPE_TEST 0x88b5
/* virtio_net_hdr with VERSION_1: 12 bytes (num_buffers included). */
#define NET_HDR 12
#define RX_BUF 2048
#define RX_BUFS 4
/* Frames to look through for the reply before giving up. */
#define MAX_FRAMES 64

static const char HELLO[] = "vhostkit vmm net guest hello";
static const char REPLY[] = "vhostkit vmm net host reply";

#define RX_RINGS 0x200000UL /* three pages */
#define TX_RINGS 0x203000UL /* three pages */
#define TX_BUF ((volatile u8 *)0x206000UL)
#define RX_BASE 0x207000UL /* RX_BUFS buffers of RX_BUF bytes */

static volatile u8 *rx_buf(u16 i)
{
    return (volatile u8 *)(RX_BASE + (u64)i * RX_BUF);
}

/* Offers receive buffer `i` (descriptor i) to the device. */
static void post_rx(struct vq *rx, u16 i)
{
    rx->desc[i].addr = (u64)rx_buf(i);
    rx->desc[i].len = RX_BUF;
    rx->desc[i].flags = VRING_DESC_F_WRITE;
    rx->desc[i].next = 0;
    submit(rx, i);
}

void guest_main(const volatile u8 *zero_page)
{
    STATE->name = "virtio-net";
    STATE->mmio_base = 0;
    STATE->interrupts = 0;
    STATE->timed_out = 0;
    find_device(zero_page, VIRTIO_ID_NET);

    negotiate(1u << VIRTIO_NET_F_MAC);
    struct vq rx, tx;
    queue_setup(&rx, 0, RX_RINGS);
    queue_setup(&tx, 1, TX_RINGS);
    driver_ok();

    u8 mac[6];
    for (u32 i = 0; i < 6; i++)
        mac[i] = rd_config8(i);
    line("mac ");
    for (u32 i = 0; i < 6; i++) {
        putc("0123456789abcdef"[mac[i] >> 4]);
        putc("0123456789abcdef"[mac[i] & 0xf]);
        if (i < 5)
            putc(':');
    }
    puts("\n");
    if (mac[0] & 1)
        fail("multicast MAC in config space, first byte", mac[0]);

    for (u16 i = 0; i < RX_BUFS; i++)
        post_rx(&rx, i);

    /* The frame: a zeroed virtio_net_hdr (no offloads), then Ethernet, padded to
       the 60-byte minimum. */
    u32 len = NET_HDR + 60;
    for (u32 i = 0; i < len; i++)
        TX_BUF[i] = 0;
    volatile u8 *eth = TX_BUF + NET_HDR;
    for (u32 i = 0; i < 6; i++) {
        eth[i] = 0xff;
        eth[6 + i] = mac[i];
    }
    eth[12] = ETHERTYPE_TEST >> 8;
    eth[13] = ETHERTYPE_TEST & 0xff;
    for (u32 i = 0; HELLO[i]; i++)
        eth[14 + i] = HELLO[i];
    tx.desc[0].addr = (u64)TX_BUF;
    tx.desc[0].len = len;
    tx.desc[0].flags = 0;
    tx.desc[0].next = 0;
    submit(&tx, 0);
    volatile struct used_elem *e = wait_used(&tx, 1, "no interrupt for the sent frame in 5 s, used idx");
    if (e->id != 0)
        fail("tx used element names descriptor", e->id);

    u32 others = 0;
    for (u16 seen = 1; seen <= MAX_FRAMES; seen++) {
        e = wait_used(&rx, seen, "no reply frame within 5 s, rx used idx");
        u16 id = (u16)e->id;
        u32 got = e->len;
        if (id >= RX_BUFS)
            fail("rx used element names descriptor", id);
        if (got > RX_BUF)
            fail("rx used length beyond the buffer", got);
        volatile u8 *f = rx_buf(id) + NET_HDR;
        u32 n = got > NET_HDR ? got - NET_HDR : 0;
        u32 r = sizeof(REPLY) - 1;
        int match = n >= 14 + r && f[12] == ETHERTYPE_TEST >> 8 &&
                    f[13] == (ETHERTYPE_TEST & 0xff) && bytes_eq(f + 14, REPLY, r);
        if (match) {
            for (u32 i = 0; i < 6; i++)
                if (f[i] != mac[i])
                    fail("reply not addressed to our MAC, byte", f[i]);
            line("sent 60 bytes, got the reply (");
            putdec(n);
            puts(" bytes) after ");
            putdec(others);
            puts(" other frames ok\n");
            poweroff();
        }
        others++;
        post_rx(&rx, id);
    }
    fail("no reply among the frames received, frames", MAX_FRAMES);
}
