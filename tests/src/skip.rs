//! Tests that cannot run here say so, and under `.ci/run` that is a failure.
//!
//! A test whose requirement is missing calls [`skip`] (or
//! [`skip_without_hardware_virtualization`]) and returns. Outside CI that prints
//! one `SKIPPED:` line and the test passes, so a developer without root, QEMU or
//! the guest image can still run the rest. With [`STRICT_ENV`] set (as `.ci/run`
//! does), a skip panics instead: everything these machines can run must run,
//! and a missing package or a broken set-up fails CI rather than passing
//! unnoticed.
//!
//! The one exception is hardware virtualization: `/dev/kvm` on every machine of
//! this project is kvm_pvm, which cannot boot a stock Linux kernel in useful time.
//! The tests that need it (and only they) skip through
//! [`skip_without_hardware_virtualization`], which is allowed under CI too:
//!
//! - `vmm/tests/linux.rs`: every test (Linux booted through vhostkit with our
//!   daemons: blk fio, net iperf3, fs tar).

use std::fmt::Display;

/// Set to 1 (by `.ci/run`) to make every skip but the hardware-virtualization
/// ones a failure.
pub const STRICT_ENV: &str = "VHOSTKIT_NO_SKIP";

/// Whether skips fail ([`STRICT_ENV`] is set to anything but "0" or empty).
pub fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The test cannot run here because of `why`: prints `SKIPPED: why`, and under
/// [`STRICT_ENV`] fails the test.
#[track_caller]
pub fn skip(why: impl Display) {
    println!("SKIPPED: {why}");
    if strict() {
        panic!("SKIPPED under {STRICT_ENV}=1 (this machine can run it; fix the set-up): {why}");
    }
}

/// For the tests listed in the module documentation only: true if the test can
/// run; else prints `SKIPPED: why` (allowed under [`STRICT_ENV`]) and returns
/// false.
pub fn skip_without_hardware_virtualization(why: impl Display) -> bool {
    if crate::guest::hardware_kvm() {
        return true;
    }
    println!("SKIPPED: {why}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_turns_a_skip_into_a_failure() {
        // The variable is read per call; set it for this process only, and put
        // back what CI set afterwards.
        let before = std::env::var(STRICT_ENV).ok();
        std::env::set_var(STRICT_ENV, "1");
        let strict_skip = std::panic::catch_unwind(|| skip("no frobnicator"));
        let hw = std::panic::catch_unwind(|| skip_without_hardware_virtualization("no vmx"));
        std::env::set_var(STRICT_ENV, "0");
        let lenient_skip = std::panic::catch_unwind(|| skip("no frobnicator"));
        match before {
            Some(v) => std::env::set_var(STRICT_ENV, v),
            None => std::env::remove_var(STRICT_ENV),
        }
        assert!(strict_skip.is_err(), "a skip fails under {STRICT_ENV}=1");
        assert!(
            hw.is_ok(),
            "hardware virtualization may be missing under CI"
        );
        assert!(lenient_skip.is_ok());
    }
}
