//! Cgroups a test makes itself, as containerd's client tests make one for a shim
//! (TestShimInCgroup), and which processes the kernel lists in them.
//!
//! [`TestCgroup::create`] makes the cgroup where containerd's cgroup libraries would for such
//! a client: in every cgroup v1 hierarchy on a v1 or hybrid host (`cgroups.New(cgroups.V1, …)`
//! leaves the hybrid host's unified hierarchy alone), in the unified hierarchy on a v2 host.
//! Drop removes what it made, deepest first, once the processes in it are gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{leaks, try_wait_until};

/// How long Drop waits for a cgroup to empty (a killed shim still exiting) before giving up.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// A mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// cgroup2 (the unified hierarchy) rather than a v1 controller hierarchy.
    pub unified: bool,
}

/// The cgroup hierarchies mounted here, each mount point once.
pub fn hierarchies() -> Vec<Hierarchy> {
    parse_hierarchies(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The cgroup and cgroup2 mounts in mountinfo text.
pub fn parse_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, after)| after.split(' ').next());
        let unified = match fstype {
            Some("cgroup") => false,
            Some("cgroup2") => true,
            _ => continue,
        };
        for mount in leaks::parse_mountinfo_points(line) {
            if !out.iter().any(|h| h.mount == mount) {
                out.push(Hierarchy { mount, unified });
            }
        }
    }
    out
}

/// A cgroup made for one test; see the module docs.
pub struct TestCgroup {
    path: String,
    /// The cgroup's directory in each hierarchy it was made in.
    dirs: Vec<PathBuf>,
    /// Every directory made, parents first.
    made: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes cgroup `path` (e.g. `/corral-it-<ns>/shim`); panics if it cannot.
    pub fn create(path: &str) -> TestCgroup {
        let all = hierarchies();
        let v1: Vec<&Hierarchy> = all.iter().filter(|h| !h.unified).collect();
        let chosen: Vec<&Hierarchy> = if v1.is_empty() {
            all.iter().collect()
        } else {
            v1
        };
        assert!(!chosen.is_empty(), "no cgroup hierarchy is mounted");
        let rel = path.trim_start_matches('/');
        let mut me = TestCgroup {
            path: path.to_string(),
            dirs: Vec::new(),
            made: Vec::new(),
        };
        for h in chosen {
            let mut dir = h.mount.clone();
            for part in rel.split('/').filter(|p| !p.is_empty()) {
                let parent = dir.clone();
                dir.push(part);
                if dir.is_dir() {
                    continue;
                }
                fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
                me.made.push(dir.clone());
                // A new v1 cpuset starts with no cpus and no memory nodes, and refuses
                // processes until it gets some (containerd's library copies the parent's).
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if let Ok(v) = fs::read_to_string(parent.join(f)) {
                        fs::write(dir.join(f), v.trim())
                            .unwrap_or_else(|e| panic!("cannot set {}/{f}: {e}", dir.display()));
                    }
                }
            }
            me.dirs.push(dir);
        }
        me
    }

    /// The path given to [`TestCgroup::create`], as a client passes it in runtime options.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The cgroup's directory in each hierarchy it was made in.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Directories of the cgroup whose `cgroup.procs` does not list `pid`.
    pub fn dirs_without(&self, pid: u32) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter(|d| !procs(d).contains(&pid))
            .cloned()
            .collect()
    }
}

/// Pids listed in `<dir>/cgroup.procs`.
pub fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let removed = try_wait_until(EMPTY_TIMEOUT, || match fs::remove_dir(dir) {
                Ok(()) => Some(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
                Err(_) => None,
            });
            if removed.is_none() {
                eprintln!(
                    "warning: cannot remove cgroup {} (processes {:?} still in it)",
                    dir.display(),
                    procs(dir)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup_mounts_once() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:4 - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";
        let h = parse_hierarchies(text);
        let names: Vec<(&str, bool)> = h
            .iter()
            .map(|h| (h.mount.to_str().unwrap(), h.unified))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/sys/fs/cgroup/cpu", false),
                ("/sys/fs/cgroup/systemd", false),
                ("/sys/fs/cgroup/unified", true),
            ]
        );
    }
}
