//! Start-up pieces of corrald that guard its state: one daemon per root, a socket that only
//! root (and an optional group) can use, and a heartbeat that tells the next corrald when this
//! one was last alive.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Holds `<root>/corrald.lock` for the life of the daemon. A second corrald on the same root
/// fails here, with the first one's pid, instead of corrupting state.
pub fn lock_root(root: &Path) -> Result<File, String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("create root {}: {e}", root.display()))?;
    let path = root.join("corrald.lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(format!(
            "another corrald (pid {}) is using root {}; refusing to start",
            pid.trim(),
            root.display()
        ));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(f)
}

/// Binds the API socket, mode 0660, group `gid`. A socket file left by a dead daemon is
/// replaced; one that still answers belongs to a live daemon and is an error.
pub fn bind_socket(path: &Path, gid: u32) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is in use by another daemon; refusing to start",
                path.display()
            ));
        }
        fs::remove_file(path).map_err(|e| format!("remove stale {}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    Ok(l)
}

/// How often [`touch_alive`] runs while corrald runs.
pub const ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn alive_path(state: &Path) -> std::path::PathBuf {
    state.join("alive")
}

/// When the previous corrald on `state` was last alive (the heartbeat file's mtime, at most
/// [`ALIVE_INTERVAL`] early), if one ran there. A task exit after it happened while no corrald
/// could have passed it on.
pub fn last_alive(state: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(alive_path(state)).ok()?.modified().ok()
}

/// The heartbeat: sets the mtime of `<state>/alive` to now (an empty file; no data is written).
pub fn touch_alive(state: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(alive_path(state))?;
    f.set_modified(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_heartbeat_tells_when_corrald_was_last_alive() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last_alive(dir.path()), None, "no corrald ran here");
        let before = std::time::SystemTime::now();
        touch_alive(dir.path()).unwrap();
        let at = last_alive(dir.path()).unwrap();
        assert!(
            at >= before - std::time::Duration::from_millis(10),
            "{at:?}"
        );
    }

    #[test]
    fn second_daemon_on_a_root_is_refused_with_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_root(dir.path()).unwrap();
        let e = lock_root(dir.path()).unwrap_err();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        assert!(e.contains("refusing"), "{e}");
    }

    #[test]
    fn socket_is_0660_and_a_live_one_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/c.sock");
        let l = bind_socket(&p, 0).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660);
        let e = bind_socket(&p, 0).unwrap_err();
        assert!(e.contains("in use"), "{e}");
        drop(l);
        // Stale now: replaced.
        bind_socket(&p, 0).unwrap();
    }
}
