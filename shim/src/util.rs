//! Small helpers shared by the shim's modules: atomic writes, timestamps, id validation.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::well_known_types::timestamp::Timestamp;

/// Writes `data` to `path` atomically: a temp file beside it, then a rename. A crash of any
/// process leaves either the old content or the new, never a torn file.
///
/// No fsync: the shim writes only into its bundle, under the daemon's state directory (`/run`,
/// a tmpfs, on a normal host). Those files must outlive a crash of the shim or the daemon, which
/// the page cache and the rename give, not a power loss, after which no container is left for
/// them to describe. Syncing them cost milliseconds of every container start where the state
/// directory sits on a disk.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Go's zero `time.Time` as a protobuf Timestamp. containerd sends it for "has not exited"
/// and clients compare against it, so an unset exit time must be exactly this.
pub fn zero_time() -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = -62135596800;
    t
}

/// The current time as a protobuf Timestamp.
pub fn now() -> Timestamp {
    to_timestamp(SystemTime::now())
}

pub fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// containerd's identifier rule: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters.
pub fn valid_identifier(s: &str) -> bool {
    if s.is_empty() || s.len() > 76 {
        return false;
    }
    let mut prev_sep = true;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(c, '.' | '_' | '-') {
            if prev_sep {
                return false;
            }
            prev_sep = true;
        } else {
            return false;
        }
    }
    !prev_sep
}

/// Reads a pid file written by runc; it may be written without a newline.
pub fn read_pid_file(path: &Path) -> io::Result<u32> {
    let s = fs::read_to_string(path)?;
    s.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "pid file {} holds {:?}, not a pid",
                path.display(),
                s.trim()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "t1", "a.b-c_d", "A9"] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "../x",
            "a b",
            &"x".repeat(77),
        ] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("address");
        atomic_write(&p, b"first-longer-content", 0o644).unwrap();
        atomic_write(&p, b"second", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
    }

    #[test]
    fn zero_time_is_gos() {
        assert_eq!(zero_time().seconds, -62135596800);
        assert_eq!(zero_time().nanos, 0);
    }
}
