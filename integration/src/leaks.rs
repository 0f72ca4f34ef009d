//! Finding what a test left behind, from the kernel's and the filesystem's point of view.
//!
//! A test is clean when, for its namespace and container ids:
//! - no shim process of the daemon runs (`/proc/*/cmdline` of a `containerd-shim*` with
//!   `-namespace <ns>` and the daemon's `-address`);
//! - no container process runs (a process whose cgroup path ends in `/<ns>/<id>`: ctr puts each
//!   container in cgroup `/<ns>/<id>`);
//! - no cgroup `/<ns>/<id>` exists in any hierarchy;
//! - runc has no state under the runtime's root: `/run/containerd/runc/<ns>` for runc-v2,
//!   `/run/corral/runc/<ns>` for ours;
//! - no bundle is left under `<state>/io.containerd.runtime.v2.task/<ns>`;
//! - nothing is mounted under the daemon's temp dir (`/proc/self/mountinfo`);
//! - no shim socket `/run/containerd/s/<sha256("<grpc address>/<ns>/<id>")>` exists.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Containerd, Runtime};

/// Directory of shim sockets, hard-coded in containerd 1.6's shim library.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// runc root of runc-v2: `<this>/<ns>`.
pub const RUNC_V2_ROOT: &str = "/run/containerd/runc";
/// runc root of our shim: `<this>/<ns>` (its own, so it never meets runc-v2's containers).
pub const CORRAL_RUNC_ROOT: &str = "/run/corral/runc";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A process found in `/proc`.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub pid: u32,
    pub args: Vec<String>,
}

impl ProcessInfo {
    /// The Go-style positional action (`start`, `delete`), if any: the first argument after the
    /// flags. Boolean flags known to shims (`-debug`, `-v`) take no value; others take one
    /// unless written `-flag=value`.
    pub fn action(&self) -> Option<&str> {
        let mut i = 1;
        while i < self.args.len() {
            let a = self.args[i].as_str();
            if !a.starts_with('-') {
                return Some(a);
            }
            let bool_flag = matches!(a.trim_start_matches('-'), "debug" | "v");
            i += if a.contains('=') || bool_flag { 1 } else { 2 };
        }
        None
    }
}

/// Value of Go-style flag `name` (`-name v`, `--name v`, `-name=v`, `--name=v`).
pub fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    for (i, a) in args.iter().enumerate() {
        let Some(bare) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            continue;
        };
        if bare == name {
            return args.get(i + 1).map(|s| s.as_str());
        }
        if let Some(v) = bare.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

/// All processes whose argv could be read (kernel threads and vanished pids are skipped).
pub fn processes() -> Vec<ProcessInfo> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let args = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        out.push(ProcessInfo { pid, args });
    }
    out
}

/// Shim processes (`containerd-shim*`) of namespace `ns`, and of container `id` if given. Includes
/// short-lived `start`/`delete` invocations.
pub fn shim_processes(ns: &str, id: Option<&str>) -> Vec<ProcessInfo> {
    processes()
        .into_iter()
        .filter(|p| {
            let argv0 = Path::new(&p.args[0]);
            let is_shim = argv0
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("containerd-shim"));
            is_shim
                && flag_value(&p.args, "namespace") == Some(ns)
                && id.is_none_or(|id| flag_value(&p.args, "id") == Some(id))
        })
        .collect()
}

/// Shim processes of namespace `ns` started by the daemon listening on `address` (its
/// `-address`): two daemons may share a namespace name.
pub fn daemon_shim_processes(address: &Path, ns: &str) -> Vec<ProcessInfo> {
    let address = address.to_string_lossy();
    shim_processes(ns, None)
        .into_iter()
        .filter(|p| flag_value(&p.args, "address") == Some(address.as_ref()))
        .collect()
}

/// The long-lived (serving) shim of container `id`: a shim process of `ns`/`id` without a
/// `start`/`delete` action.
pub fn serving_shim(ns: &str, id: &str) -> Option<ProcessInfo> {
    shim_processes(ns, Some(id))
        .into_iter()
        .find(|p| p.action().is_none())
}

/// Where `runtime` keeps runc's state for namespace `ns` by default: `<root>/<ns>`.
pub fn runc_state_dir(runtime: Runtime, ns: &str) -> PathBuf {
    let root = match runtime {
        Runtime::Runc => RUNC_V2_ROOT,
        Runtime::Corral => CORRAL_RUNC_ROOT,
    };
    Path::new(root).join(ns)
}

/// Shim socket of container `id`: `/run/containerd/s/<hex sha256 of "<address>/<ns>/<id>">`.
pub fn shim_socket_path(address: &Path, ns: &str, id: &str) -> PathBuf {
    let key = format!("{}/{ns}/{id}", address.display());
    Path::new(SHIM_SOCKET_DIR).join(hex::encode(Sha256::digest(key.as_bytes())))
}

/// Mount points at or below `prefix`, from `/proc/self/mountinfo`.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(prefix))
        .collect()
}

/// Mount points (field 5) of mountinfo text, with `\040`-style escapes decoded.
pub fn parse_mountinfo_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Roots of the mounted cgroup hierarchies: `/sys/fs/cgroup` and its subdirectories (the cgroup
/// v1 controllers, or the v2 tree's top-level groups, which is harmless).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(CGROUP_ROOT)];
    if let Ok(entries) = fs::read_dir(CGROUP_ROOT) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    roots
}

/// Cgroup directories `<hierarchy>/<ns>/<id>` that exist, across all mounted hierarchies.
pub fn container_cgroups(ns: &str, id: &str) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(ns).join(id))
        .filter(|p| p.is_dir())
        .collect()
}

/// Pids of processes in cgroup `/<ns>/<id>` (any hierarchy).
pub fn container_processes(ns: &str, id: &str) -> Vec<u32> {
    let suffix = format!("/{ns}/{id}");
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cg) = fs::read_to_string(e.path().join("cgroup")) else {
            continue;
        };
        if cg.lines().any(|l| l.ends_with(&suffix)) {
            pids.push(pid);
        }
    }
    pids
}

/// What kind of thing a [`Leak`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakKind {
    ShimProcess,
    ContainerProcess,
    Cgroup,
    ShimSocket,
    RuncState,
    Bundle,
    Mount,
}

/// One thing a test left behind.
#[derive(Clone, Debug)]
pub struct Leak {
    pub kind: LeakKind,
    pub detail: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// Everything `ctrd`'s test left behind for container `ids`; empty when clean.
pub fn find_leaks(ctrd: &Containerd, ids: &[String]) -> Vec<Leak> {
    let ns = ctrd.namespace();
    let mut leaks = Vec::new();
    let mut push = |kind, detail: String| leaks.push(Leak { kind, detail });
    for p in daemon_shim_processes(&ctrd.address(), ns) {
        push(
            LeakKind::ShimProcess,
            format!("pid {} still running: {}", p.pid, p.args.join(" ")),
        );
    }
    for id in ids {
        for pid in container_processes(ns, id) {
            push(
                LeakKind::ContainerProcess,
                format!("pid {pid} of container {id} still running"),
            );
        }
        for cg in container_cgroups(ns, id) {
            push(
                LeakKind::Cgroup,
                format!("{} (container {id})", cg.display()),
            );
        }
        let sock = shim_socket_path(&ctrd.address(), ns, id);
        if sock.exists() {
            push(
                LeakKind::ShimSocket,
                format!("{} (container {id})", sock.display()),
            );
        }
    }
    if let Ok(entries) = fs::read_dir(runc_state_dir(ctrd.runtime(), ns)) {
        for e in entries.flatten() {
            push(LeakKind::RuncState, e.path().display().to_string());
        }
    }
    let bundles = ctrd.state().join("io.containerd.runtime.v2.task").join(ns);
    if let Ok(entries) = fs::read_dir(&bundles) {
        for e in entries.flatten() {
            push(LeakKind::Bundle, e.path().display().to_string());
        }
    }
    for m in mounts_under(ctrd.dir()) {
        push(LeakKind::Mount, m.display().to_string());
    }
    leaks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn socket_path_matches_containerd() {
        // Example from shared/protocol.md §1.3, checked against runc-v2's own output.
        assert_eq!(
            shim_socket_path(
                Path::new("/run/containerd/containerd.sock"),
                "default",
                "t1"
            ),
            PathBuf::from(
                "/run/containerd/s/df6a0c5cd2e9a1a16d9a3f2447365d9fc6021bc1d3d9a4caa2f5b2c4f773758f"
            )
        );
    }

    #[test]
    fn parses_go_style_flags_and_action() {
        let start = args(
            "/usr/bin/containerd-shim-runc-v2 -namespace ns1 -address /a.sock -publish-binary /usr/bin/containerd -id c1 -debug start",
        );
        assert_eq!(flag_value(&start, "namespace"), Some("ns1"));
        assert_eq!(flag_value(&start, "id"), Some("c1"));
        let p = ProcessInfo {
            pid: 1,
            args: start,
        };
        assert_eq!(p.action(), Some("start"));

        let serve =
            args("/x/containerd-shim-corral-v1 --namespace=ns1 -id c1 -address /a.sock -debug");
        assert_eq!(flag_value(&serve, "namespace"), Some("ns1"));
        assert_eq!(flag_value(&serve, "name"), None);
        let p = ProcessInfo {
            pid: 1,
            args: serve,
        };
        assert_eq!(p.action(), None);
    }

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /run/x rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo_points(text),
            vec![PathBuf::from("/mnt/a b"), PathBuf::from("/run/x")]
        );
    }
}
