//! Fuzz target `net_ctrl`: see `vhostkit_fuzz::net_ctrl`.

fn main() {
    vhostkit_fuzz::main(vhostkit_fuzz::net_ctrl::run);
}
