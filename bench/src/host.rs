//! What the numbers were measured on: host, versions, date, and how busy the machine was.
//!
//! The machine is shared, so before each timed block [`wait_quiet`] waits (up to a cap) until
//! the CPUs were at least a given share idle over one second, and remembers what it saw: the
//! report shows the load next to the numbers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Output of a command's first line, or `unknown (<why>)`.
pub fn first_line(program: &str, args: &[&str]) -> String {
    first_line_in(program, args, None)
}

fn first_line_in(program: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut c = Command::new(program);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    match c.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        Ok(o) => format!("unknown ({program} exited {})", o.status),
        Err(e) => format!("unknown ({program}: {e})"),
    }
}

fn proc_field(path: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

/// Host and version lines for the report, as `(what, value)`.
pub fn describe(corrald: &Path, shim: &Path, workspace: &Path) -> Vec<(String, String)> {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    };
    let mut rev = first_line_in("git", &["rev-parse", "--short=12", "HEAD"], Some(workspace));
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(workspace)
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        rev.push_str(" (with uncommitted changes)");
    }
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{} ({:.2} MB)", p.display(), m.len() as f64 / 1e6))
            .unwrap_or_else(|e| format!("{} ({e})", p.display()))
    };
    vec![
        (
            "date".into(),
            first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        ),
        ("os".into(), os),
        ("kernel".into(), format!("{kernel}, cgroup {cgroup}")),
        ("cpu".into(), format!("{cpu}, {cores} cores")),
        ("memory".into(), mem),
        (
            "containerd".into(),
            first_line("containerd", &["--version"]),
        ),
        ("runc".into(), first_line("runc", &["--version"])),
        ("ctr".into(), first_line("ctr", &["--version"])),
        (
            "corrald".into(),
            first_line(&corrald.display().to_string(), &["--version"]),
        ),
        ("corrald binary".into(), size(corrald)),
        ("corral shim binary".into(), size(shim)),
        ("git".into(), rev),
    ]
}

/// Today's date (UTC) as `YYYY-MM-DD`, for the results file name.
pub fn today() -> String {
    first_line("date", &["-u", "+%Y-%m-%d"])
}

/// Busy and total jiffies of all CPUs, from the first line of /proc/stat.
pub fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

/// Share of CPU time (0–100) all CPUs were idle during `over`.
pub fn idle_percent(over: Duration) -> f64 {
    let a = cpu_jiffies();
    std::thread::sleep(over);
    idle_since(a)
}

/// Share of CPU time (0–100) all CPUs were idle since `cpu_jiffies()` returned `since`.
pub fn idle_since(since: (u64, u64)) -> f64 {
    let (b0, t0) = since;
    let (b1, t1) = cpu_jiffies();
    let total = t1.saturating_sub(t0);
    if total == 0 {
        return 100.0;
    }
    100.0 * (1.0 - b1.saturating_sub(b0) as f64 / total as f64)
}

/// 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What [`wait_quiet`] saw before one block.
#[derive(Clone, Debug)]
pub struct Quiet {
    pub block: String,
    /// CPU idle % over the last second before the block started.
    pub idle: f64,
    pub load1: f64,
    pub waited: Duration,
    /// CPU jiffies when the block started, and the idle % from then until the next block
    /// (the bench's own load included), once known.
    pub started: (u64, u64),
    pub during: Option<f64>,
}

impl Quiet {
    /// Records how idle the CPUs were since the block started (first call only).
    pub fn close(&mut self) {
        if self.during.is_none() {
            self.during = Some(idle_since(self.started));
        }
    }
}

/// Waits until the CPUs were at least `min_idle` % idle over one second, at most `cap`
/// (then goes on anyway: the report shows the load).
pub fn wait_quiet(block: &str, min_idle: f64, cap: Duration) -> Quiet {
    let start = Instant::now();
    loop {
        let idle = idle_percent(Duration::from_secs(1));
        if idle >= min_idle || start.elapsed() >= cap {
            let q = Quiet {
                block: block.to_string(),
                idle,
                load1: loadavg(),
                waited: start.elapsed(),
                started: cpu_jiffies(),
                during: None,
            };
            if idle < min_idle {
                eprintln!(
                    "  note: machine still busy before {block} ({idle:.0}% idle, load {:.2}) \
                     after {:.0}s; going on",
                    q.load1,
                    q.waited.as_secs_f64()
                );
            }
            return q;
        }
    }
}

/// sync(2), then waits (at most 2 min) until the kernel has written back what was dirty.
pub fn flush_dirty_pages() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb = |name: &str| -> u64 {
            meminfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if kb("Dirty:") + kb("Writeback:") < 16 * 1024 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
