/*
 * vhostkit test guest: a minimal interrupt-driven virtio-blk driver over
 * virtio-mmio (version 2). It finds its device the way Linux's virtio_mmio driver
 * does on a machine without VIRTIO_MMIO_CMDLINE_DEVICES: through ACPI. The RSDP
 * (from boot_params.acpi_rsdp_addr, else a scan of 0xe0000-0xfffff), its checksum,
 * the XSDT, the FADT, the DSDT, and in the DSDT the first device with _HID
 * "LNRO0005": its _CRS gives the window (Memory32Fixed) and the GSI (Extended
 * Interrupt). It then drives it as a virtio 1.x driver does:
 *
 *   reset, ACKNOWLEDGE, DRIVER; DeviceFeatures (both halves); accept VERSION_1
 *   only; FEATURES_OK, re-read; queue 0 with QUEUE_SIZE entries (QueueNumMax
 *   checked), rings in guest RAM; QueueReady; DRIVER_OK; capacity from config
 *   (ConfigGeneration-consistent); OUT requests writing PATTERN to sector SECTOR,
 *   each followed by an IN request reading it back into a zeroed buffer; compare.
 *
 * Completions arrive as interrupts: the device's GSI is routed through the
 * IOAPIC to this vCPU's local APIC; the driver waits with `sti; hlt`, and its
 * handler reads InterruptStatus, acknowledges it and sends the EOI, as Linux's
 * vm_interrupt does. A one-shot local APIC timer bounds each wait (5 s).
 *
 * The command line (boot_params.hdr.cmd_line_ptr) may hold `requests=N` (N
 * write+read pairs, default 1; the VMM benchmark counts exits per request).
 *
 * On COM1 it prints
 *   virtio-blk: LNRO0005 at 0x... GSI g (ACPI)
 *   virtio-blk: capacity N sectors, write+read sector S ok
 *   virtio-blk: R requests, I interrupts
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
/* Longest wait for one completion, in local APIC timer ticks: KVM's APIC bus runs
   at 1 GHz and the divider is 2, so 5 s. */
#define WAIT_TICKS 2500000000U

/* virtio-mmio registers (offsets into the window found in the DSDT). */
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
#define INTERRUPT_STATUS 0x060
#define INTERRUPT_ACK 0x064
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
/* The driver's state (no .data or .bss: fixed addresses, like the rings). */
struct state {
    u64 mmio_base;
    u32 gsi;
    u32 interrupts;
    u32 timed_out;
    u32 last_isr;
};
#define STATE ((volatile struct state *)0x206000UL)
/* Interrupt descriptor table: 256 gates of 16 bytes. */
#define IDT ((volatile u64 *)0x207000UL)

/* Local APIC and IOAPIC (their default addresses, which the MADT also gives). */
#define LAPIC_BASE 0xfee00000UL
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0
#define IOAPIC_BASE 0xfec00000UL
#define VEC_DEVICE 0x30
#define VEC_TIMER 0x31
#define VEC_SPURIOUS 0xff

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
    return *(volatile u32 *)(STATE->mmio_base + off);
}

static inline void wr(u32 off, u32 v)
{
    *(volatile u32 *)(STATE->mmio_base + off) = v;
}

static inline void lapic_wr(u32 off, u32 v)
{
    *(volatile u32 *)(LAPIC_BASE + off) = v;
}

static void ioapic_wr(u32 reg, u32 v)
{
    *(volatile u32 *)IOAPIC_BASE = reg;
    *(volatile u32 *)(IOAPIC_BASE + 0x10) = v;
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

/* ---- ACPI: RSDP -> XSDT -> FADT -> DSDT -> LNRO0005 ---- */

static int bytes_eq(const volatile u8 *a, const char *b, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (a[i] != (u8)b[i])
            return 0;
    return 1;
}

static u8 checksum(const volatile u8 *p, u32 n)
{
    u8 sum = 0;
    for (u32 i = 0; i < n; i++)
        sum += p[i];
    return sum;
}

static u32 le32(const volatile u8 *p)
{
    return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static u64 le64(const volatile u8 *p)
{
    return le32(p) | (u64)le32(p + 4) << 32;
}

/* A system description table at `addr` with signature `sig` and a good checksum. */
static const volatile u8 *sdt(u64 addr, const char *sig)
{
    const volatile u8 *t = (const volatile u8 *)addr;
    if (addr == 0 || addr >= 0x40000000UL)
        fail("ACPI table pointer outside the first GiB", (u32)addr);
    if (!bytes_eq(t, sig, 4))
        fail(sig[0] == 'X' ? "no XSDT at the RSDP's address" : "ACPI table with a wrong signature",
             le32(t));
    u32 len = le32(t + 4);
    if (len < 36 || len > 0x100000)
        fail("ACPI table length", len);
    if (checksum(t, len) != 0)
        fail("ACPI table checksum", le32(t));
    return t;
}

static const volatile u8 *find_rsdp(const volatile u8 *zero_page)
{
    u64 addr = le64(zero_page + 0x070); /* boot_params.acpi_rsdp_addr */
    if (addr == 0) {
        /* Where a BIOS puts it: a 16-byte aligned "RSD PTR " in 0xe0000-0xfffff. */
        for (u64 a = 0xe0000; a < 0x100000; a += 16)
            if (bytes_eq((const volatile u8 *)a, "RSD PTR ", 8)) {
                addr = a;
                break;
            }
    }
    if (addr == 0)
        fail("no ACPI RSDP", 0);
    const volatile u8 *rsdp = (const volatile u8 *)addr;
    if (!bytes_eq(rsdp, "RSD PTR ", 8))
        fail("boot_params.acpi_rsdp_addr does not point at an RSDP", (u32)addr);
    if (checksum(rsdp, 20) != 0)
        fail("RSDP checksum", rsdp[8]);
    if (rsdp[15] < 2 || checksum(rsdp, le32(rsdp + 20)) != 0)
        fail("RSDP is not a valid revision 2 RSDP, revision", rsdp[15]);
    return rsdp;
}

/* Finds the first LNRO0005 device in the DSDT: its window base and its GSI. */
static void find_device(const volatile u8 *zero_page)
{
    const volatile u8 *rsdp = find_rsdp(zero_page);
    const volatile u8 *xsdt = sdt(le64(rsdp + 24), "XSDT");
    const volatile u8 *fadt = 0;
    for (u32 off = 36; off + 8 <= le32(xsdt + 4); off += 8) {
        const volatile u8 *t = (const volatile u8 *)le64(xsdt + off);
        if (bytes_eq(t, "FACP", 4))
            fadt = sdt((u64)t, "FACP");
    }
    if (!fadt)
        fail("no FADT in the XSDT", 0);
    u64 dsdt_addr = le32(fadt + 4) >= 148 ? le64(fadt + 140) : 0; /* X_DSDT */
    if (dsdt_addr == 0)
        dsdt_addr = le32(fadt + 40); /* DSDT */
    const volatile u8 *dsdt = sdt(dsdt_addr, "DSDT");
    u32 len = le32(dsdt + 4);

    for (u32 i = 36; i + 8 <= len; i++) {
        if (!bytes_eq(dsdt + i, "LNRO0005", 8))
            continue;
        /* The device's _CRS follows its _HID: Memory32Fixed (tag 0x86, length 9)
           and Extended Interrupt (tag 0x89). */
        u64 base = 0;
        u32 gsi = ~0u;
        for (u32 j = i + 8; j + 9 <= len && (base == 0 || gsi == ~0u); j++) {
            if (base == 0 && dsdt[j] == 0x86 && dsdt[j + 1] == 9 && dsdt[j + 2] == 0)
                base = le32(dsdt + j + 4);
            else if (gsi == ~0u && dsdt[j] == 0x89 && dsdt[j + 4] >= 1)
                gsi = le32(dsdt + j + 5);
            if (j > i + 200)
                break; /* past this device */
        }
        if (base == 0 || gsi == ~0u)
            fail("LNRO0005 without Memory32Fixed and Interrupt in _CRS, at DSDT offset", i);
        if (base < 0xc0000000UL || base >= 0xfec00000UL)
            fail("virtio-mmio window outside 0xc0000000-0xfebfffff", (u32)base);
        if (gsi >= 24)
            fail("GSI beyond the IOAPIC's 24 pins", gsi);
        STATE->mmio_base = base;
        STATE->gsi = gsi;
        return;
    }
    fail("no LNRO0005 (virtio-mmio) device in the DSDT", len);
}

/* ---- interrupts: IDT, local APIC, IOAPIC ---- */

void on_device_interrupt(void)
{
    u32 isr = rd(INTERRUPT_STATUS);
    wr(INTERRUPT_ACK, isr);
    STATE->last_isr = isr;
    STATE->interrupts++;
    lapic_wr(LAPIC_EOI, 0);
}

void on_timer_interrupt(void)
{
    STATE->timed_out = 1;
    lapic_wr(LAPIC_EOI, 0);
}

/* Entry stubs: save the registers C may clobber, call the handler, return. */
#define ISR_STUB(name, handler)                                                        \
    __asm__(".section .text\n"                                                         \
            ".global " #name "\n" #name ":\n"                                          \
            "    push %rax; push %rcx; push %rdx; push %rsi; push %rdi\n"              \
            "    push %r8; push %r9; push %r10; push %r11\n"                           \
            "    call " #handler "\n"                                                  \
            "    pop %r11; pop %r10; pop %r9; pop %r8\n"                               \
            "    pop %rdi; pop %rsi; pop %rdx; pop %rcx; pop %rax\n"                   \
            "    iretq\n");
ISR_STUB(isr_device, on_device_interrupt)
ISR_STUB(isr_timer, on_timer_interrupt)
__asm__(".section .text\n"
        ".global isr_spurious\n"
        "isr_spurious:\n"
        "    iretq\n");
void isr_device(void);
void isr_timer(void);
void isr_spurious(void);

static void set_gate(u32 vector, void (*handler)(void))
{
    u64 h = (u64)handler;
    /* 64-bit interrupt gate, present, DPL 0, code selector 0x08 (the VMM's GDT). */
    IDT[vector * 2] = (h & 0xffff) | (0x08UL << 16) | (0x8eUL << 40) | ((h >> 16) & 0xffff) << 48;
    IDT[vector * 2 + 1] = h >> 32;
}

static void setup_interrupts(void)
{
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = {256 * 16 - 1, (u64)IDT};
    for (u32 i = 0; i < 512; i++)
        IDT[i] = 0;
    set_gate(VEC_DEVICE, isr_device);
    set_gate(VEC_TIMER, isr_timer);
    set_gate(VEC_SPURIOUS, isr_spurious);
    __asm__ volatile("lidt %0" : : "m"(idtr));

    /* The 8259s stay masked: every interrupt comes through the IOAPIC. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic_wr(LAPIC_SVR, 0x100 | VEC_SPURIOUS); /* APIC software enable */
    lapic_wr(LAPIC_TPR, 0);
    lapic_wr(LAPIC_TIMER_DIV, 0x0); /* divide by 2 */
    lapic_wr(LAPIC_LVT_TIMER, VEC_TIMER); /* one-shot */
    /* Redirection entry of the device's GSI: fixed delivery to APIC 0, edge,
       active high, unmasked. */
    ioapic_wr(0x11 + 2 * STATE->gsi, 0);
    ioapic_wr(0x10 + 2 * STATE->gsi, VEC_DEVICE);
}

/*
 * One request: header, the DATA sector (device-writable for IN), status byte, as
 * a three-descriptor chain at descriptor 0. Waits for the device's interrupt.
 * Returns the status byte; fails on a timeout or a bad used element.
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

    STATE->timed_out = 0;
    lapic_wr(LAPIC_TIMER_INIT, WAIT_TICKS);
    __asm__ volatile("cli" ::: "memory");
    wr(QUEUE_NOTIFY, 0);
    /* `sti; hlt` is atomic with respect to interrupts (the STI shadow): no wake-up
       is lost between the check and the halt. */
    while (USED->idx != (u16)(idx + 1) && !STATE->timed_out)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    __asm__ volatile("sti" ::: "memory");
    lapic_wr(LAPIC_TIMER_INIT, 0);
    if (USED->idx != (u16)(idx + 1))
        fail(type == VIRTIO_BLK_T_IN ? "no interrupt for the IN request in 5 s, used idx"
                                     : "no interrupt for the OUT request in 5 s, used idx",
             USED->idx);
    mb(); /* the used index before the element and the buffers */
    volatile struct used_elem *e = &USED->ring[idx % QUEUE_SIZE];
    if (e->id != 0)
        fail("used element names descriptor", e->id);
    if (type == VIRTIO_BLK_T_IN && e->len < 513)
        fail("IN request: used length", e->len);
    return *REQ_STATUS;
}

/* `requests=N` from the kernel command line, else 1. */
static u32 requests_from_cmdline(const volatile u8 *zero_page)
{
    const volatile u8 *p = (const volatile u8 *)(u64)le32(zero_page + 0x228);
    if (p == 0)
        return 1;
    for (u32 i = 0; p[i] && i < 2048; i++) {
        if ((i == 0 || p[i - 1] == ' ') && bytes_eq(p + i, "requests=", 9)) {
            u32 n = 0;
            for (const volatile u8 *d = p + i + 9; *d >= '0' && *d <= '9'; d++)
                n = n * 10 + (*d - '0');
            return n ? n : 1;
        }
    }
    return 1;
}

void guest_main(const volatile u8 *zero_page)
{
    STATE->interrupts = 0;
    STATE->timed_out = 0;
    find_device(zero_page);
    u32 pairs = requests_from_cmdline(zero_page);

    /* Map 0xc0000000-0xffffffff (PDPT[3] -> PD at 0xc000) uncached: the device's
       window, the IOAPIC and the local APIC. */
    u32 window = (u32)((STATE->mmio_base - 0xc0000000UL) >> 21);
    PD_HIGH[window] = (STATE->mmio_base & ~0x1fffffUL) | 0x93; /* 2 MiB, present, writable, PCD */
    PD_HIGH[(IOAPIC_BASE - 0xc0000000UL) >> 21] = (IOAPIC_BASE & ~0x1fffffUL) | 0x93;
    PD_HIGH[(LAPIC_BASE - 0xc0000000UL) >> 21] = (LAPIC_BASE & ~0x1fffffUL) | 0x93;
    PDPT[3] = 0xc003;
    __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");

    puts("virtio-blk: LNRO0005 at ");
    puthex((u32)STATE->mmio_base);
    puts(" GSI ");
    putdec(STATE->gsi);
    puts(" (ACPI)\n");

    if (rd(MAGIC_VALUE) != 0x74726976)
        fail("bad MagicValue", rd(MAGIC_VALUE));
    if (rd(VERSION) != 2)
        fail("not a version 2 (virtio 1.x) device, Version", rd(VERSION));
    if (rd(DEVICE_ID) != 2)
        fail("not a block device, DeviceID", rd(DEVICE_ID));
    setup_interrupts();

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
    AVAIL->flags = 0; /* interrupts wanted */
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

    for (u32 r = 0; r < pairs; r++) {
        for (u32 i = 0; i < 512; i++)
            DATA[i] = pattern(i + r);
        u8 status = request(VIRTIO_BLK_T_OUT, SECTOR);
        if (status != 0)
            fail("OUT request status", status);

        for (u32 i = 0; i < 512; i++)
            DATA[i] = 0;
        status = request(VIRTIO_BLK_T_IN, SECTOR);
        if (status != 0)
            fail("IN request status", status);
        for (u32 i = 0; i < 512; i++)
            if (DATA[i] != pattern(i + r))
                fail("read-back mismatch at byte", i);
    }
    if (STATE->interrupts == 0)
        fail("completed without an interrupt, InterruptStatus", STATE->last_isr);

    /* The last pair leaves pattern(i + pairs - 1) in the sector. */
    puts("virtio-blk: capacity ");
    putdec(capacity);
    puts(" sectors, write+read sector ");
    putdec(SECTOR);
    puts(" ok\n");
    puts("virtio-blk: ");
    putdec(2 * pairs);
    puts(" requests, ");
    putdec(STATE->interrupts);
    puts(" interrupts\n");
    poweroff();
}

/* Entry: the VMM starts us in long mode with RSP = 0x8ff0 (16-byte aligned) and
   RSI = the zero page (boot_params). */
__asm__(".section .text.start, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "    mov %rsi, %rdi\n"
        "    call guest_main\n"
        "1:  hlt\n"
        "    jmp 1b\n");
