//! The `delete` action: clean up after a shim without talking to it.
//!
//! containerd runs it after every normal teardown and for shims it cannot reach. It must be
//! idempotent, finish within containerd's 5 s, and print only the encoded DeleteResponse.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protobuf::{Message, MessageField};
use protocol::shim::DeleteResponse;

use crate::flags::Flags;
use crate::service::{BUNDLE_RECORD, BundleRecord, DEFAULT_RUNC_ROOT};
use crate::{mount, start, util};

const RUNC_DEADLINE: Duration = Duration::from_secs(3);

pub fn delete(flags: &Flags) -> Result<Vec<u8>, String> {
    let bundle = start::bundle_dir(flags).map_err(|e| format!("bundle directory: {e}"))?;
    let BundleRecord {
        runc_binary: binary,
        runc_root: root,
        systemd_cgroup: systemd,
    } = runc_of(&bundle, &flags.namespace);
    let pid = util::read_pid_file(&bundle.join("init.pid")).unwrap_or(0);
    if root.join(&flags.id).exists() {
        force_delete(&binary, &root, systemd, &bundle, &flags.id);
    }
    if let Err(e) = mount::unmount_all(&bundle.join("rootfs")) {
        eprintln!("{e}");
    }
    // A shim that died inside Create can leave idmapped bind sources attached.
    if let Err(e) = crate::idmap::remove_binds_dir(&bundle.join(crate::idmap::BINDS_DIR)) {
        eprintln!("{e}");
    }
    remove_stale_socket(&bundle);
    let resp = DeleteResponse {
        pid,
        // As containerd's shim: whatever ran was killed.
        exit_status: 128 + 9,
        exited_at: MessageField::some(util::now()),
        ..Default::default()
    };
    resp.write_to_bytes().map_err(|e| e.to_string())
}

/// How the bundle's container was run: the record Create wrote before `runc create` (so a
/// container keeps the root it was created under, whatever today's default), else the
/// defaults (then runc never ran for this bundle and there is most likely nothing to delete).
fn runc_of(bundle: &Path, namespace: &str) -> BundleRecord {
    std::fs::read(bundle.join(BUNDLE_RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| BundleRecord {
            runc_binary: "runc".to_string(),
            runc_root: Path::new(DEFAULT_RUNC_ROOT).join(namespace),
            systemd_cgroup: false,
        })
}

/// A shim that died (kill -9) leaves its socket behind. Remove it unless a live server still
/// answers there (a shim serving other containers of the same group).
fn remove_stale_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = start::socket_path(address.trim());
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// `runc delete --force`, bounded in time; warnings go to stderr, which containerd logs.
fn force_delete(binary: &str, root: &Path, systemd: bool, bundle: &Path, id: &str) {
    let mut cmd = Command::new(binary);
    cmd.arg("--root").arg(root);
    cmd.arg("--log").arg(bundle.join("log.json"));
    cmd.args(["--log-format", "json"]);
    if systemd {
        cmd.arg("--systemd-cgroup");
    }
    cmd.args(["delete", "--force", id]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("run {binary}: {e}");
            return;
        }
    };
    let deadline = Instant::now() + RUNC_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    eprintln!("runc delete --force {id}: {status}");
                }
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                eprintln!("runc delete --force {id}: timed out");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_root_comes_from_the_record_else_our_default() {
        let dir = tempfile::tempdir().unwrap();
        let r = runc_of(dir.path(), "default");
        assert_eq!(r.runc_root, Path::new("/run/corral/runc/default"));
        assert_eq!(r.runc_binary, "runc");

        // A container created under another root (runc options, or an older shim's default)
        // is deleted there.
        let record = BundleRecord {
            runc_binary: "/opt/runc".into(),
            runc_root: "/run/containerd/runc/default".into(),
            systemd_cgroup: true,
        };
        std::fs::write(
            dir.path().join(BUNDLE_RECORD),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let r = runc_of(dir.path(), "default");
        assert_eq!(r.runc_root, Path::new("/run/containerd/runc/default"));
        assert_eq!(r.runc_binary, "/opt/runc");
        assert!(r.systemd_cgroup);
    }
}
