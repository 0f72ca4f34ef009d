//! Container cgroup metrics for `Task.Stats`, OOM notification, and the shim's own cgroup.
//!
//! The container's cgroup is found from `/proc/<init pid>/cgroup`, so it works whatever
//! cgroupsPath or cgroup driver runc used. cgroup v1 answers `io.containerd.cgroups.v1.Metrics`,
//! the unified hierarchy `io.containerd.cgroups.v2.Metrics`. The shim's cgroup (runc options'
//! `shim_cgroup`) is joined in every mounted hierarchy, found in `/proc/self/mountinfo`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};
use protocol::{v1_metrics as v1, v2_metrics as v2};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup of a process, per hierarchy.
pub enum Cgroup {
    /// controller name → directory.
    V1(HashMap<String, PathBuf>),
    V2(PathBuf),
}

impl Cgroup {
    pub fn of_pid(pid: u32) -> Option<Cgroup> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mut v1 = HashMap::new();
        let mut unified = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = path.trim_start_matches('/');
            if ctrls.is_empty() {
                unified = Some(Path::new(ROOT).join(path));
            }
            for c in ctrls.split(',') {
                let c = c.trim_start_matches("name=");
                v1.insert(c.to_string(), Path::new(ROOT).join(c).join(path));
            }
        }
        if v1.contains_key("memory") || v1.contains_key("cpuacct") {
            Some(Cgroup::V1(v1))
        } else {
            unified.map(Cgroup::V2)
        }
    }

    /// The metrics as containerd's typed Any.
    pub fn metrics(&self) -> Any {
        let mut any = Any::new();
        match self {
            Cgroup::V1(dirs) => {
                let m = v1_metrics(dirs);
                any.type_url = "io.containerd.cgroups.v1.Metrics".into();
                any.value = m.write_to_bytes().unwrap_or_default();
            }
            Cgroup::V2(dir) => {
                let m = v2_metrics(dir);
                any.type_url = "io.containerd.cgroups.v2.Metrics".into();
                any.value = m.write_to_bytes().unwrap_or_default();
            }
        }
        any
    }

    /// The v1 memory cgroup directory, for OOM notification.
    pub fn memory_dir(&self) -> Option<&Path> {
        match self {
            Cgroup::V1(d) => d.get("memory").map(PathBuf::as_path),
            Cgroup::V2(_) => None,
        }
    }
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `key value` lines, as in memory.stat and cpu.stat.
fn read_kv(path: &Path) -> HashMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn v1_metrics(dirs: &HashMap<String, PathBuf>) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    if let Some(d) = dirs.get("pids") {
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&d.join("pids.current"));
        p.limit = read_u64(&d.join("pids.max"));
        m.pids = MessageField::some(p);
    }
    if let Some(d) = dirs.get("cpuacct") {
        let mut cpu = v1::CPUStat::new();
        let mut u = v1::CPUUsage::new();
        u.total = read_u64(&d.join("cpuacct.usage"));
        u.per_cpu = fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // cpuacct.stat counts USER_HZ ticks (100 per second on Linux): 10 ms each.
        let stat = read_kv(&d.join("cpuacct.stat"));
        u.user = stat.get("user").copied().unwrap_or(0) * 10_000_000;
        u.kernel = stat.get("system").copied().unwrap_or(0) * 10_000_000;
        cpu.usage = MessageField::some(u);
        if let Some(c) = dirs.get("cpu") {
            let s = read_kv(&c.join("cpu.stat"));
            let mut t = v1::Throttle::new();
            t.periods = s.get("nr_periods").copied().unwrap_or(0);
            t.throttled_periods = s.get("nr_throttled").copied().unwrap_or(0);
            t.throttled_time = s.get("throttled_time").copied().unwrap_or(0);
            cpu.throttling = MessageField::some(t);
        }
        m.cpu = MessageField::some(cpu);
    }
    if let Some(d) = dirs.get("memory") {
        let s = read_kv(&d.join("memory.stat"));
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let mut mem = v1::MemoryStat::new();
        mem.cache = g("cache");
        mem.rss = g("rss");
        mem.rss_huge = g("rss_huge");
        mem.mapped_file = g("mapped_file");
        mem.dirty = g("dirty");
        mem.writeback = g("writeback");
        mem.pg_pg_in = g("pgpgin");
        mem.pg_pg_out = g("pgpgout");
        mem.pg_fault = g("pgfault");
        mem.pg_maj_fault = g("pgmajfault");
        mem.inactive_anon = g("inactive_anon");
        mem.active_anon = g("active_anon");
        mem.inactive_file = g("inactive_file");
        mem.active_file = g("active_file");
        mem.unevictable = g("unevictable");
        mem.hierarchical_memory_limit = g("hierarchical_memory_limit");
        mem.hierarchical_swap_limit = g("hierarchical_memsw_limit");
        mem.total_cache = g("total_cache");
        mem.total_rss = g("total_rss");
        mem.total_rss_huge = g("total_rss_huge");
        mem.total_mapped_file = g("total_mapped_file");
        mem.total_dirty = g("total_dirty");
        mem.total_writeback = g("total_writeback");
        mem.total_pg_pg_in = g("total_pgpgin");
        mem.total_pg_pg_out = g("total_pgpgout");
        mem.total_pg_fault = g("total_pgfault");
        mem.total_pg_maj_fault = g("total_pgmajfault");
        mem.total_inactive_anon = g("total_inactive_anon");
        mem.total_active_anon = g("total_active_anon");
        mem.total_inactive_file = g("total_inactive_file");
        mem.total_active_file = g("total_active_file");
        mem.total_unevictable = g("total_unevictable");
        let entry = |prefix: &str| {
            let mut e = v1::MemoryEntry::new();
            e.usage = read_u64(&d.join(format!("{prefix}.usage_in_bytes")));
            e.max = read_u64(&d.join(format!("{prefix}.max_usage_in_bytes")));
            e.limit = read_u64(&d.join(format!("{prefix}.limit_in_bytes")));
            e.failcnt = read_u64(&d.join(format!("{prefix}.failcnt")));
            MessageField::some(e)
        };
        mem.usage = entry("memory");
        mem.swap = entry("memory.memsw");
        mem.kernel = entry("memory.kmem");
        mem.kernel_tcp = entry("memory.kmem.tcp");
        m.memory = MessageField::some(mem);
    }
    m
}

fn v2_metrics(dir: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut p = v2::PidsStat::new();
    p.current = read_u64(&dir.join("pids.current"));
    p.limit = read_u64(&dir.join("pids.max"));
    m.pids = MessageField::some(p);
    let s = read_kv(&dir.join("cpu.stat"));
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = g("usage_usec");
    cpu.user_usec = g("user_usec");
    cpu.system_usec = g("system_usec");
    cpu.nr_periods = g("nr_periods");
    cpu.nr_throttled = g("nr_throttled");
    cpu.throttled_usec = g("throttled_usec");
    m.cpu = MessageField::some(cpu);
    let s = read_kv(&dir.join("memory.stat"));
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    let mut mem = v2::MemoryStat::new();
    mem.anon = g("anon");
    mem.file = g("file");
    mem.kernel_stack = g("kernel_stack");
    mem.slab = g("slab");
    mem.sock = g("sock");
    mem.shmem = g("shmem");
    mem.file_mapped = g("file_mapped");
    mem.file_dirty = g("file_dirty");
    mem.file_writeback = g("file_writeback");
    mem.inactive_anon = g("inactive_anon");
    mem.active_anon = g("active_anon");
    mem.inactive_file = g("inactive_file");
    mem.active_file = g("active_file");
    mem.unevictable = g("unevictable");
    mem.pgfault = g("pgfault");
    mem.pgmajfault = g("pgmajfault");
    mem.usage = read_u64(&dir.join("memory.current"));
    mem.usage_limit = read_u64(&dir.join("memory.max"));
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"));
    mem.swap_limit = read_u64(&dir.join("memory.swap.max"));
    m.memory = MessageField::some(mem);
    m
}

/// Waits for OOM kills in a v1 memory cgroup: an eventfd registered on memory.oom_control.
/// Returns a future that resolves each time the cgroup hits OOM, or an error when the
/// cgroup is gone.
pub struct OomWatch {
    efd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl OomWatch {
    pub fn new(memory_dir: &Path) -> std::io::Result<OomWatch> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: eventfd returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        let oom = fs::File::open(memory_dir.join("memory.oom_control"))?;
        fs::write(
            memory_dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd()),
        )?;
        Ok(OomWatch {
            efd: crate::io::async_fd(efd)?,
        })
    }

    /// Resolves at the next OOM event; errors when the cgroup was removed.
    pub async fn next(&self, memory_dir: &Path) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            let mut guard = self.efd.readable().await?;
            let mut v = 0u64;
            // SAFETY: reading 8 bytes into a u64.
            let n = unsafe { libc::read(self.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            guard.clear_ready();
            if n == 8 {
                // The kernel also signals the eventfd when the cgroup is removed.
                if !memory_dir.exists() {
                    return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
                }
                return Ok(());
            }
        }
    }
}

/// Moves process `pid` into cgroup `path` (the runc options' `shim_cgroup`), as containerd's
/// runc shim does with the server it starts: in every mounted hierarchy where that cgroup
/// exists (each cgroup v1 controller, and the unified hierarchy on a hybrid or v2 host). The
/// daemon's client creates the cgroup; one that exists nowhere is an error, as is a failed
/// move, so the task is not created with its shim outside the cgroup it asked for.
pub fn join(pid: u32, path: &str) -> Result<(), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    join_in(&hierarchies(&mountinfo), pid, path)
}

fn join_in(roots: &[PathBuf], pid: u32, path: &str) -> Result<(), String> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "shim cgroup {path:?}: must be a path of cgroup names without \".\" or \"..\""
        ));
    }
    let dirs: Vec<PathBuf> = roots
        .iter()
        .map(|r| r.join(rel))
        .filter(|d| d.is_dir())
        .collect();
    if dirs.is_empty() {
        return Err(format!(
            "failed to load cgroup {path}: it does not exist in any mounted cgroup hierarchy"
        ));
    }
    for d in dirs {
        let procs = d.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|e| {
            format!(
                "failed to join cgroup {path}: write {}: {e}",
                procs.display()
            )
        })?;
    }
    Ok(())
}

/// Mount points of the cgroup (v1) and cgroup2 filesystems in mountinfo text, each once.
fn hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // `<id> <parent> <dev> <root> <mount point> <options> [tags...] - <fstype> <source> ...`
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = after.split(' ').next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(point) = before.split(' ').nth(4) else {
            continue;
        };
        let point = PathBuf::from(unescape_octal(point));
        if !out.contains(&point) {
            out.push(point);
        }
    }
    out
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 41 0:38 / /mnt/odd\\040dir rw - cgroup2 cgroup2 rw
51 23 0:40 / /mnt/cgroupish rw - ext4 /dev/cgroup rw
52 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
";

    #[test]
    fn hierarchies_are_the_cgroup_mounts() {
        let h = hierarchies(HYBRID);
        let want: Vec<PathBuf> = [
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/devices",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/mnt/odd dir",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(h, want);
    }

    #[test]
    fn join_writes_the_pid_where_the_cgroup_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let roots: Vec<PathBuf> = ["devices", "memory", "unified"]
            .iter()
            .map(|r| tmp.path().join(r))
            .collect();
        // The cgroup exists in two of the three hierarchies.
        for r in &roots[..2] {
            fs::create_dir_all(r.join("containerd/shim")).unwrap();
            fs::write(r.join("containerd/shim/cgroup.procs"), "").unwrap();
        }
        fs::create_dir_all(&roots[2]).unwrap();
        join_in(&roots, 4242, "/containerd/shim").unwrap();
        for r in &roots[..2] {
            let procs = fs::read_to_string(r.join("containerd/shim/cgroup.procs")).unwrap();
            assert_eq!(procs, "4242");
        }
        assert!(!roots[2].join("containerd").exists());

        let e = join_in(&roots, 1, "/nowhere").unwrap_err();
        assert!(
            e.contains("/nowhere") && e.contains("does not exist"),
            "{e}"
        );
        let e = join_in(&roots, 1, "/containerd/../../escape").unwrap_err();
        assert!(e.contains("\"..\""), "{e}");
    }
}
