/*
 * What the C test guests share: a freestanding virtio 1.x driver core over
 * virtio-mmio (version 2), found the way Linux's virtio_mmio driver finds devices
 * on a machine without VIRTIO_MMIO_CMDLINE_DEVICES: through ACPI. The RSDP (from
 * boot_params.acpi_rsdp_addr, else a scan of 0xe0000-0xfffff), its checksums, the
 * XSDT, the FADT, the DSDT, and in the DSDT the `LNRO0005` devices, whose _CRS
 * gives the window (Memory32Fixed) and the GSI (Extended Interrupt).
 *
 * Completions arrive as interrupts: the device's GSI is routed through the IOAPIC
 * to this vCPU's local APIC; the driver waits with `sti; hlt`, and its handler
 * reads InterruptStatus, acknowledges it and sends the EOI, as Linux's
 * vm_interrupt does. A one-shot local APIC timer bounds each wait (5 s).
 *
 * The guests print on COM1 and power off through the exit device (0xfe to port
 * 0x64). Guest code has no .data or .bss: state lives at fixed addresses.
 * Included once, by one guest source file.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define QUEUE_SIZE 8
/* Longest wait for one completion, in local APIC timer ticks: KVM's APIC bus runs
   at 1 GHz and the divider is 2, so 5 s. */
#define WAIT_TICKS 2500000000U

/* virtio-mmio registers (offsets into a device's window). */
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

/* A split virtqueue of QUEUE_SIZE entries whose three areas are on the pages from
   `base` (descriptors, then avail, then used: alignments 16, 2 and 4 hold). */
struct vq {
    volatile struct desc *desc;
    volatile struct avail *avail;
    volatile struct used *used;
    u16 index;
};

/* The driver's state. */
struct state {
    const char *name; /* "virtio-blk", "virtio-net": the prefix of every line */
    u64 mmio_base;
    u32 gsi;
    u32 interrupts;
    u32 timed_out;
    u32 last_isr;
};
#define STATE ((volatile struct state *)0x1f0000UL)
/* Interrupt descriptor table: 256 gates of 16 bytes. */
#define IDT ((volatile u64 *)0x1f1000UL)

/* Boot page tables (see src/boot.rs): PDPT at 0xa000; a fresh PD at 0xc000 maps
   0xc0000000-0xffffffff (device windows, IOAPIC, local APIC) uncached. */
#define PDPT ((volatile u64 *)0xa000UL)
#define PD_HIGH ((volatile u64 *)0xc000UL)

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

static inline u8 rd_config8(u32 off)
{
    return *(volatile u8 *)(STATE->mmio_base + CONFIG + off);
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

/* Starts a console line with the driver's name. */
static void line(const char *s)
{
    puts(STATE->name);
    puts(": ");
    puts(s);
}

static __attribute__((noreturn)) void poweroff(void)
{
    outb(0x64, 0xfe);
    for (;;)
        __asm__ volatile("hlt");
}

static __attribute__((noreturn)) void fail(const char *what, u32 value)
{
    line("FAIL: ");
    puts(what);
    puts(" ");
    puthex(value);
    puts("\n");
    if (STATE->mmio_base)
        wr(STATUS, rd(STATUS) | S_FAILED);
    poweroff();
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

/* Maps 0xc0000000-0xffffffff with 2 MiB uncached pages: PDPT[3] -> PD at 0xc000. */
static void map_device_space(void)
{
    for (u64 i = 0; i < 512; i++)
        PD_HIGH[i] = (0xc0000000UL + (i << 21)) | 0x93; /* 2 MiB, present, writable, PCD */
    PDPT[3] = 0xc003;
    __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
}

/*
 * Finds the first LNRO0005 device in the DSDT whose window holds a virtio device
 * of type `device_id`: sets STATE->mmio_base and STATE->gsi and prints where.
 */
static void find_device(const volatile u8 *zero_page, u32 device_id)
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
    map_device_space();

    u32 seen = 0;
    for (u32 i = 36; i + 8 <= len; i++) {
        if (!bytes_eq(dsdt + i, "LNRO0005", 8))
            continue;
        seen++;
        /* The device's _CRS follows its _HID: Memory32Fixed (tag 0x86, length 9)
           and Extended Interrupt (tag 0x89). */
        u64 base = 0;
        u32 gsi = ~0u;
        for (u32 j = i + 8; j + 9 <= len && j <= i + 200 && (base == 0 || gsi == ~0u); j++) {
            if (base == 0 && dsdt[j] == 0x86 && dsdt[j + 1] == 9 && dsdt[j + 2] == 0)
                base = le32(dsdt + j + 4);
            else if (gsi == ~0u && dsdt[j] == 0x89 && dsdt[j + 4] >= 1)
                gsi = le32(dsdt + j + 5);
        }
        if (base == 0 || gsi == ~0u)
            fail("LNRO0005 without Memory32Fixed and Interrupt in _CRS, at DSDT offset", i);
        if (base < 0xc0000000UL || base >= 0xfec00000UL)
            fail("virtio-mmio window outside 0xc0000000-0xfebfffff", (u32)base);
        if (gsi >= 24)
            fail("GSI beyond the IOAPIC's 24 pins", gsi);
        volatile u32 *window = (volatile u32 *)base;
        if (window[MAGIC_VALUE / 4] != 0x74726976)
            fail("bad MagicValue", window[MAGIC_VALUE / 4]);
        if (window[DEVICE_ID / 4] != device_id)
            continue;
        STATE->mmio_base = base;
        STATE->gsi = gsi;
        line("LNRO0005 at ");
        puthex((u32)base);
        puts(" GSI ");
        putdec(gsi);
        puts(" (ACPI)\n");
        return;
    }
    fail(seen ? "no LNRO0005 device of this virtio type, devices seen"
              : "no LNRO0005 (virtio-mmio) device in the DSDT, length",
         seen ? seen : len);
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

/* ---- device and queue set-up ---- */

/* Reset, ACKNOWLEDGE, DRIVER, the driver's features (VERSION_1 and `features_lo`,
   which must be offered), FEATURES_OK. Returns the offered low feature word. */
static u32 negotiate(u32 features_lo)
{
    if (rd(VERSION) != 2)
        fail("not a version 2 (virtio 1.x) device, Version", rd(VERSION));
    setup_interrupts();
    wr(STATUS, 0); /* reset */
    if (rd(STATUS) != 0)
        fail("reset did not complete, Status", rd(STATUS));
    wr(STATUS, S_ACKNOWLEDGE);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);

    wr(DEVICE_FEATURES_SEL, 0);
    u32 offered_lo = rd(DEVICE_FEATURES);
    wr(DEVICE_FEATURES_SEL, 1);
    u32 offered_hi = rd(DEVICE_FEATURES);
    if (!(offered_hi & F_VERSION_1_HI))
        fail("device does not offer VERSION_1, features high", offered_hi);
    if ((offered_lo & features_lo) != features_lo)
        fail("device does not offer the features needed, offered", offered_lo);
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, features_lo);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, F_VERSION_1_HI);
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(STATUS) & S_FEATURES_OK))
        fail("FEATURES_OK not accepted, Status", rd(STATUS));
    return offered_lo;
}

/* Sets up queue `index` with its rings on the three pages from `base`. */
static void queue_setup(struct vq *q, u16 index, u64 base)
{
    q->desc = (volatile struct desc *)base;
    q->avail = (volatile struct avail *)(base + 0x1000);
    q->used = (volatile struct used *)(base + 0x2000);
    q->index = index;
    wr(QUEUE_SEL, index);
    if (rd(QUEUE_READY) != 0)
        fail("queue already ready", index);
    u32 max = rd(QUEUE_NUM_MAX);
    if (max < QUEUE_SIZE)
        fail("queue too small, QueueNumMax", max);
    wr(QUEUE_NUM, QUEUE_SIZE);
    q->avail->flags = 0; /* interrupts wanted */
    q->avail->idx = 0;
    q->used->idx = 0;
    wr(QUEUE_DESC_LOW, (u32)(u64)q->desc);
    wr(QUEUE_DESC_HIGH, 0);
    wr(QUEUE_DRIVER_LOW, (u32)(u64)q->avail);
    wr(QUEUE_DRIVER_HIGH, 0);
    wr(QUEUE_DEVICE_LOW, (u32)(u64)q->used);
    wr(QUEUE_DEVICE_HIGH, 0);
    mb();
    wr(QUEUE_READY, 1);
}

static void driver_ok(void)
{
    wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if (rd(STATUS) & (S_NEEDS_RESET | S_FAILED))
        fail("device failed at DRIVER_OK, Status", rd(STATUS));
}

/* Makes the chain at `head` available (the descriptors are written) and kicks. */
static void submit(struct vq *q, u16 head)
{
    u16 idx = q->avail->idx; /* the driver owns it: no copy needed */
    q->avail->ring[idx % QUEUE_SIZE] = head;
    mb(); /* descriptors and ring entry before the index */
    q->avail->idx = idx + 1;
    mb(); /* the index before the kick */
    wr(QUEUE_NOTIFY, q->index);
}

/* Whether the used index of `q` has reached `target` (or gone past it: the
   device may complete several chains before the driver looks). */
static int used_reached(struct vq *q, u16 target)
{
    return (u16)(q->used->idx - target) < 0x8000;
}

/* Waits by interrupt until the used index of `q` reaches `target`; fails with
   `what` after 5 s. Returns the used element of entry target - 1. */
static volatile struct used_elem *wait_used(struct vq *q, u16 target, const char *what)
{
    STATE->timed_out = 0;
    lapic_wr(LAPIC_TIMER_INIT, WAIT_TICKS);
    /* `sti; hlt` is atomic with respect to interrupts (the STI shadow): no wake-up
       is lost between the check and the halt. */
    __asm__ volatile("cli" ::: "memory");
    while (!used_reached(q, target) && !STATE->timed_out)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    __asm__ volatile("sti" ::: "memory");
    lapic_wr(LAPIC_TIMER_INIT, 0);
    if (!used_reached(q, target))
        fail(what, q->used->idx);
    mb(); /* the used index before the element and the buffers */
    return &q->used->ring[(u16)(target - 1) % QUEUE_SIZE];
}

/* Waits by interrupt (at most 5 s) until at least one device interrupt came. */
static __attribute__((unused)) void wait_interrupt(void)
{
    STATE->timed_out = 0;
    lapic_wr(LAPIC_TIMER_INIT, WAIT_TICKS);
    __asm__ volatile("cli" ::: "memory");
    while (STATE->interrupts == 0 && !STATE->timed_out)
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    __asm__ volatile("sti" ::: "memory");
    lapic_wr(LAPIC_TIMER_INIT, 0);
}

/* `key=N` from the kernel command line (boot_params.hdr.cmd_line_ptr), else `dflt`. */
static __attribute__((unused)) u32 cmdline_number(const volatile u8 *zero_page, const char *key, u32 dflt)
{
    const volatile u8 *p = (const volatile u8 *)(u64)le32(zero_page + 0x228);
    u32 klen = 0;
    while (key[klen])
        klen++;
    if (p == 0)
        return dflt;
    for (u32 i = 0; p[i] && i < 2048; i++) {
        if ((i == 0 || p[i - 1] == ' ') && bytes_eq(p + i, key, klen) && p[i + klen] == '=') {
            u32 n = 0;
            for (const volatile u8 *d = p + i + klen + 1; *d >= '0' && *d <= '9'; d++)
                n = n * 10 + (*d - '0');
            return n ? n : dflt;
        }
    }
    return dflt;
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
