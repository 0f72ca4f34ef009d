//! Bundles: the directory a shim runs a container from.
//!
//! ```text
//! <state>/io.containerd.runtime.v2.task/<ns>/<id>/    the bundle (0700; 0710 group remapped
//!                                                     root with a user namespace), shim's cwd
//! ├── config.json        the container's OCI spec (from the container record)
//! ├── rootfs/            the shim mounts the task's rootfs here
//! ├── work -> <root>/io.containerd.runtime.v2.task/<ns>/<id>   persistent work dir
//! ├── log                FIFO: the shim's log, read by corrald
//! ├── shim-binary-path   the resolved shim, written before `start` (used on restart)
//! ├── address            written by the shim's `start` (how corrald finds it again)
//! └── exit               written by corrald when the shim died: the task's last state
//! ```
//!
//! Everything here is blocking file-system work; callers run it off the async threads.
//!
//! Nothing here is synced to disk: the bundle is runtime state, under the state directory
//! (`/run/corral`, a tmpfs, by default), and must outlive a crash of corrald or of a shim,
//! which the page cache gives, not a power loss, after which no task is left for it to
//! describe. Files that are replaced are replaced by a rename, so a reader never sees a torn
//! one. Syncing cost milliseconds of every container start where the state sits on a disk.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metadata::Time;

pub const SHIM_BINARY_PATH: &str = "shim-binary-path";
pub const ADDRESS: &str = "address";
pub const EXIT: &str = "exit";
pub const LOG: &str = "log";

/// The exit of a task whose shim is gone, kept in the bundle until the task is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    pub at: Time,
}

/// Where a task's bundle and work dir live.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub namespace: String,
    pub id: String,
    pub path: PathBuf,
    pub work: PathBuf,
}

impl Bundle {
    pub fn new(state_dir: &Path, work_dir: &Path, namespace: &str, id: &str) -> Bundle {
        Bundle {
            namespace: namespace.to_string(),
            id: id.to_string(),
            path: state_dir.join(namespace).join(id),
            work: work_dir.join(namespace).join(id),
        }
    }

    /// Creates the bundle for a new task: dirs, `config.json`, the `log` FIFO and
    /// `shim-binary-path`. An existing directory is an error (AlreadyExists).
    ///
    /// With user-namespace gid mappings in the spec, the bundle is group-owned by the remapped
    /// root (the host gid mapped to container gid 0) and mode 0710, as containerd makes it:
    /// runc mounts `<bundle>/rootfs` from inside the user namespace, as that root, which must
    /// be able to reach it. A spec that is not JSON is an error (InvalidData).
    pub fn create(&self, spec: &[u8], shim: &Path) -> io::Result<()> {
        let remapped_gid = remapped_root_gid(spec)?;
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o711);
        b.create(self.path.parent().unwrap_or(&self.path))?;
        b.create(self.work.parent().unwrap_or(&self.work))?;
        fs::DirBuilder::new().mode(0o700).create(&self.path)?;
        let made = (|| {
            if let Some(gid) = remapped_gid {
                std::os::unix::fs::chown(&self.path, None, Some(gid))?;
                fs::set_permissions(&self.path, fs::Permissions::from_mode(0o710))?;
            }
            fs::DirBuilder::new()
                .mode(0o711)
                .create(self.path.join("rootfs"))?;
            match fs::DirBuilder::new().mode(0o711).create(&self.work) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            std::os::unix::fs::symlink(&self.work, self.path.join("work"))?;
            write_file(&self.path.join("config.json"), spec, 0o666)?;
            write_file(
                &self.path.join(SHIM_BINARY_PATH),
                shim.as_os_str().as_encoded_bytes(),
                0o600,
            )?;
            nix::unistd::mkfifo(
                &self.path.join(LOG),
                nix::sys::stat::Mode::from_bits_truncate(0o700),
            )
            .map_err(io::Error::from)
        })();
        if made.is_err() {
            let _ = self.remove();
        }
        made
    }

    pub fn shim_binary(&self) -> Option<PathBuf> {
        let s = fs::read(self.path.join(SHIM_BINARY_PATH)).ok()?;
        let s = String::from_utf8(s).ok()?;
        let s = s.trim();
        (!s.is_empty()).then(|| PathBuf::from(s))
    }

    pub fn address(&self) -> Option<String> {
        let s = fs::read_to_string(self.path.join(ADDRESS)).ok()?;
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    pub fn exit(&self) -> Option<Exit> {
        let b = fs::read(self.path.join(EXIT)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Records the exit of a task whose shim is gone, atomically.
    pub fn write_exit(&self, exit: &Exit) -> io::Result<()> {
        let data = serde_json::to_vec(exit).map_err(io::Error::other)?;
        let tmp = self.path.join(".exit");
        write_file(&tmp, &data, 0o600)?;
        fs::rename(&tmp, self.path.join(EXIT))
    }

    /// Removes the socket a killed shim left behind (`address`), unless something still
    /// answers there (a shim serving other tasks of its group).
    pub fn remove_stale_socket(&self) {
        let Some(address) = self.address() else {
            return;
        };
        let Some(path) = address.strip_prefix("unix://") else {
            return;
        };
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = fs::remove_file(path);
        }
    }

    /// Removes the container's cgroups (`linux.cgroupsPath` of `config.json`), killing what
    /// is still in them: a `runc create` cut short leaves them (and possibly a `runc init`
    /// waiting forever) behind, and runc's own delete then has no state to clean up from.
    /// Called only when the task is being removed.
    pub fn remove_cgroups(&self) {
        let Ok(spec) = fs::read(self.path.join("config.json")) else {
            return;
        };
        let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&spec) else {
            return;
        };
        let Some(path) = spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .filter(|p| p.starts_with('/') && !p.contains(':') && !p.contains(".."))
        else {
            return;
        };
        let root = Path::new("/sys/fs/cgroup");
        let rel = path.trim_start_matches('/');
        // Only a cgroup named after the task is the task's own (ctr: /<ns>/<id>; CRI ends
        // in the container id); anything else may be shared and is left alone.
        if Path::new(rel).file_name().and_then(|n| n.to_str()) != Some(self.id.as_str()) {
            return;
        }
        let mut dirs = vec![root.join(rel)];
        if let Ok(entries) = fs::read_dir(root) {
            dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
        }
        for d in dirs.into_iter().filter(|d| d.is_dir()) {
            for _ in 0..50 {
                if fs::remove_dir(&d).is_ok() {
                    break;
                }
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) of a process inside this task's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Unmounts whatever is still mounted under `rootfs` (the shim normally did).
    pub fn unmount_rootfs(&self) {
        unmount_below(&self.path.join("rootfs"));
    }

    /// Removes the bundle and the work dir: unmount, rename to `.<id>`, remove. Missing is fine.
    pub fn remove(&self) -> io::Result<()> {
        self.unmount_rootfs();
        for dir in [&self.path, &self.work] {
            let hidden = dir.with_file_name(format!(".{}", self.id));
            match fs::rename(dir, &hidden) {
                Ok(()) => fs::remove_dir_all(&hidden)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A removal interrupted after the rename.
                    match fs::remove_dir_all(&hidden) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Every bundle under `state_dir`: `(namespace, id)`; names starting with `.` are removals that
/// were interrupted and are finished here.
pub fn scan(state_dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Ok(namespaces) = fs::read_dir(state_dir) else {
        return found;
    };
    for ns in namespaces.flatten() {
        if !ns.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        if ns_name.starts_with('.') {
            continue;
        }
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let name = id.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                unmount_below(&id.path());
                let _ = fs::remove_dir_all(id.path());
                continue;
            }
            if id.file_type().is_ok_and(|t| t.is_dir()) {
                found.push((ns_name.clone(), name));
            }
        }
    }
    found
}

/// Work dirs under `work_dir` whose bundle is gone (after a reboot wiped the state dir).
pub fn remove_stale_work_dirs(work_dir: &Path, live: &std::collections::HashSet<(String, String)>) {
    let Ok(namespaces) = fs::read_dir(work_dir) else {
        return;
    };
    for ns in namespaces.flatten() {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let name = id.file_name().to_string_lossy().into_owned();
            if !live.contains(&(ns_name.clone(), name)) {
                let _ = fs::remove_dir_all(id.path());
            }
        }
    }
}

/// The host gid that container gid 0 maps to, if the spec has gid mappings that map it (and
/// it is not 0).
fn remapped_root_gid(spec: &[u8]) -> io::Result<Option<u32>> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Spec {
        linux: Option<Linux>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Linux {
        gid_mappings: Option<Vec<IdMapping>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct IdMapping {
        #[serde(rename = "containerID")]
        container_id: u32,
        #[serde(rename = "hostID")]
        host_id: u32,
    }
    let spec: Spec = serde_json::from_slice(spec).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the container's spec is not a valid OCI spec: {e}"),
        )
    })?;
    Ok(spec
        .linux
        .and_then(|l| l.gid_mappings)
        .unwrap_or_default()
        .iter()
        .find(|m| m.container_id == 0)
        .map(|m| m.host_id)
        .filter(|&gid| gid != 0))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("unmount {}: {e}", p.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_scan_exit_remove() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let work = dir.path().join("work");
        let b = Bundle::new(&state, &work, "ns1", "c1");
        b.create(b"{}", Path::new("/usr/bin/shim")).unwrap();
        assert_eq!(fs::read(b.path.join("config.json")).unwrap(), b"{}");
        assert_eq!(b.shim_binary().unwrap(), PathBuf::from("/usr/bin/shim"));
        assert!(b.address().is_none());
        assert!(b.work.is_dir());
        assert_eq!(scan(&state), vec![("ns1".to_string(), "c1".to_string())]);
        // A second create of the same bundle fails and leaves the first intact.
        assert_eq!(
            b.create(b"{}", Path::new("/x")).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(b.path.join("config.json").is_file());

        let exit = Exit {
            pid: 7,
            status: 137,
            at: Time::now(),
        };
        b.write_exit(&exit).unwrap();
        assert_eq!(b.exit(), Some(exit));

        b.remove().unwrap();
        assert!(!b.path.exists() && !b.work.exists());
        assert!(scan(&state).is_empty());
        b.remove().unwrap();
    }

    #[test]
    fn user_namespace_bundles_are_reachable_by_the_remapped_root() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let b = Bundle::new(
            &dir.path().join("s"),
            &dir.path().join("w"),
            "ns1",
            "userns",
        );
        let spec =
            br#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 1, "hostID": 300000, "size": 10},
                            {"containerID": 0, "hostID": 200000, "size": 1}]}}"#;
        b.create(spec, Path::new("/x")).unwrap();
        let m = fs::metadata(&b.path).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o710);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(m.gid(), 200000, "the gid container gid 0 maps to");
        }

        // Without mappings (or with container gid 0 unmapped) the bundle stays 0700.
        let plain = Bundle::new(&dir.path().join("s"), &dir.path().join("w"), "ns1", "plain");
        plain
            .create(
                br#"{"linux": {"gidMappings": [{"containerID": 5, "hostID": 9, "size": 1}]}}"#,
                Path::new("/x"),
            )
            .unwrap();
        let m = fs::metadata(&plain.path).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert_eq!(m.gid(), nix::unistd::getegid().as_raw());

        let bad = Bundle::new(&dir.path().join("s"), &dir.path().join("w"), "ns1", "bad");
        let e = bad.create(b"not json", Path::new("/x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(!bad.path.exists(), "nothing is left of a refused bundle");
    }

    #[test]
    fn interrupted_removals_are_finished_by_scan() {
        let dir = tempfile::tempdir().unwrap();
        let hidden = dir.path().join("ns1").join(".c1");
        fs::create_dir_all(hidden.join("rootfs")).unwrap();
        assert!(scan(dir.path()).is_empty());
        assert!(!hidden.exists());
    }
}
