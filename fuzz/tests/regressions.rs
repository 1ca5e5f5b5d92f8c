//! Every input in `fuzz/regressions/<target>/` (inputs that once crashed a target
//! or hung it, kept after the fix) and in the seed corpus `fuzz/corpus/<target>/`
//! goes through the target's entry point, as under afl-fuzz but without it: a
//! plain `cargo test` catches a regression.

use std::path::{Path, PathBuf};

fn folder(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

fn replay(target: &str) {
    let run = vhostkit_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .expect("known target");
    let mut total = 0;
    for kind in ["regressions", "corpus"] {
        let dir = folder(kind, target);
        if dir.is_dir() {
            total += vhostkit_fuzz::replay(&dir, run).expect("replay");
        }
    }
    vhostkit_fuzz::scratch::cleanup(Some(target));
    assert!(total > 0, "no inputs for {target}");
}

#[test]
fn blk_request() {
    replay("blk_request");
}

#[test]
fn net_tx() {
    replay("net_tx");
}

#[test]
fn net_ctrl() {
    replay("net_ctrl");
}

#[test]
fn fuse() {
    replay("fuse");
}

#[test]
fn vmm_mmio() {
    replay("vmm_mmio");
}

#[test]
fn vmm_config() {
    replay("vmm_config");
}

/// The committed seeds are what `gen_corpus` makes (run it after changing
/// `corpus.rs`).
#[test]
fn corpus_matches_the_generator() {
    for (target, seeds) in vhostkit_fuzz::corpus::all() {
        let dir = folder("corpus", target);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut names: Vec<String> = seeds.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(
            on_disk, names,
            "{target}: run `cargo run -p vhostkit-fuzz --bin gen_corpus`"
        );
        for (name, bytes) in &seeds {
            let file = std::fs::read(dir.join(name)).unwrap();
            assert!(&file == bytes, "{target}/{name} differs: run gen_corpus");
        }
    }
}
