//! The `start` action: bind the shim's socket, start the long-lived server, print the address.
//!
//! containerd reads our combined stdout and stderr until EOF and takes the trimmed text as the
//! address, so: nothing else may be printed, and the server child must hold none of our stdio
//! (it gets /dev/null), or containerd would wait for it forever (shared/protocol.md §1.3).

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use protocol::options::Options;
use sha2::{Digest, Sha256};

use crate::flags::Flags;
use crate::spec::Spec;
use crate::{cgroup, options, util};

/// containerd hard-codes this directory for shim sockets (not derived from its --state).
pub const SOCKET_DIR: &str = "/run/containerd/s";

/// `unix:///run/containerd/s/<sha256("<address>/<namespace>/<group id>")>`: the same rule as
/// containerd's shims, so a restarted daemon and the `delete` action find the same socket.
pub fn socket_address(daemon_address: &str, namespace: &str, group_id: &str) -> String {
    let joined = Path::new(daemon_address).join(namespace).join(group_id);
    let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    format!("unix://{SOCKET_DIR}/{}", hex::encode(digest))
}

pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

pub fn bundle_dir(flags: &Flags) -> io::Result<PathBuf> {
    match &flags.bundle {
        Some(b) => Ok(PathBuf::from(b)),
        None => std::env::current_dir(),
    }
}

/// Runs the `start` action; returns the address to print.
pub fn start(flags: &Flags) -> Result<String, String> {
    let bundle = bundle_dir(flags).map_err(|e| format!("bundle directory: {e}"))?;
    let spec = Spec::load(&bundle).unwrap_or_default();
    let address = socket_address(&flags.address, &flags.namespace, spec.group_id(&flags.id));
    let path = socket_path(&address);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(SOCKET_DIR)
        .map_err(|e| format!("create {SOCKET_DIR}: {e}"))?;
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                // A live shim already serves this group: share it.
                write_address(&bundle, &address)?;
                return Ok(address);
            }
            // A stale socket from a dead shim.
            fs::remove_file(path).map_err(|e| format!("remove stale socket {path}: {e}"))?;
            UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?
        }
        Err(e) => return Err(format!("bind {path}: {e}")),
    };
    let cleanup = |msg: String| {
        let _ = fs::remove_file(path);
        msg
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| cleanup(format!("chmod {path}: {e}")))?;
    write_address(&bundle, &address).map_err(cleanup)?;
    // Read before the server exists, so bad options leave nothing to undo but the socket.
    let options = read_options().map_err(cleanup)?;
    let child = spawn_server(flags, &bundle, &listener).map_err(cleanup)?;
    set_oom_score(child);
    if !options.shim_cgroup.is_empty()
        && let Err(e) = cgroup::join(child, &options.shim_cgroup)
    {
        // As containerd's shim: no task is created with its shim outside the cgroup asked
        // for. The server has served nobody yet.
        // SAFETY: kill(2) of the child we just spawned; it is not reaped while we live.
        unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
        return Err(cleanup(e));
    }
    Ok(address)
}

fn write_address(bundle: &Path, address: &str) -> Result<(), String> {
    util::atomic_write(&bundle.join("address"), address.as_bytes(), 0o644)
        .map_err(|e| format!("write {}/address: {e}", bundle.display()))
}

/// Re-executes ourselves in serve mode with the listening socket as fd 3, in a new session,
/// with /dev/null as stdio.
fn spawn_server(flags: &Flags, bundle: &Path, listener: &UnixListener) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id]);
    cmd.args(["-address", &flags.address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it explicitly.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The server is reparented to init when we exit; nobody waits for it here.
    let child = cmd.spawn().map_err(|e| format!("start shim server: {e}"))?;
    Ok(child.id())
}

/// The server gets our oom_score_adj + 1, so the kernel prefers killing it over the daemon.
fn set_oom_score(pid: u32) {
    let ours: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let _ = fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (ours + 1).min(1000).to_string(),
    );
}

/// The runtime options the daemon writes to our stdin (a protobuf `Any`; none is fine).
fn read_options() -> Result<Options, String> {
    let mut buf = Vec::new();
    io::stdin()
        .take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("read runtime options from stdin: {e}"))?;
    options::decode_bytes(&buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_address_matches_containerds_rule() {
        // The value runc-v2 printed for this daemon address, namespace and id.
        assert_eq!(
            socket_address("/run/containerd/containerd.sock", "default", "t1"),
            "unix:///run/containerd/s/df6a0c5cd2e9a1a16d9a3f2447365d9fc6021bc1d3d9a4caa2f5b2c4f773758f"
        );
        assert_eq!(socket_path("unix:///x/y"), "/x/y");
    }
}
