//! Mounts as data: what a snapshotter returns and whoever runs the container performs.
//!
//! Snapshotters only *describe* mounts. [`Mount::mount`] is the reference mounter (the
//! shim and the tests use it); it understands `mount(8)`-style options and containerd's
//! trick for long overlay `lowerdir` lists (see [`Mount::mount_data`]).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// One mount, in containerd's shape (`containerd.types.Mount` on the wire).
///
/// `kind` is the filesystem type (`bind`, `overlay`, ...), `source` the device or directory,
/// `target` is left empty by snapshotters (the caller decides where to mount), and `options`
/// are `mount(8)`-style options such as `ro`, `rbind`, `lowerdir=...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// Errors of the reference mounter.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("failed to mount {kind} {source_path:?} on {}: {errno} (data {data:?})", target.display())]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        data: String,
        #[source]
        errno: nix::errno::Errno,
    },
    #[error("failed to unmount {}: {errno}", target.display())]
    Unmount {
        target: PathBuf,
        #[source]
        errno: nix::errno::Errno,
    },
    #[error("mount data for {kind} on {} is {len} bytes, over the {limit}-byte page limit even with lowerdir compaction", target.display())]
    TooLong {
        kind: String,
        target: PathBuf,
        len: usize,
        limit: usize,
    },
}

impl MountError {
    pub fn code(&self) -> crate::Code {
        match self {
            MountError::TooLong { .. } => crate::Code::InvalidArgument,
            MountError::Mount { errno, .. } | MountError::Unmount { errno, .. } => match errno {
                nix::errno::Errno::ENOENT => crate::Code::NotFound,
                nix::errno::Errno::EINVAL => crate::Code::InvalidArgument,
                _ => crate::Code::Internal,
            },
        }
    }
}

/// Flags from mount(8) option words; `None` for words that go into the data string.
fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "defaults" => (false, MsFlags::empty()),
        "ro" => (false, MsFlags::MS_RDONLY),
        "rw" => (true, MsFlags::MS_RDONLY),
        "bind" => (false, MsFlags::MS_BIND),
        "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (false, MsFlags::MS_NOSUID),
        "suid" => (true, MsFlags::MS_NOSUID),
        "nodev" => (false, MsFlags::MS_NODEV),
        "dev" => (true, MsFlags::MS_NODEV),
        "noexec" => (false, MsFlags::MS_NOEXEC),
        "exec" => (true, MsFlags::MS_NOEXEC),
        "sync" => (false, MsFlags::MS_SYNCHRONOUS),
        "async" => (true, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (false, MsFlags::MS_DIRSYNC),
        "noatime" => (false, MsFlags::MS_NOATIME),
        "atime" => (true, MsFlags::MS_NOATIME),
        "nodiratime" => (false, MsFlags::MS_NODIRATIME),
        "diratime" => (true, MsFlags::MS_NODIRATIME),
        "relatime" => (false, MsFlags::MS_RELATIME),
        "norelatime" => (true, MsFlags::MS_RELATIME),
        "strictatime" => (false, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
        "remount" => (false, MsFlags::MS_REMOUNT),
        _ => return None,
    })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// Longest common directory (ending in `/`) of `paths`, all absolute.
fn common_dir(paths: &[&str]) -> Option<String> {
    let first = *paths.first()?;
    let mut len = first.len();
    for p in &paths[1..] {
        len = first
            .bytes()
            .zip(p.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let dir = &first[..=first[..len].rfind('/')?];
    (dir.len() > 1 && paths.iter().all(|p| p.len() > dir.len())).then(|| dir.to_string())
}

impl Mount {
    /// The flags and data string `mount(2)` gets, and the directory to mount from.
    ///
    /// The kernel copies at most one page of mount data (4096 bytes here, NUL included).
    /// A deep overlay chain does not fit: with containerd's usual root
    /// (`/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs`,
    /// ~80 bytes a layer) only ~50 layers do. Like containerd's mounter, when the data is too
    /// long we rewrite `lowerdir` relative to the layers' common directory and return that
    /// directory: the mount must then be made from it as the working directory
    /// ([`Mount::mount`] does so in a helper thread with a private cwd). Snapshotters keep
    /// their layer dirs short and numeric (`snapshots/123/fs`) so relative entries are ~8
    /// bytes: about 400 layers fit with five-digit ids (overlayfs itself stops at 500).
    pub fn mount_data(&self) -> (MsFlags, String, Option<PathBuf>) {
        let mut flags = MsFlags::empty();
        let mut data: Vec<String> = Vec::new();
        for opt in &self.options {
            match flag(opt) {
                Some((true, f)) => flags.remove(f),
                Some((false, f)) => flags.insert(f),
                None => data.push(opt.clone()),
            }
        }
        let joined = data.join(",");
        if joined.len() < page_size() {
            return (flags, joined, None);
        }
        let Some(i) = data.iter().position(|o| o.starts_with("lowerdir=")) else {
            return (flags, joined, None);
        };
        let dirs: Vec<&str> = data[i]["lowerdir=".len()..].split(':').collect();
        let Some(common) = common_dir(&dirs).filter(|_| dirs.len() > 1) else {
            return (flags, joined, None);
        };
        let rel: Vec<&str> = dirs.iter().map(|d| &d[common.len()..]).collect();
        data[i] = format!("lowerdir={}", rel.join(":"));
        (flags, data.join(","), Some(PathBuf::from(common)))
    }

    /// Performs this mount on `target` (which must exist). Bind mounts with `ro` are
    /// remounted read-only, since the kernel ignores `MS_RDONLY` on the initial bind.
    pub fn mount(&self, target: &Path) -> Result<(), MountError> {
        let (flags, data, chdir) = self.mount_data();
        let limit = page_size();
        if data.len() >= limit {
            return Err(MountError::TooLong {
                kind: self.kind.clone(),
                target: target.to_path_buf(),
                len: data.len(),
                limit,
            });
        }
        let err = |errno| MountError::Mount {
            kind: self.kind.clone(),
            source_path: self.source.clone(),
            target: target.to_path_buf(),
            data: data.clone(),
            errno,
        };
        let data_opt = (!data.is_empty()).then_some(data.as_str());
        let do_mount = || {
            nix::mount::mount(
                Some(self.source.as_str()),
                target,
                Some(self.kind.as_str()),
                flags,
                data_opt,
            )
        };
        match chdir {
            None => do_mount().map_err(err)?,
            Some(dir) => {
                // chdir is per process; a thread that unshares CLONE_FS gets its own cwd and
                // leaves everyone else's alone. The thread ends right after.
                let target = target.to_path_buf();
                let target = &target;
                std::thread::scope(|s| {
                    s.spawn(move || {
                        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                        nix::unistd::chdir(&dir)?;
                        nix::mount::mount(
                            Some(self.source.as_str()),
                            target,
                            Some(self.kind.as_str()),
                            flags,
                            data_opt,
                        )
                    })
                    .join()
                    .unwrap_or(Err(nix::errno::Errno::EINTR))
                })
                .map_err(err)?
            }
        }
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
            if let Err(e) =
                nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
            {
                let _ = unmount(target);
                return Err(err(e));
            }
        }
        Ok(())
    }
}

/// Performs `mounts` in order on `target`; on failure, undoes the ones already made.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = m.mount(target) {
            for _ in 0..i {
                let _ = unmount(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts the top mount on `target`.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    nix::mount::umount2(target, MntFlags::empty()).map_err(|errno| MountError::Unmount {
        target: target.to_path_buf(),
        errno,
    })
}

/// Unmounts `target` when dropped (`count` mounts stacked on it), lazily if it is busy.
#[must_use = "the mount is undone when the guard drops"]
pub struct MountGuard {
    target: PathBuf,
    count: usize,
}

impl MountGuard {
    /// Performs `mounts` on `target` and returns the guard that undoes them.
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard, MountError> {
        mount_all(mounts, target)?;
        Ok(MountGuard {
            target: target.to_path_buf(),
            count: mounts.len(),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..self.count {
            if let Err(e) = unmount(&self.target) {
                log::warn!("{e}; detaching lazily");
                let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_split() {
        let m = Mount {
            kind: "bind".into(),
            source: "/x".into(),
            target: String::new(),
            options: vec![
                "ro".into(),
                "rbind".into(),
                "nosuid".into(),
                "mode=755".into(),
            ],
        };
        let (flags, data, chdir) = m.mount_data();
        assert_eq!(
            flags,
            MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        );
        assert_eq!(data, "mode=755");
        assert!(chdir.is_none());
    }

    #[test]
    fn long_lowerdir_is_made_relative() {
        let root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let lower: Vec<String> = (1..=200).map(|i| format!("{root}/{i}/fs")).collect();
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={root}/201/work"),
                format!("upperdir={root}/201/fs"),
                format!("lowerdir={}", lower.join(":")),
            ],
        };
        let (_, data, chdir) = m.mount_data();
        assert_eq!(chdir.as_deref(), Some(Path::new(&format!("{root}/"))));
        assert!(data.len() < 4096, "{}", data.len());
        assert!(data.contains("lowerdir=1/fs:2/fs:"), "{data}");
        assert!(data.contains(&format!("upperdir={root}/201/fs")), "{data}");
        assert_eq!(common_dir(&["/a/b1", "/a/b2"]).as_deref(), Some("/a/"));
        assert_eq!(common_dir(&["/x/1", "/y/2"]), None);
    }
}
