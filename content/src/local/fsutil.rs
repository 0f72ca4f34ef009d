//! Small filesystem helpers with the crash-safety orderings the store relies on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` so that another process (or this one after a crash of the process)
/// sees either the old file or the new one, never a torn one: temp file in the same directory,
/// rename over. Nothing is synced, so after a power loss the file may be missing, empty or torn:
/// only for files whose reader treats that as damage it can recover from (ingest metadata).
pub fn replace(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("replace target has a parent");
    let name = path
        .file_name()
        .expect("replace target has a name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes an exclusive flock without waiting. Ok(false) if someone else holds it. The kernel drops
/// the lock when the holder's file description closes, so a crashed process never leaves it held.
pub fn try_lock_exclusive(f: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid, owned descriptor; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`), atomically: two commits of the
/// same digest cannot both "win", and a committed blob is never replaced.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cfrom = CString::new(from.as_os_str().as_bytes())?;
    let cto = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // Filesystem without RENAME_NOREPLACE: link() is also create-if-absent. A crash between link and
    // unlink leaves the ingest's data hard-linked to the blob; resume checks st_nlink for that.
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}
