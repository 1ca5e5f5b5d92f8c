/*
 * vhostkit test guest: a freestanding x86_64 ELF entered in 64-bit long mode
 * (the vmlinux boot path: identity-mapped paging, RSI = boot_params).
 *
 * It prints a hello line and the kernel command line (boot_params.hdr.cmd_line_ptr)
 * on the 8250 at 0x3f8, polling LSR (0x3fd) bit 5 (THR empty) before each byte,
 * then powers off through the VMM's exit device: 0xfe written to the i8042
 * command port 0x64 (the "pulse reset line" command).
 *
 * Ring-0 code is emulated under kvm_pvm (~2M instructions/s): keep it tiny.
 */
    .code64
    .section .text
    .global _start
_start:
    mov     %rsi, %rbx              /* boot_params */
    lea     hello(%rip), %rsi
    call    puts
    lea     cmdline_tag(%rip), %rsi
    call    puts
    mov     0x228(%rbx), %esi       /* hdr.cmd_line_ptr (zero-extended) */
    test    %rsi, %rsi
    jz      1f
    call    puts
1:  lea     newline(%rip), %rsi
    call    puts
    mov     $0xfe, %al
    out     %al, $0x64              /* exit device: the VMM stops with status 0 */
2:  hlt                             /* not reached under vhostkit */
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

    .section .rodata
hello:
    .asciz  "vhostkit test guest: hello\n"
cmdline_tag:
    .asciz  "cmdline: "
newline:
    .asciz  "\n"
