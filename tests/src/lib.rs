//! Test support shared by the daemons' integration tests and the benchmarks:
//! starting daemons and peers as child processes, and booting Linux guests.

pub mod daemon;
pub mod fs;
pub mod guest;
pub mod netns;
pub mod packet;
pub mod skip;
pub mod util;

pub use util::{wait_for_log, Rng, TempDir};

/// Our daemons' command lines from typed values (the `vhostkit-launch` crate).
pub use vhostkit_launch as launch;
