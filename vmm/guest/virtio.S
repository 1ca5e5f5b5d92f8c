/*
 * vhostkit test guest: probes the first virtio-mmio window (0xd0000000, the
 * VMM's first --disk) and prints, in hex on COM1:
 *   MagicValue Version DeviceID config[0..4] (capacity, low word) and the first
 *   word of the next window (unbacked with one disk: ffffffff)
 * then writes QueueNotify 0 (taken in-kernel by the queue's ioeventfd: no exit)
 * and QueueNotify 7 (no such queue: the VMM refuses it, and does not crash), and
 * powers off through the exit device (0xfe to port 0x64).
 *
 * The boot page tables map only the first GiB: PDPT[3] gets a page directory at
 * 0xc000 (fresh guest memory, zero) with one uncached 2 MiB page at 0xd0000000.
 */
    .code64
    .section .text
    .global _start
_start:
    movq    $0xc003, %rax           /* PD at 0xc000, present, writable */
    movq    %rax, 0xa018            /* PDPT[3]: 0xc0000000-0xffffffff */
    movq    $0xd0000093, %rax       /* 2 MiB page, present, writable, PCD */
    movq    %rax, 0xc400            /* PD[128]: 0xd0000000 */
    mov     %cr3, %rax
    mov     %rax, %cr3              /* flush the TLB */

    lea     tag(%rip), %rsi
    call    puts
    mov     $0xd0000000, %ebx
    movl    0x000(%rbx), %eax       /* MagicValue */
    call    puthex
    movl    0x004(%rbx), %eax       /* Version */
    call    puthex
    movl    0x008(%rbx), %eax       /* DeviceID */
    call    puthex
    movl    0x100(%rbx), %eax       /* config: capacity, low word */
    call    puthex
    movl    0x1000(%rbx), %eax      /* next window */
    call    puthex
    movl    $0, 0x050(%rbx)         /* QueueNotify 0: the ioeventfd of queue 0 */
    movl    $7, 0x050(%rbx)         /* QueueNotify 7: exits, refused */
    lea     newline(%rip), %rsi
    call    puts
    mov     $0xfe, %al
    out     %al, $0x64
1:  hlt
    jmp     1b

/* puthex: %eax as 8 hex digits and a space. */
puthex:
    mov     %eax, %r8d
    mov     $8, %ecx
2:  rol     $4, %r8d
    mov     %r8d, %eax
    and     $0xf, %eax
    lea     hexdigits(%rip), %rdi
    movb    (%rdi,%rax), %al
    call    putc
    dec     %ecx
    jnz     2b
    mov     $' ', %al
    jmp     putc

/* putc: %al to COM1, polling LSR bit 5 (THR empty). */
putc:
    mov     %al, %r9b
    mov     $0x3fd, %dx
3:  in      %dx, %al
    test    $0x20, %al
    jz      3b
    mov     %r9b, %al
    mov     $0x3f8, %dx
    out     %al, %dx
    ret

/* puts: the NUL-terminated string at %rsi. */
puts:
    lodsb
    test    %al, %al
    jz      4f
    call    putc
    jmp     puts
4:  ret

    .section .rodata
tag:
    .asciz  "virtio-mmio: "
newline:
    .asciz  "\n"
hexdigits:
    .ascii  "0123456789abcdef"
