//! Fuzz target `vmm_mmio`: see `vhostkit_fuzz::vmm_mmio`.

fn main() {
    vhostkit_fuzz::main(vhostkit_fuzz::vmm_mmio::run);
}
