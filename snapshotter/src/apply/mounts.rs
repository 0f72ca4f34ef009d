//! Choosing where to apply (or diff) given a snapshot's mounts, mounting only when needed.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{ApplyError, Result};
use super::{Applied, WhiteoutMode, apply_layer};
use crate::Mount;

/// `upperdir` and `lowerdir`s (top first) of an overlay mount, if it is one.
pub fn overlay_dirs(m: &Mount) -> Option<(Option<PathBuf>, Vec<PathBuf>)> {
    if m.kind != "overlay" {
        return None;
    }
    let mut upper = None;
    let mut lowers = Vec::new();
    for o in &m.options {
        if let Some(v) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(v));
        } else if let Some(v) = o.strip_prefix("lowerdir=") {
            lowers = v
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
    }
    Some((upper, lowers))
}

pub(crate) fn is_bind(m: &Mount) -> bool {
    m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

fn is_readonly(m: &Mount) -> bool {
    m.options.iter().any(|o| o == "ro")
}

/// Applies a layer onto the filesystem that `mounts` describe (a snapshot's active mounts).
///
/// A single bind mount is applied into its source directory, a single overlay mount directly
/// into its `upperdir` (overlay whiteouts): neither mounts anything. Any other shape is mounted
/// on a private temporary directory (needs root), applied with deleting whiteouts and
/// unmounted again, also on failure.
///
/// Errors as [`apply_layer`], plus [`super::Code::InvalidArgument`] for read-only mounts
/// (a view cannot take a layer) and empty mount lists.
pub fn apply_to_mounts(
    mounts: &[Mount],
    reader: impl Read + Send,
    media_type: Option<&str>,
) -> Result<Applied> {
    let bad = |reason: String| ApplyError::BadMounts {
        op: "apply",
        reason,
    };
    if mounts.is_empty() {
        return Err(bad("no mounts given".into()));
    }
    if mounts.iter().any(is_readonly) {
        return Err(bad(
            "a mount is read-only (a view cannot take a layer)".into()
        ));
    }
    if let [m] = mounts {
        if is_bind(m) {
            return apply_layer(
                reader,
                media_type,
                Path::new(&m.source),
                WhiteoutMode::Delete,
            );
        }
        if let Some((upper, lowerdirs)) = overlay_dirs(m) {
            let upper = upper.ok_or_else(|| bad("overlay mount has no upperdir".into()))?;
            return apply_layer(
                reader,
                media_type,
                &upper,
                WhiteoutMode::Overlay { lowerdirs },
            );
        }
    }
    let mounted = MountedDir::mount(mounts, "apply")?;
    apply_layer(reader, media_type, mounted.path(), WhiteoutMode::Delete)
}

/// Mounts performed on a private temporary directory, unmounted and removed on drop.
pub(crate) struct MountedDir {
    dir: Option<tempfile::TempDir>,
    mounted: usize,
}

impl MountedDir {
    pub(crate) fn mount(mounts: &[Mount], op: &'static str) -> Result<MountedDir> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(ApplyError::NeedsRoot {
                what: "mounting",
                path: format!("{} mount(s) of kind {:?}", mounts.len(), mounts[0].kind),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("corral-mount-")
            .tempdir()
            .map_err(|e| ApplyError::io("create temp dir for", "mount", e))?;
        let mut me = MountedDir {
            dir: Some(dir),
            mounted: 0,
        };
        for m in mounts {
            mount_one(m, me.path(), op)?;
            me.mounted += 1;
        }
        Ok(me)
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Drop for MountedDir {
    fn drop(&mut self) {
        let Ok(c) = CString::new(self.path().as_os_str().as_bytes()) else {
            return;
        };
        for _ in 0..self.mounted {
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                let e = std::io::Error::last_os_error();
                log::warn!("unmount {}: {e}; detaching", self.path().display());
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if let Some(d) = self.dir.take() {
            // Only remove the directory once nothing is mounted on it any more.
            let _ = std::fs::remove_dir(d.path());
            std::mem::forget(d);
        }
    }
}

fn mount_one(m: &Mount, target: &Path, op: &'static str) -> Result<()> {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "suid" | "dev" | "exec" | "defaults" => {}
            other => data.push(other),
        }
    }
    let c = |s: &[u8]| {
        CString::new(s).map_err(|_| ApplyError::BadMounts {
            op,
            reason: format!("NUL byte in mount {m:?}"),
        })
    };
    let source = c(m.source.as_bytes())?;
    let tgt = c(target.as_os_str().as_bytes())?;
    let fstype = c(m.kind.as_bytes())?;
    let data = c(data.join(",").as_bytes())?;
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(ApplyError::io(
            "mount",
            format!("{} ({}) on {}", m.source, m.kind, target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
