//! What a host process did while a benchmark row ran: CPU time, how often its
//! threads went to sleep and woke (voluntary context switches) or were preempted
//! (involuntary ones), and, for QEMU, how many write system calls its vCPU threads
//! made: under TCG each guest notification (kick) of a vhost-user queue is a write
//! to the queue's kick eventfd from the vCPU thread that took the guest's write to
//! the notify register (and a kick of QEMU's own tap backend is the write that
//! wakes its main loop), so the count stands for the guest's kicks.
//!
//! Everything comes from /proc: `stat` for CPU, each thread's `status` for the
//! context switches and `io` (`syscw`) for the writes. Read before and after a row;
//! the difference is the row's.

use std::io;
use std::path::Path;

/// Counters of one process, summed over its threads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcCounters {
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// Sleeps that ended in a wake-up (voluntary context switches).
    pub wakeups: u64,
    /// Preemptions (involuntary context switches).
    pub preempted: u64,
    /// Write system calls of the threads named `CPU <n>/...` (QEMU's vCPU threads,
    /// named when QEMU runs with `-name debug-threads=on`); 0 for other processes.
    pub vcpu_writes: u64,
}

impl ProcCounters {
    /// The counters of process `pid` now.
    pub fn read(pid: u32) -> io::Result<Self> {
        let mut c = ProcCounters {
            cpu_seconds: crate::report::process_cpu_seconds(pid)?,
            ..Default::default()
        };
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?.path();
            // A thread may end between the listing and the read: skip it.
            let Ok(status) = std::fs::read_to_string(task.join("status")) else {
                continue;
            };
            c.wakeups += field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
            c.preempted += field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
            if is_vcpu_thread(&task) {
                if let Ok(io) = std::fs::read_to_string(task.join("io")) {
                    c.vcpu_writes += field(&io, "syscw:").unwrap_or(0);
                }
            }
        }
        Ok(c)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ProcCounters) -> ProcCounters {
        ProcCounters {
            cpu_seconds: (self.cpu_seconds - earlier.cpu_seconds).max(0.0),
            wakeups: self.wakeups.saturating_sub(earlier.wakeups),
            preempted: self.preempted.saturating_sub(earlier.preempted),
            vcpu_writes: self.vcpu_writes.saturating_sub(earlier.vcpu_writes),
        }
    }
}

/// QEMU names its vCPU threads "CPU 0/TCG", "CPU 1/KVM", ... (with
/// `-name debug-threads=on`).
fn is_vcpu_thread(task: &Path) -> bool {
    std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| {
        comm.trim_end()
            .strip_prefix("CPU ")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    })
}

/// The number after `key` on its line of a /proc text file.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_proc_text() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(field(status, "voluntary_ctxt_switches:"), Some(12));
        assert_eq!(field(status, "nonvoluntary_ctxt_switches:"), Some(3));
        assert_eq!(field("rchar: 1\nsyscw: 44\n", "syscw:"), Some(44));
        assert_eq!(field("x", "syscw:"), None);
    }

    /// This process's own counters move when it sleeps; it has no vCPU thread.
    #[test]
    fn own_counters_count_sleeps() {
        let pid = std::process::id();
        let before = ProcCounters::read(pid).unwrap();
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let d = ProcCounters::read(pid).unwrap().since(&before);
        assert!(d.wakeups >= 5, "{d:?}");
        assert_eq!(d.vcpu_writes, 0);
        let later = ProcCounters {
            wakeups: 1,
            ..Default::default()
        };
        assert_eq!(before.since(&later).preempted, before.preempted);
        assert_eq!(later.since(&before).wakeups, 0, "never negative");
    }
}
