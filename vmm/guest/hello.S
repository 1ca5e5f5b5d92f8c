/*
 * vhostkit test guest: a freestanding x86_64 ELF with two entry points.
 *
 * - The ELF entry (_start), used by vhostkit: 64-bit long mode (the vmlinux boot
 *   path: identity-mapped paging, RSI = boot_params).
 * - A PVH entry (pvh_start, named by the XEN_ELFNOTE_PHYS32_ENTRY note), used by
 *   QEMU's `-kernel` for ELF kernels: 32-bit protected mode, paging off,
 *   EBX = hvm_start_info. It loads the GDT and page tables built into the ELF
 *   (the first GiB identity-mapped with 2 MiB pages), enables PAE, EFER.LME and
 *   paging, and far-jumps to the shared 64-bit code.
 *
 * It prints a hello line and the kernel command line (boot_params.hdr.cmd_line_ptr,
 * or hvm_start_info.cmdline_paddr) on the 8250 at 0x3f8, polling LSR (0x3fd) bit 5
 * (THR empty) before each byte, then powers off: 0xfe to the i8042 command port
 * 0x64 (vhostkit's exit device; QEMU's i8042 resets, which ends QEMU with
 * -no-reboot), then, for machines without an i8042 (QEMU microvm), a write to
 * QEMU's isa-debug-exit device at port 0xf4 (`-device isa-debug-exit,iobase=0xf4,
 * iosize=0x04`: QEMU exits with status (0x10 << 1) | 1 = 33).
 *
 * Ring-0 code is emulated under kvm_pvm (~2M instructions/s): keep it tiny.
 */
    .code64
    .section .text
    .global _start
_start:
    mov     0x228(%rsi), %ebx       /* boot_params.hdr.cmd_line_ptr (zero-extended) */
    jmp     main

/* 64-bit continuation of the PVH entry: %ebx = hvm_start_info. */
pvh_start64:
    mov     $pvh_stack_top, %esp
    mov     24(%rbx), %rbx          /* hvm_start_info.cmdline_paddr */

/* main: %rbx = the command line (physical = virtual address), or 0. */
main:
    lea     hello(%rip), %rsi
    call    puts
    lea     cmdline_tag(%rip), %rsi
    call    puts
    mov     %rbx, %rsi
    test    %rsi, %rsi
    jz      1f
    call    puts
1:  lea     newline(%rip), %rsi
    call    puts
    mov     $0xfe, %al
    out     %al, $0x64              /* exit device: vhostkit stops with status 0 */
    mov     $0x10, %al
    out     %al, $0xf4              /* QEMU isa-debug-exit (microvm) */
2:  hlt                             /* not reached */
    jmp     2b

/* puts: write the NUL-terminated string at %rsi to COM1. */
puts:
    mov     $0x3fd, %dx
3:  in      %dx, %al
    test    $0x20, %al
    jz      3b
    lodsb
    test    %al, %al
    jz      4f
    mov     $0x3f8, %dx
    out     %al, %dx
    jmp     puts
4:  ret

/* PVH entry: 32-bit protected mode, paging off, EBX = hvm_start_info. */
    .code32
    .global pvh_start
pvh_start:
    lgdt    pvh_gdt_desc
    mov     $0x10, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %cr4, %eax
    or      $0x20, %eax             /* PAE */
    mov     %eax, %cr4
    mov     $pvh_pml4, %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx       /* EFER */
    rdmsr
    or      $0x100, %eax            /* LME */
    wrmsr
    mov     %cr0, %eax
    or      $0x80000001, %eax       /* PG | PE */
    mov     %eax, %cr0
    ljmp    $0x08, $pvh_start64

    .section .rodata
hello:
    .asciz  "vhostkit test guest: hello\n"
cmdline_tag:
    .asciz  "cmdline: "
newline:
    .asciz  "\n"

    .balign 8
pvh_gdt:
    .quad   0                       /* null */
    .quad   0x00af9a000000ffff      /* 0x08: 64-bit code */
    .quad   0x00cf92000000ffff      /* 0x10: flat data */
pvh_gdt_desc:
    .word   pvh_gdt_desc - pvh_gdt - 1
    .long   pvh_gdt

/* Identity map of the first GiB for the PVH entry; vhostkit builds its own. */
    .balign 4096
pvh_pml4:
    .quad   pvh_pdpt + 0x03
    .fill   511, 8, 0
pvh_pdpt:
    .quad   pvh_pd + 0x03
    .fill   511, 8, 0
pvh_pd:
    .set    i, 0
    .rept   512
    .quad   (i << 21) + 0x83        /* 2 MiB page, present, writable */
    .set    i, i + 1
    .endr
/* The PVH path's stack (no stack is given; vhostkit's entry has RSP set). */
    .fill   1024, 1, 0
pvh_stack_top:

/* The PVH note (XEN_ELFNOTE_PHYS32_ENTRY = 18): QEMU's -kernel boots an ELF only
   through it; vhostkit ignores it and enters at the ELF entry. */
    .section .note.Xen, "a", @note
    .balign 4
    .long   4                       /* namesz */
    .long   8                       /* descsz */
    .long   18                      /* type */
    .asciz  "Xen"
    .quad   pvh_start
