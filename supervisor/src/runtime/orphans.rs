//! Shim processes no task accounts for, found through /proc after a restart.
//!
//! A corrald killed half-way through creating a task can leave a shim behind that no bundle
//! leads to: its `start` action was still running (it goes on without us and forks a server),
//! or the server came up after the bundle was cleaned. containerd 1.6 leaks those; corrald
//! finds every shim started for its address (`-address <ours>` on the command line) and stops
//! the ones that serve no registered task.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A shim process started for our address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimProcess {
    pub pid: u32,
    pub namespace: String,
    pub id: String,
    /// `start`, `delete`, or empty for a serving shim.
    pub action: String,
}

/// Parses a shim's argv: Go-style flags (`-flag value`, `--flag=value`), then the action.
pub fn parse(pid: u32, argv: &[String], address: &str) -> Option<ShimProcess> {
    let name = Path::new(argv.first()?).file_name()?.to_str()?;
    if !name.starts_with("containerd-shim-") {
        return None;
    }
    let (mut ns, mut id, mut addr, mut action) = (None, None, None, String::new());
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            action = a.clone();
            break;
        };
        let (flag, value) = match flag.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (flag, None),
        };
        let boolean = matches!(flag, "debug" | "v");
        let value = match value {
            Some(v) => Some(v),
            None if boolean => None,
            None => {
                i += 1;
                argv.get(i).cloned()
            }
        };
        match flag {
            "namespace" => ns = value,
            "id" => id = value,
            "address" => addr = value,
            _ => {}
        }
        i += 1;
    }
    (addr.as_deref() == Some(address)).then_some(ShimProcess {
        pid,
        namespace: ns?,
        id: id?,
        action,
    })
}

/// Every shim process started for `address`.
pub fn find(address: &str) -> Vec<ShimProcess> {
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
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if let Some(p) = parse(pid, &argv, address) {
            out.push(p);
        }
    }
    out
}

/// Kills `start` actions left running by a previous corrald (they would fork servers nobody
/// will ever talk to). Call before loading bundles.
pub fn kill_starts(address: &str) {
    for p in find(address).into_iter().filter(|p| p.action == "start") {
        log::warn!(
            "killing shim start for {}/{} (pid {}) left by a previous corrald",
            p.namespace,
            p.id,
            p.pid
        );
        kill_and_wait(p.pid);
    }
}

/// Kills serving shims whose pid is not one of `live` and removes their sockets. Call after
/// loading bundles.
pub fn kill_unaccounted(address: &str, live: &HashSet<u32>) {
    for p in find(address)
        .into_iter()
        .filter(|p| p.action.is_empty() && !live.contains(&p.pid))
    {
        log::warn!(
            "shim for {}/{} (pid {}) serves no task; killing it",
            p.namespace,
            p.id,
            p.pid
        );
        kill_and_wait(p.pid);
        let socket = socket_path(address, &p.namespace, &p.id);
        if std::os::unix::net::UnixStream::connect(&socket).is_err() {
            let _ = fs::remove_file(&socket);
        }
    }
}

/// The socket a shim's `start` binds: `/run/containerd/s/<sha256(address/ns/id)>`.
pub fn socket_path(address: &str, ns: &str, id: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{address}/{ns}/{id}").as_bytes());
    Path::new("/run/containerd/s").join(hex::encode(digest))
}

fn kill_and_wait(pid: u32) {
    // SAFETY: kill(2) of a pid just read from /proc whose command line names a shim of ours.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn parses_shim_command_lines() {
        let a = "/run/c.sock";
        let p = parse(
            7,
            &argv("/usr/bin/containerd-shim-runc-v2 -namespace ns1 -id c1 -address /run/c.sock -debug"),
            a,
        )
        .unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.id.as_str(), p.action.as_str()),
            ("ns1", "c1", "")
        );
        let p = parse(
            8,
            &argv("containerd-shim-corral-v1 -namespace ns1 -address /run/c.sock -publish-binary /x -id c2 -debug start"),
            a,
        )
        .unwrap();
        assert_eq!(p.action, "start");
        let p = parse(
            9,
            &argv("containerd-shim-x-v1 --namespace=n --id=i --address=/run/c.sock"),
            a,
        );
        assert_eq!(p.unwrap().id, "i");
        // Another daemon's shims, and other programs, are not ours.
        assert!(
            parse(
                1,
                &argv("containerd-shim-runc-v2 -namespace n -id i -address /other"),
                a
            )
            .is_none()
        );
        assert!(
            parse(
                1,
                &argv("/bin/sleep -namespace n -id i -address /run/c.sock"),
                a
            )
            .is_none()
        );
    }

    #[test]
    fn socket_path_matches_containerds_rule() {
        // protocol.md §1.3: the example runc-v2 printed for a private daemon.
        assert_eq!(
            socket_path("/run/containerd/containerd.sock", "default", "t1"),
            Path::new(
                "/run/containerd/s/df6a0c5cd2e9a1a16d9a3f2447365d9fc6021bc1d3d9a4caa2f5b2c4f773758f"
            )
        );
    }
}
