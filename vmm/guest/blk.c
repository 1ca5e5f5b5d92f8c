/*
 * vhostkit test guest: a minimal virtio-blk driver over virtio-mmio (version 2),
 * polling (there is no interrupt controller). It drives the first window
 * (0xd0000000, the VMM's first --disk) the way a virtio 1.x driver does:
 *
 *   reset, ACKNOWLEDGE, DRIVER; DeviceFeatures (both halves); accept VERSION_1
 *   only; FEATURES_OK, re-read; queue 0 with QUEUE_SIZE entries (QueueNumMax
 *   checked), rings in guest RAM; QueueReady; DRIVER_OK; capacity from config
 *   (ConfigGeneration-consistent); an OUT request writing PATTERN to sector
 *   SECTOR, then an IN request reading it back into a zeroed buffer; compare.
 *
 * On COM1 it prints one line, either
 *   virtio-blk: capacity N sectors, write+read sector S ok
 * or
 *   virtio-blk: FAIL: <what went wrong>
 * and powers off through the exit device (0xfe to port 0x64) either way.
 *
 * The byte at offset i of the sector is (i * 7 + 3) & 0xff (tests/boot.rs checks
 * the image file for it).
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define SECTOR 33
#define QUEUE_SIZE 8
/* Used-ring polls before giving up: each costs about 4 us under kvm_pvm (software
   KVM), so about 4 s there; a request normally completes within a few ms. */
#define POLL_LIMIT 1000000

/* virtio-mmio registers (offsets into the window). */
#define MMIO_BASE 0xd0000000UL
#define MAGIC_VALUE 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEVICE_FEATURES 0x010
#define DEVICE_FEATURES_SEL 0x014
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define STATUS 0x070
#define QUEUE_DESC_LOW 0x080
#define QUEUE_DESC_HIGH 0x084
#define QUEUE_DRIVER_LOW 0x090
#define QUEUE_DRIVER_HIGH 0x094
#define QUEUE_DEVICE_LOW 0x0a0
#define QUEUE_DEVICE_HIGH 0x0a4
#define CONFIG_GENERATION 0x0fc
#define CONFIG 0x100

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 64
#define S_FAILED 128

/* VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of the high half. */
#define F_VERSION_1_HI 1

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1

struct desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct avail {
    u16 flags;
    u16 idx;
    u16 ring[QUEUE_SIZE];
    u16 used_event;
};

struct used_elem {
    u32 id;
    u32 len;
};

struct used {
    u16 flags;
    u16 idx;
    struct used_elem ring[QUEUE_SIZE];
    u16 avail_event;
};

struct blk_req {
    u32 type;
    u32 reserved;
    u64 sector;
};

/*
 * Guest RAM used by the driver (identity-mapped, above the 1 MiB kernel image,
 * below the default 64 MiB): each structure on its own page, so the alignments
 * (descriptors 16, avail 2, used 4) hold with room to spare.
 */
#define DESC ((volatile struct desc *)0x200000UL)
#define AVAIL ((volatile struct avail *)0x201000UL)
#define USED ((volatile struct used *)0x202000UL)
#define REQ ((volatile struct blk_req *)0x203000UL)
#define DATA ((volatile u8 *)0x204000UL)
#define REQ_STATUS ((volatile u8 *)0x205000UL)

/* Boot page tables (see src/boot.rs): PDPT at 0xa000; a fresh PD at 0xc000. */
#define PDPT ((volatile u64 *)0xa000UL)
#define PD_HIGH ((volatile u64 *)0xc000UL)

static inline void outb(u16 port, u8 v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* Orders the driver's stores and loads against the device's (a full fence). */
static inline void mb(void)
{
    __asm__ volatile("mfence" ::: "memory");
}

static inline u32 rd(u32 off)
{
    return *(volatile u32 *)(MMIO_BASE + off);
}

static inline void wr(u32 off, u32 v)
{
    *(volatile u32 *)(MMIO_BASE + off) = v;
}

static void putc(char c)
{
    while (!(inb(0x3fd) & 0x20)) /* LSR: THR empty */
        ;
    outb(0x3f8, c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void putdec(u64 v)
{
    char buf[21];
    int i = sizeof(buf) - 1;
    buf[i] = 0;
    do {
        buf[--i] = '0' + v % 10;
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

static void puthex(u32 v)
{
    puts("0x");
    for (int i = 28; i >= 0; i -= 4)
        putc("0123456789abcdef"[(v >> i) & 0xf]);
}

static __attribute__((noreturn)) void poweroff(void)
{
    outb(0x64, 0xfe);
    for (;;)
        __asm__ volatile("hlt");
}

static __attribute__((noreturn)) void fail(const char *what, u32 value)
{
    puts("virtio-blk: FAIL: ");
    puts(what);
    puts(" ");
    puthex(value);
    puts("\n");
    wr(STATUS, rd(STATUS) | S_FAILED);
    poweroff();
}

static u8 pattern(u32 i)
{
    return (u8)(i * 7 + 3);
}

/*
 * One request: header, the DATA sector (device-writable for IN), status byte, as
 * a three-descriptor chain at descriptor 0. Returns the status byte; fails on a
 * timeout or a bad used element.
 */
static u8 request(u32 type, u64 sector)
{
    u16 idx = AVAIL->idx; /* the driver owns it: no copy needed */

    REQ->type = type;
    REQ->reserved = 0;
    REQ->sector = sector;
    *REQ_STATUS = 0xff;

    DESC[0].addr = (u64)REQ;
    DESC[0].len = sizeof(struct blk_req);
    DESC[0].flags = VRING_DESC_F_NEXT;
    DESC[0].next = 1;
    DESC[1].addr = (u64)DATA;
    DESC[1].len = 512;
    DESC[1].flags = VRING_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0);
    DESC[1].next = 2;
    DESC[2].addr = (u64)REQ_STATUS;
    DESC[2].len = 1;
    DESC[2].flags = VRING_DESC_F_WRITE;
    DESC[2].next = 0;

    AVAIL->ring[idx % QUEUE_SIZE] = 0;
    mb(); /* descriptors and ring entry before the index */
    AVAIL->idx = idx + 1;
    mb(); /* the index before the kick */
    wr(QUEUE_NOTIFY, 0);

    u32 n = 0;
    while (USED->idx != (u16)(idx + 1)) {
        if (++n == POLL_LIMIT)
            fail(type == VIRTIO_BLK_T_IN ? "timeout waiting for the IN request, used idx"
                                         : "timeout waiting for the OUT request, used idx",
                 USED->idx);
        __asm__ volatile("pause" ::: "memory");
    }
    mb(); /* the used index before the element and the buffers */
    volatile struct used_elem *e = &USED->ring[idx % QUEUE_SIZE];
    if (e->id != 0)
        fail("used element names descriptor", e->id);
    if (type == VIRTIO_BLK_T_IN && e->len < 513)
        fail("IN request: used length", e->len);
    return *REQ_STATUS;
}

void guest_main(void)
{
    /* Map the virtio-mmio windows: PDPT[3] -> PD at 0xc000, one uncached 2 MiB page. */
    PD_HIGH[128] = 0xd0000093; /* 0xd0000000, 2 MiB page, present, writable, PCD */
    PDPT[3] = 0xc003;          /* 0xc0000000-0xffffffff */
    __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");

    if (rd(MAGIC_VALUE) != 0x74726976)
        fail("bad MagicValue", rd(MAGIC_VALUE));
    if (rd(VERSION) != 2)
        fail("not a version 2 (virtio 1.x) device, Version", rd(VERSION));
    if (rd(DEVICE_ID) != 2)
        fail("not a block device, DeviceID", rd(DEVICE_ID));

    wr(STATUS, 0); /* reset */
    if (rd(STATUS) != 0)
        fail("reset did not complete, Status", rd(STATUS));
    wr(STATUS, S_ACKNOWLEDGE);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);

    wr(DEVICE_FEATURES_SEL, 0);
    u32 features_lo = rd(DEVICE_FEATURES);
    wr(DEVICE_FEATURES_SEL, 1);
    u32 features_hi = rd(DEVICE_FEATURES);
    (void)features_lo; /* no device-specific feature is implemented here */
    if (!(features_hi & F_VERSION_1_HI))
        fail("device does not offer VERSION_1, features high", features_hi);
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, 0);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, F_VERSION_1_HI);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(STATUS) & S_FEATURES_OK))
        fail("FEATURES_OK not accepted, Status", rd(STATUS));

    wr(QUEUE_SEL, 0);
    if (rd(QUEUE_READY) != 0)
        fail("queue 0 already ready", rd(QUEUE_READY));
    u32 max = rd(QUEUE_NUM_MAX);
    if (max < QUEUE_SIZE)
        fail("queue 0 too small, QueueNumMax", max);
    wr(QUEUE_NUM, QUEUE_SIZE);
    AVAIL->flags = VRING_AVAIL_F_NO_INTERRUPT; /* we poll */
    AVAIL->idx = 0;
    USED->idx = 0;
    wr(QUEUE_DESC_LOW, (u32)(u64)DESC);
    wr(QUEUE_DESC_HIGH, 0);
    wr(QUEUE_DRIVER_LOW, (u32)(u64)AVAIL);
    wr(QUEUE_DRIVER_HIGH, 0);
    wr(QUEUE_DEVICE_LOW, (u32)(u64)USED);
    wr(QUEUE_DEVICE_HIGH, 0);
    mb();
    wr(QUEUE_READY, 1);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if (rd(STATUS) & (S_NEEDS_RESET | S_FAILED))
        fail("device failed at DRIVER_OK, Status", rd(STATUS));

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

    for (u32 i = 0; i < 512; i++)
        DATA[i] = pattern(i);
    u8 status = request(VIRTIO_BLK_T_OUT, SECTOR);
    if (status != 0)
        fail("OUT request status", status);

    for (u32 i = 0; i < 512; i++)
        DATA[i] = 0;
    status = request(VIRTIO_BLK_T_IN, SECTOR);
    if (status != 0)
        fail("IN request status", status);
    for (u32 i = 0; i < 512; i++)
        if (DATA[i] != pattern(i))
            fail("read-back mismatch at byte", i);

    puts("virtio-blk: capacity ");
    putdec(capacity);
    puts(" sectors, write+read sector ");
    putdec(SECTOR);
    puts(" ok\n");
    poweroff();
}

/* Entry: the VMM starts us in long mode with RSP = 0x8ff0 (16-byte aligned). */
__asm__(".section .text.start, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "    call guest_main\n"
        "1:  hlt\n"
        "    jmp 1b\n");
