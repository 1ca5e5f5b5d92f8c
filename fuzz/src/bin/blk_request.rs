//! Fuzz target `blk_request`: see `vhostkit_fuzz::blk_request`.

fn main() {
    vhostkit_fuzz::main(vhostkit_fuzz::blk_request::run);
}
