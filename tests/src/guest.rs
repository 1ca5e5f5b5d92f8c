//! Linux guests under QEMU.
