//! Fuzz target `vmm_config`: see `vhostkit_fuzz::vmm_config`.

fn main() {
    vhostkit_fuzz::main(vhostkit_fuzz::vmm_config::run);
}
