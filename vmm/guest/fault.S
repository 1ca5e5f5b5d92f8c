/*
 * vhostkit fault guest: executes ud2 in 64-bit mode. With the VMM's empty IDT the
 * #UD escalates to a triple fault (KVM_EXIT_SHUTDOWN), which must end the VMM with
 * a clear error and a non-zero status.
 */
    .code64
    .section .text
    .global _start
_start:
    ud2
