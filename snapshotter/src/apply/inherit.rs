//! Directories a layer creates without listing them: for an entry `a/b/f` whose layer has no
//! `a/` or `a/b/` entry, the extractor makes those directories itself. In an overlay upper dir
//! such a directory hides nothing (it is merged with the lower ones), but its own mode, owner
//! and mtime are what the merged view shows, so it takes them from the highest lower layer
//! that has the directory (containerd's `WithParents`). Without one it stays 0755, owned by us.
//!
//! The sequential apply does this while extracting (the lower layers are there); a staged
//! layer (see [`crate::staging`]) records the directories and gets the attributes when it is
//! adopted onto its parent, with [`inherit`].

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{ApplyError, Result};
use super::fsutil::{self, AsFdRef};

/// The attributes a directory inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Template {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime: (i64, u32),
}

/// The attributes of directory `rel` in the highest of `lowerdirs` (top first) where it is a
/// directory. Each lower is searched without following symlinks: a symlink a layer planted
/// must not lend the attributes of a host directory.
pub(crate) fn template(lowerdirs: &[PathBuf], rel: &[u8]) -> Option<Template> {
    lowerdirs.iter().find_map(|lower| {
        let root = fsutil::open_dir_path(lower).ok()?;
        let fd = fsutil::open_dir_rel(root.as_fd_ref(), rel).ok()??;
        let st = fsutil::fstat(fd.as_fd_ref()).ok()?;
        Some(Template {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        })
    })
}

/// Gives the open directory `fd` (at `rel`) the owner and mode of `t`; the mtime is the
/// caller's to set, after the directory's children are in. A non-root caller cannot chown:
/// that is skipped, as for the layer's own entries.
pub(crate) fn apply_owner_mode(fd: &OwnedFd, rel: &[u8], t: &Template) -> Result<()> {
    let is_root = unsafe { libc::geteuid() } == 0;
    match fsutil::fchown(fd.as_fd_ref(), t.uid, t.gid) {
        Err(e) if !is_root && e.raw_os_error() == Some(libc::EPERM) => {}
        r => r.map_err(|e| ApplyError::io("chown", rel, e))?,
    }
    fsutil::fchmod(fd.as_fd_ref(), t.mode).map_err(|e| ApplyError::io("chmod", rel, e))
}

/// Gives each directory of `implicit` (paths relative to `upper`) the attributes of the same
/// directory in the highest of `lowerdirs` (top first) that has it. Directories without one,
/// and paths that are no longer directories (the layer replaced them), are left alone.
/// Nothing is resolved through a symlink, in `upper` or in the lowers.
pub fn inherit(upper: &Path, lowerdirs: &[PathBuf], implicit: &[Vec<u8>]) -> Result<()> {
    if lowerdirs.is_empty() || implicit.is_empty() {
        return Ok(());
    }
    let root = fsutil::open_dir_path(upper)
        .map_err(|e| ApplyError::io("open", upper.as_os_str().as_bytes(), e))?;
    for rel in implicit {
        let Some(t) = template(lowerdirs, rel) else {
            continue;
        };
        let fd = match fsutil::open_dir_rel(root.as_fd_ref(), rel) {
            Ok(Some(fd)) => fd,
            Ok(None) => continue,
            Err(e) => return Err(ApplyError::io("open directory", rel, e)),
        };
        apply_owner_mode(&fd, rel, &t)?;
        // Setting a directory's own times does not touch its parent's mtime, so the order
        // among the implicit directories does not matter.
        fsutil::futimens(fd.as_fd_ref(), t.mtime, t.mtime)
            .map_err(|e| ApplyError::io("set times", rel, e))?;
    }
    Ok(())
}
