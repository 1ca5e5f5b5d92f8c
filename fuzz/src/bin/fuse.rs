//! Fuzz target `fuse`: see `vhostkit_fuzz::fuse`.

fn main() {
    vhostkit_fuzz::main(vhostkit_fuzz::fuse::run);
}
