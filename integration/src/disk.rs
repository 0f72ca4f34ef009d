//! A small disk for a test: a size-limited tmpfs on a private directory, and a filler file
//! that leaves exactly as much free space as the test wants.
//!
//! ```ignore
//! let disk = SmallDisk::mount(64 << 20);         // 64 MiB
//! let d = Corrald::start_on(&disk.path().join("root"));
//! disk.fill_leaving(2 << 20);                    // 2 MiB left: a bigger pull runs out
//! // … the pull fails with ResourceExhausted …
//! disk.release();                                // the filler goes: the pull succeeds
//! ```
//!
//! The filler is allocated with `fallocate(2)` (tmpfs charges the pages at once), so "free"
//! is what `statvfs` says, to the page. On drop the tmpfs is unmounted (lazily, so that a
//! daemon still holding a file there does not keep it) and the directory removed; declare the
//! disk before the daemon that lives on it, so that the daemon is dropped first.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct SmallDisk {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes on a new private directory. Needs root.
    pub fn mount(size: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("smalldisk-it-")
            .tempdir()
            .expect("cannot create a directory for the small disk");
        let path = dir.path().to_path_buf();
        let target = CString::new(path.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size},mode=0755")).unwrap();
        // SAFETY: mount(2) with valid C strings; the target is our own new directory.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "cannot mount a tmpfs on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        let filler = path.join("filler");
        SmallDisk {
            dir: Some(dir),
            path,
            filler,
        }
    }

    /// Where the disk is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Free bytes, as an unprivileged writer sees them.
    pub fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.path).expect("statvfs of the small disk");
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// Grows (or shrinks) the filler so that `bytes` stay free, to the page. Panics if more
    /// than that is free already and the filler is empty.
    pub fn fill_leaving(&self, bytes: u64) {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.filler)
            .expect("cannot open the filler");
        let held = f.metadata().expect("stat the filler").len();
        let free = self.free();
        let want = (held + free).checked_sub(bytes).unwrap_or_else(|| {
            panic!(
                "cannot leave {bytes} bytes free on {}: only {} are free without the filler",
                self.path.display(),
                held + free
            )
        });
        f.set_len(0).expect("cannot truncate the filler");
        if want > 0 {
            allocate(&f, want);
        }
        let now = self.free();
        assert!(
            now.abs_diff(bytes) < 64 << 10,
            "asked for {bytes} free bytes, {now} are free"
        );
    }

    /// Removes the filler: the disk has its space back.
    pub fn release(&self) {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", self.filler.display()),
        }
    }
}

fn allocate(f: &File, len: u64) {
    // SAFETY: fallocate(2) on a file we opened for writing.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    assert_eq!(
        rc,
        0,
        "cannot allocate {len} bytes for the filler: {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        crate::corrald::unmount_below(&self.path);
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
