//! Network namespaces that outlive their creator, pinned by a bind mount on a file
//! (`<root>/netns/<pod>`) as `ip netns add` and containerd's pkg/netns do, but in-process: a
//! throw-away thread unshares `CLONE_NEWNET` and bind-mounts its own `/proc/thread-self/ns/net`
//! onto the file, then exits. Only that thread ever changes namespace — never the caller's and
//! never a tokio worker, which would carry the namespace into every task it runs afterwards.
//! [`NetNs::run`] and [`enter_on_exec`] enter one the same way: a scoped thread that dies
//! afterwards, or a child between fork and exec.
//!
//! Mount propagation: nothing is changed on the parent directory, deliberately. Removal is
//! `umount2(MNT_DETACH)` then `unlink`: the unmount reaches every peer and slave copy through
//! propagation (when the parent is shared, as under systemd), and the unlink detaches any copy
//! left in other mount namespaces — e.g. one created by `unshare -m` with private propagation
//! while the pod lived — because the kernel (since 3.18) lazily unmounts whatever is mounted on
//! an unlinked dentry in every namespace. `tests/netns.rs` checks both cases. So neither
//! iproute2's "make /run/netns a shared bind mount of itself" nor a private one is needed for
//! clean removal, and forcing either would override an operator's choice (a root bind-mounted
//! rshared so that the host sees the pods' namespaces would stop working under a private one).
//! What is needed is that runc and the CNI plugins resolve the path in the mount namespace we
//! mounted in: corral-cri, corrald and its shims must share one (the host's).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// A network namespace bound to a file. Dropping it changes nothing: the namespace lives until
/// [`NetNs::remove`], across restarts of corral-cri.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates a new network namespace (only `lo`, down) bound to `path`, creating the parent
    /// directory. `path` must not exist (AlreadyExists otherwise: it may be a live pod's).
    /// Blocks for a thread spawn and a mount; fine from async code, or use `spawn_blocking`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| context(e, "create netns dir", dir))?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .map_err(|e| context(e, "create netns file", path))?;
        let target = path.to_path_buf();
        let made = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns-create".into())
                .spawn_scoped(s, move || -> io::Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                    Ok(())
                })
                .map(|h| h.join())
        });
        let made = match made {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            let _ = fs::remove_file(path);
            return Err(context(e, "create network namespace at", path));
        }
        Ok(NetNs {
            path: path.to_path_buf(),
        })
    }

    /// Pins the network namespace process `pid` is in at `path` (which must not exist), as
    /// [`NetNs::create`] pins a new one: for a pod in a user namespace, whose network
    /// namespace runc makes inside it (see `spec::userns`).
    pub fn pin(pid: u32, path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| context(e, "create netns dir", dir))?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .map_err(|e| context(e, "create netns file", path))?;
        let source = format!("/proc/{pid}/ns/net");
        if let Err(e) = nix::mount::mount(
            Some(source.as_str()),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = fs::remove_file(path);
            return Err(context(
                e.into(),
                &format!("pin the network namespace of process {pid} at"),
                path,
            ));
        }
        Ok(NetNs {
            path: path.to_path_buf(),
        })
    }

    /// A handle on an existing namespace file; fails unless `path` is a mounted namespace.
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        if !is_netns(path)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a mounted namespace", path.display()),
            ));
        }
        Ok(NetNs {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts (lazily: an open handle elsewhere must not make this fail) and deletes `path`.
    /// Idempotent: a missing file, or a file with nothing mounted on it (a crash between
    /// create's two steps), is fine.
    pub fn remove(path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        // Normally one mount; a loop also clears any stacked by hand.
        for _ in 0..16 {
            match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                // EINVAL: not a mount point (any more).
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(e) => return Err(context(e.into(), "unmount network namespace", path)),
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(context(e, "remove network namespace file", path)),
        }
    }

    /// Runs `f` on a thread that has entered this namespace and exits afterwards; a panic in
    /// `f` is resumed in the caller. Sockets `f` creates stay in the namespace wherever they
    /// are used later, so a listener made here serves inside the pod.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> io::Result<T> {
        run_in(&self.path, f)
    }

    /// [`NetNs::run`] for async callers: the caller's task awaits, no worker blocks.
    pub async fn run_async<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let file = open_ns(&self.path)?;
        let path = self.path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns-run".into())
            .spawn(move || {
                let out = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| context(e.into(), "enter network namespace", &path))
                    .map(|()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
                let _ = tx.send(out);
            })?;
        match rx.await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("netns thread vanished")),
        }
    }
}

/// Sets `lo` up in the calling thread's network namespace: what the CNI loopback plugin's ADD
/// does, without a process. Run it inside the namespace ([`run_in`]).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// [`NetNs::run`] by path.
pub fn run_in<T: Send, F: FnOnce() -> T + Send>(path: &Path, f: F) -> io::Result<T> {
    let file = open_ns(path)?;
    let joined = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns-run".into())
            .spawn_scoped(s, move || -> io::Result<T> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| context(e.into(), "enter network namespace", path))?;
                Ok(f())
            })
            .map(|h| h.join())
    })?;
    match joined {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Makes `cmd`'s child enter the namespace at `path` between fork and exec (`nsenter --net`).
/// The namespace file is opened now, so a bad path fails here rather than in the child.
/// For `tokio::process`, build a `std` command and convert it with `From`.
pub fn enter_on_exec(cmd: &mut std::process::Command, path: &Path) -> io::Result<()> {
    let file = open_ns(path)?;
    // SAFETY: the hook only calls setns(2), which is async-signal-safe, and converts its errno
    // without allocating.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
    }
    Ok(())
}

/// The files in `dir` (sorted), for start-up reconciliation: each is a pod's namespace, or a
/// leftover of a crash mid-create (see [`is_netns`]). A missing `dir` is an empty list.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(context(e, "list network namespaces in", dir)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| context(e, "list network namespaces in", dir))?;
        // file_type() is the directory entry's own type: an nsfs mount still reads as the
        // regular file underneath, so no stat of the namespace is needed.
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a namespace is mounted on `path` (nsfs), as opposed to the bare file.
pub fn is_netns(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| context(e.into(), "statfs", path))?;
    Ok(st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

fn open_ns(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| context(e, "open network namespace", path))
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
