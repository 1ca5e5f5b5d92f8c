//! Writes the seed corpus, `fuzz/corpus/<target>/<seed>`, from
//! `vhostkit_fuzz::corpus` (removing seeds it no longer makes):
//! `cargo run -p vhostkit-fuzz --bin gen_corpus`.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in vhostkit_fuzz::corpus::all() {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the old seeds");
        }
        std::fs::create_dir_all(&dir).expect("make the corpus folder");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
