//! What a process holds, from `/proc/<pid>`: resident memory, open files and threads. The load
//! and long-run tests compare a daemon's figures before and after a run.

use std::fmt;
use std::fs;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// `VmRSS`, in KiB.
    pub rss_kib: u64,
    /// Of which `RssAnon` (heap, stacks): what a leak grows. The rest is mostly the binary's
    /// pages (`RssFile`), which grow as more of its code runs.
    pub anon_kib: u64,
    /// Entries of `/proc/<pid>/fd`.
    pub fds: u64,
    /// `Threads`.
    pub threads: u64,
}

impl ProcStats {
    /// All zero: no slack in [`within`].
    pub const ZERO: ProcStats = ProcStats {
        rss_kib: 0,
        anon_kib: 0,
        fds: 0,
        threads: 0,
    };

    /// The larger of each figure (a peak over readings).
    pub fn max(self, other: ProcStats) -> ProcStats {
        ProcStats {
            rss_kib: self.rss_kib.max(other.rss_kib),
            anon_kib: self.anon_kib.max(other.anon_kib),
            fds: self.fds.max(other.fds),
            threads: self.threads.max(other.threads),
        }
    }
}

impl fmt::Display for ProcStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB ({:.1} MiB anonymous), {} fds, {} threads",
            self.rss_kib as f64 / 1024.0,
            self.anon_kib as f64 / 1024.0,
            self.fds,
            self.threads
        )
    }
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The figures of `pid`, or None once it is gone.
pub fn of(pid: u32) -> Option<ProcStats> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcStats {
        rss_kib: status_field(&status, "VmRSS:")?,
        anon_kib: status_field(&status, "RssAnon:")?,
        fds,
        threads: status_field(&status, "Threads:")?,
    })
}

/// Whether `now` is within `percent` of `start` (or `slack` above it, for figures so small
/// that one more is already 10 %) on each figure. Lower is always fine.
pub fn within(start: ProcStats, now: ProcStats, percent: u64, slack: ProcStats) -> bool {
    let ok = |a: u64, b: u64, s: u64| b <= a + (a * percent).div_ceil(100).max(s);
    ok(start.rss_kib, now.rss_kib, slack.rss_kib)
        && ok(start.fds, now.fds, slack.fds)
        && ok(start.threads, now.threads, slack.threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = of(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.fds >= 3 && me.threads >= 1, "{me}");
    }

    #[test]
    fn within_percent_or_slack() {
        let s = |rss_kib, fds, threads| ProcStats {
            rss_kib,
            anon_kib: 0,
            fds,
            threads,
        };
        let none = s(0, 0, 0);
        assert!(within(s(1000, 20, 10), s(1100, 22, 11), 10, none));
        assert!(!within(s(1000, 20, 10), s(1101, 22, 11), 10, none));
        assert!(!within(s(1000, 20, 10), s(1000, 23, 10), 10, none));
        assert!(within(s(1000, 20, 10), s(900, 2, 1), 10, none));
        assert!(within(s(1000, 5, 2), s(1000, 7, 3), 10, s(0, 2, 1)));
    }
}
