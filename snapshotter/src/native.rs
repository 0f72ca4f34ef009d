//! The native snapshotter: plain directories and copies, for hosts without overlayfs.
//!
//! A snapshot directory *is* the snapshot's tree. Preparing on a parent copies the
//! parent's whole tree (modes, owners, times, symlinks, device nodes, fifos, extended
//! attributes such as file capabilities, and hard links within the tree). Mounts are bind
//! mounts of the snapshot's own directory: `rw,rbind` for actives, `ro,rbind` for views
//! (containerd's native snapshotter does the same). Usage is the whole tree's.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::Mount;
use crate::error::{Error, Result};
use crate::metadata::{Driver, Engine, Options, Resolved, delegate_snapshotter};
use crate::snapshotter::Kind;

/// The native (copying) snapshotter. See the [module docs](self).
pub struct NativeSnapshotter {
    engine: Engine<NativeDriver>,
}

pub(crate) struct NativeDriver;

impl NativeSnapshotter {
    /// Opens (creating if needed) a native snapshotter rooted at `root` and reconciles it
    /// with what a crash may have left.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, Options::default())
    }

    /// [`NativeSnapshotter::open`] with options.
    pub fn open_with(root: impl AsRef<Path>, opts: Options) -> Result<Self> {
        let root =
            std::path::absolute(root.as_ref()).map_err(Error::io("resolve", root.as_ref()))?;
        Ok(NativeSnapshotter {
            engine: Engine::open(&root, NativeDriver, &opts)?,
        })
    }
}

delegate_snapshotter!(NativeSnapshotter);

impl Driver for NativeDriver {
    fn populate(&self, dir: &Path, _kind: Kind, parent: Option<&Path>) -> Result<()> {
        match parent {
            Some(parent) => copy_tree(parent, dir),
            None => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(Error::io("chmod", dir)),
        }
    }

    fn sync(&self, dir: &Path) -> Result<()> {
        // One syncfs beats an fsync per copied file.
        let f = fs::File::open(dir).map_err(Error::io("open", dir))?;
        nix::unistd::syncfs(&f).map_err(|e| Error::io("syncfs", dir)(e.into()))
    }

    fn mounts(&self, s: &Resolved) -> Vec<Mount> {
        let ro = s.kind != Kind::Active;
        vec![Mount {
            kind: "bind".into(),
            source: s.dir.to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        }]
    }

    fn layer_dir(&self, dir: &Path) -> PathBuf {
        dir.to_path_buf()
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::io("encode", p)(io::Error::from(io::ErrorKind::InvalidInput)))
}

fn last_os_error(op: &'static str, p: &Path) -> Error {
    Error::io(op, p)(io::Error::last_os_error())
}

/// Copies the tree at `src` into the existing directory `dst` (whose own attributes become
/// `src`'s). Stays on `src`'s filesystem.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(Error::io("stat", src))?;
    let mut links = HashMap::new();
    copy_dir_contents(src, dst, md.dev(), &mut links)?;
    copy_attrs(src, dst, &md)
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    dev: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    for entry in fs::read_dir(src).map_err(Error::io("list", src))? {
        let entry = entry.map_err(Error::io("list", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let md = fs::symlink_metadata(&from).map_err(Error::io("stat", &from))?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, &to).map_err(Error::io("link", &to))?;
                continue;
            }
            links.insert((md.dev(), md.ino()), to.clone());
        }
        if ft.is_dir() {
            fs::create_dir(&to).map_err(Error::io("create", &to))?;
            if md.dev() == dev {
                copy_dir_contents(&from, &to, dev, links)?;
            }
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(Error::io("copy", &from))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(Error::io("readlink", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(Error::io("symlink", &to))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let c = cpath(&to)?;
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::mknod(c.as_ptr(), md.mode(), md.rdev() as libc::dev_t) } != 0 {
                return Err(last_os_error("mknod", &to));
            }
        } else {
            // Sockets belong to a running process; a copy would be meaningless.
            log::debug!("native snapshotter: not copying socket {}", from.display());
            continue;
        }
        copy_attrs(&from, &to, &md)?;
    }
    Ok(())
}

/// Owner, then mode (chown clears set-id bits), then xattrs (chown also clears file
/// capabilities), then times (last, since the others change ctime only but writes into a
/// directory change its mtime).
fn copy_attrs(from: &Path, to: &Path, md: &fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))
        .map_err(Error::io("chown", to))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(Error::io("chmod", to))?;
    }
    copy_xattrs(from, to)?;
    let c = cpath(to)?;
    let times = [
        libc::timespec {
            tv_sec: md.atime() as libc::time_t,
            tv_nsec: md.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: md.mtime() as libc::time_t,
            tv_nsec: md.mtime_nsec() as _,
        },
    ];
    // SAFETY: valid path and a two-element timespec array, as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(last_os_error("set times of", to));
    }
    Ok(())
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let cf = cpath(from)?;
    let ct = cpath(to)?;
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES)
        )
    };
    // SAFETY: size query with a null buffer.
    let n = unsafe { libc::llistxattr(cf.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if unsupported(&e) {
            Ok(())
        } else {
            Err(Error::io("list xattrs of", from)(e))
        };
    }
    if n == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: buffer of the reported size.
    let n = unsafe { libc::llistxattr(cf.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(last_os_error("list xattrs of", from));
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        // SAFETY: size query with a null buffer.
        let len = unsafe { libc::lgetxattr(cf.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue; // removed meanwhile
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: buffer of the reported size.
        let len = unsafe {
            libc::lgetxattr(
                cf.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            continue;
        }
        // SAFETY: valid path, name and value buffer.
        let rc = unsafe {
            libc::lsetxattr(
                ct.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                len as usize,
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if !unsupported(&e) {
                return Err(Error::io("set xattr on", to)(e));
            }
            log::debug!(
                "native snapshotter: xattr {} not copied to {}: {e}",
                String::from_utf8_lossy(name),
                to.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_preserves_modes_links_symlinks_times() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir(s.join("d")).unwrap();
        fs::write(s.join("d/f"), b"hello").unwrap();
        fs::set_permissions(s.join("d/f"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::hard_link(s.join("d/f"), s.join("h")).unwrap();
        std::os::unix::fs::symlink("d/f", s.join("l")).unwrap();
        let c = cpath(&s.join("fifo")).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
        fs::set_permissions(s.join("d"), fs::Permissions::from_mode(0o710)).unwrap();

        copy_tree(s, dst.path()).unwrap();
        let d = dst.path();
        assert_eq!(fs::read(d.join("d/f")).unwrap(), b"hello");
        let f = fs::metadata(d.join("d/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4751);
        assert_eq!(
            f.ino(),
            fs::metadata(d.join("h")).unwrap().ino(),
            "hard link kept"
        );
        assert_eq!(fs::read_link(d.join("l")).unwrap(), Path::new("d/f"));
        assert!(
            fs::symlink_metadata(d.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let sd = fs::metadata(s.join("d")).unwrap();
        let dd = fs::metadata(d.join("d")).unwrap();
        assert_eq!(dd.mode() & 0o7777, 0o710);
        assert_eq!((dd.mtime(), dd.mtime_nsec()), (sd.mtime(), sd.mtime_nsec()));
    }
}
