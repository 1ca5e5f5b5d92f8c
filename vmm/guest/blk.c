/*
 * vhostkit test guest: a minimal interrupt-driven virtio-blk driver. It finds the
 * first virtio-mmio block device through ACPI (see virtio_guest.h), negotiates
 * VERSION_1 only, sets up queue 0 with QUEUE_SIZE entries, reads the capacity from
 * config space (ConfigGeneration-consistent), and makes OUT requests writing a
 * pattern to sector SECTOR, each followed by an IN request reading it back into a
 * zeroed buffer, comparing; each completion is waited for by interrupt.
 *
 * The command line may hold `requests=N` (N write+read pairs, default 1; the VMM
 * benchmark counts exits per request).
 *
 * On COM1 it prints
 *   virtio-blk: LNRO0005 at 0x... GSI g (ACPI)
 *   virtio-blk: capacity N sectors, write+read sector S ok
 *   virtio-blk: R requests, I interrupts
 * or
 *   virtio-blk: FAIL: <what went wrong>
 * and powers off either way.
 *
 * The byte at offset i of the sector is (i * 7 + 3) & 0xff after one pair
 * (tests/boot.rs checks the image file for it).
 */

#include "virtio_guest.h"

#define SECTOR 33
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1

struct blk_req {
    u32 type;
    u32 reserved;
    u64 sector;
};

/* Guest RAM used by the driver (identity-mapped, above the 1 MiB kernel image,
   below the default 64 MiB), each on its own page. */
#define RINGS 0x200000UL /* three pages */
#define REQ ((volatile struct blk_req *)0x203000UL)
#define DATA ((volatile u8 *)0x204000UL)
#define REQ_STATUS ((volatile u8 *)0x205000UL)

static u8 pattern(u32 i)
{
    return (u8)(i * 7 + 3);
}

/* One request: header, the DATA sector (device-writable for IN), status byte, as
   a three-descriptor chain at descriptor 0. Returns the status byte. */
static u8 request(struct vq *q, u32 type, u64 sector)
{
    REQ->type = type;
    REQ->reserved = 0;
    REQ->sector = sector;
    *REQ_STATUS = 0xff;

    q->desc[0].addr = (u64)REQ;
    q->desc[0].len = sizeof(struct blk_req);
    q->desc[0].flags = VRING_DESC_F_NEXT;
    q->desc[0].next = 1;
    q->desc[1].addr = (u64)DATA;
    q->desc[1].len = 512;
    q->desc[1].flags = VRING_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0);
    q->desc[1].next = 2;
    q->desc[2].addr = (u64)REQ_STATUS;
    q->desc[2].len = 1;
    q->desc[2].flags = VRING_DESC_F_WRITE;
    q->desc[2].next = 0;

    u16 target = q->avail->idx + 1;
    submit(q, 0);
    volatile struct used_elem *e =
        wait_used(q, target,
                  type == VIRTIO_BLK_T_IN ? "no interrupt for the IN request in 5 s, used idx"
                                          : "no interrupt for the OUT request in 5 s, used idx");
    if (e->id != 0)
        fail("used element names descriptor", e->id);
    if (type == VIRTIO_BLK_T_IN && e->len < 513)
        fail("IN request: used length", e->len);
    return *REQ_STATUS;
}

void guest_main(const volatile u8 *zero_page)
{
    STATE->name = "virtio-blk";
    STATE->mmio_base = 0;
    STATE->interrupts = 0;
    STATE->timed_out = 0;
    find_device(zero_page, VIRTIO_ID_BLOCK);
    u32 pairs = cmdline_number(zero_page, "requests", 1);

    negotiate(0); /* no device-specific feature is implemented here */
    struct vq q;
    queue_setup(&q, 0, RINGS);
    driver_ok();

    u64 capacity;
    u32 gen = 0, n = 0;
    do {
        if (++n == 100)
            fail("ConfigGeneration never settles", gen);
        gen = rd(CONFIG_GENERATION);
        capacity = rd(CONFIG) | (u64)rd(CONFIG + 4) << 32;
    } while (rd(CONFIG_GENERATION) != gen);
    if (capacity <= SECTOR)
        fail("capacity too small, sectors", (u32)capacity);

    for (u32 r = 0; r < pairs; r++) {
        for (u32 i = 0; i < 512; i++)
            DATA[i] = pattern(i + r);
        u8 status = request(&q, VIRTIO_BLK_T_OUT, SECTOR);
        if (status != 0)
            fail("OUT request status", status);

        for (u32 i = 0; i < 512; i++)
            DATA[i] = 0;
        status = request(&q, VIRTIO_BLK_T_IN, SECTOR);
        if (status != 0)
            fail("IN request status", status);
        for (u32 i = 0; i < 512; i++)
            if (DATA[i] != pattern(i + r))
                fail("read-back mismatch at byte", i);
    }
    /* The device signals after it publishes the used index, so the last
       request's interrupt may still be on its way: wait for at least one. */
    wait_interrupt();
    if (STATE->interrupts == 0)
        fail("completed without an interrupt in 5 s, InterruptStatus", STATE->last_isr);

    line("capacity ");
    putdec(capacity);
    puts(" sectors, write+read sector ");
    putdec(SECTOR);
    puts(" ok\n");
    line("");
    putdec(2 * pairs);
    puts(" requests, ");
    putdec(STATE->interrupts);
    puts(" interrupts\n");
    poweroff();
}
