//! Fuzz target `net_tx`: see `vhostkit_fuzz::net_tx`.

fn main() {
    vhostkit_fuzz::main(vhostkit_fuzz::net_tx::run);
}
