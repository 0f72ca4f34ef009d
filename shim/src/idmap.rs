//! Idmapped mounts, made by the shim because runc 1.1.5 cannot (`runc features` lists no
//! `idmap`): the layers of a container's root filesystem when the container has a user
//! namespace (`mount::mount_all`), and bind mounts whose spec entry carries
//! `uidMappings`/`gidMappings` (`binds`).
//!
//! An idmapped mount shows each file's on-disk owner through a user namespace's mapping: with
//! `0 1000 65536`, a file owned by uid 0 on disk appears owned by 1000, the container's root
//! as the host sees it, and what that root creates lands on disk as uid 0. So an image's
//! layers serve every pod unchanged, whatever its mapping.
//!
//! ```text
//!  layer dir ──open_tree(CLONE)──▶ detached mount ──mount_setattr(IDMAP, userns fd)──▶
//!     idmapped detached mount, named /proc/self/fd/<n> ──▶ overlay lowerdir/upperdir
//!  close(fd): the kernel unmounts the detached copy; overlayfs keeps its own private clones
//! ```
//!
//! Nothing here is attached to the file system unless asked ([`Detached::attach`]), so a
//! failure or a crash midway leaves no mount behind: dropping a [`Detached`] undoes it.
//!
//! The user namespace that carries a mapping is the container's own when the spec names it by
//! path (CRI containers join their pod's, `/proc/<pause>/ns/user`); otherwise a throwaway one:
//! a forked child unshares a user namespace, the shim writes the mapping into it, opens
//! `/proc/<child>/ns/user` and lets the child exit ([`Userns::with_mappings`]). The fd keeps
//! the namespace alive as long as needed.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::reaper::Reaper;

/// One line of a uid or gid map, as the OCI spec writes it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub struct IdMapping {
    #[serde(rename = "containerID", default)]
    pub container_id: u32,
    #[serde(rename = "hostID", default)]
    pub host_id: u32,
    #[serde(default)]
    pub size: u32,
}

/// A user namespace's uid and gid maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mappings {
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

impl Mappings {
    pub fn is_empty(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    /// The host uid and gid of the namespace's root, if both maps map id 0.
    pub fn host_root(&self) -> Option<(u32, u32)> {
        let host = |list: &[IdMapping]| {
            list.iter()
                .find(|m| m.container_id == 0 && m.size > 0)
                .map(|m| m.host_id)
        };
        Some((host(&self.uids)?, host(&self.gids)?))
    }

    /// Whether a file owned by `uid`:`gid` already belongs to the ids these maps give the
    /// container (a snapshot chowned into the range, as `ctr run --uidmap` makes one): then
    /// idmapping it would shift it a second time.
    pub fn owns(&self, uid: u32, gid: u32) -> bool {
        let inside = |list: &[IdMapping], id: u32| {
            list.iter().any(|m| {
                id >= m.host_id && u64::from(id) < u64::from(m.host_id) + u64::from(m.size)
            })
        };
        inside(&self.uids, uid) && inside(&self.gids, gid)
    }

    /// The `/proc/<pid>/uid_map` format: one `inside outside length` line per mapping.
    fn map_file(list: &[IdMapping]) -> String {
        list.iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect()
    }
}

/// A user namespace, held by an fd.
#[derive(Debug)]
pub struct Userns(OwnedFd);

impl Userns {
    /// The user namespace at `path` (`/proc/<pid>/ns/user`, or a bind mount of one).
    pub fn open(path: &Path) -> io::Result<Userns> {
        let f = File::open(path).map_err(|e| annotate(e, "open user namespace", path))?;
        Ok(Userns(f.into()))
    }

    /// A new user namespace carrying `m`, owned by nothing but the returned fd. A child
    /// forked for the purpose unshares it and waits; the shim writes the maps (as root in the
    /// parent namespace, so any host range may be mapped and setgroups stays allowed), opens
    /// the namespace and releases the child, which the reaper collects.
    pub fn with_mappings(reaper: &Reaper, m: &Mappings) -> io::Result<Userns> {
        if m.uids.is_empty() || m.gids.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a user namespace for an idmapped mount needs uid and gid mappings",
            ));
        }
        let (ready_r, ready_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let (pid, _exit) = reaper.spawn_with(|| {
            // SAFETY: the child runs only async-signal-safe calls (unshare, write, read,
            // _exit) on memory prepared before the fork, and never returns.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                0 => unsafe { holder_child(ready_w.as_raw_fd(), go_r.as_raw_fd()) },
                pid => Ok(pid as u32),
            }
        })?;
        drop(ready_w);
        drop(go_r);
        // From here on, dropping `go_w` (on any return) lets the child exit.
        let mut errno = [0u8; 4];
        let mut ready = File::from(ready_r);
        io::Read::read_exact(&mut ready, &mut errno)
            .map_err(|e| io::Error::other(format!("user namespace helper {pid}: {e}")))?;
        let errno = i32::from_ne_bytes(errno);
        if errno != 0 {
            return Err(io::Error::other(format!(
                "user namespace helper {pid}: unshare(CLONE_NEWUSER): {}",
                io::Error::from_raw_os_error(errno)
            )));
        }
        let proc = PathBuf::from(format!("/proc/{pid}"));
        for (file, list) in [("uid_map", &m.uids), ("gid_map", &m.gids)] {
            let path = proc.join(file);
            std::fs::write(&path, Mappings::map_file(list))
                .map_err(|e| annotate(e, "write", &path))?;
        }
        let ns = Userns::open(&proc.join("ns/user"))?;
        drop(go_w);
        Ok(ns)
    }
}

/// The forked helper: close every fd but the two pipes, unshare a user namespace, report the
/// errno (0: done) on `ready`, wait until `go` is closed (by the shim, or by its death), exit.
///
/// # Safety
/// Only for the child of a fork: it touches no lock and allocates nothing.
unsafe fn holder_child(ready: i32, go: i32) -> ! {
    unsafe {
        // Every other fd goes: above all the write end of `go` (which would keep the read
        // below from ever seeing EOF), and those of any helper forked beside this one.
        let (low, high) = (ready.min(go) as u32, ready.max(go) as u32);
        let ranges = [
            (0, low.checked_sub(1)),
            (low + 1, high.checked_sub(1)),
            (high + 1, Some(u32::MAX)),
        ];
        for (first, last) in ranges {
            if let Some(last) = last
                && first <= last
            {
                libc::syscall(libc::SYS_close_range, first, last, 0u32);
            }
        }
        let errno: i32 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        let bytes = errno.to_ne_bytes();
        libc::write(ready, bytes.as_ptr().cast(), bytes.len());
        let mut b = 0u8;
        while libc::read(go, (&mut b as *mut u8).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        libc::_exit(0)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// A mount made with `open_tree(OPEN_TREE_CLONE)`: a copy of a directory's mount that is
/// attached nowhere. Dropping it unmounts it (the kernel dissolves a detached tree when its
/// last fd closes); [`Detached::attach`] puts it somewhere instead.
#[derive(Debug)]
pub struct Detached {
    fd: OwnedFd,
    /// What it is a copy of, for errors.
    source: PathBuf,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl Detached {
    /// A detached copy of the mount at `path` (with the mounts below it when `recursive`).
    pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<Detached> {
        let c = cpath(path)?;
        let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        // SAFETY: a plain syscall on a NUL-terminated path; the fd it returns is ours.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                flags as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(annotate(
                io::Error::last_os_error(),
                "open_tree(OPEN_TREE_CLONE)",
                path,
            ));
        }
        Ok(Detached {
            // SAFETY: open_tree returned a new fd nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            source: path.to_path_buf(),
        })
    }

    /// Idmaps it through `userns` (all of its tree when `recursive`); also read-only when
    /// `readonly`.
    pub fn idmap(&self, userns: &Userns, recursive: bool, readonly: bool) -> io::Result<()> {
        let mut attr = MountAttr {
            attr_set: libc::MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.0.as_raw_fd() as u64,
        };
        if readonly {
            attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
        }
        let mut flags = libc::AT_EMPTY_PATH;
        if recursive {
            flags |= libc::AT_RECURSIVE;
        }
        let empty = c"";
        // SAFETY: the attr struct outlives the call and its size is passed along.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                flags as libc::c_uint,
                &mut attr as *mut MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            let why = if e.raw_os_error() == Some(libc::EINVAL) {
                " (its file system may not support idmapped mounts)"
            } else {
                ""
            };
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "idmap a mount of {}: mount_setattr(MOUNT_ATTR_IDMAP): {e}{why}",
                    self.source.display()
                ),
            ));
        }
        Ok(())
    }

    /// A path that resolves to the root of this mount while it is open (for mount data such
    /// as overlayfs' `lowerdir=`).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Attaches it on `target` (`move_mount`). From then on it is an ordinary mount that
    /// stays until unmounted.
    pub fn attach(self, target: &Path) -> io::Result<()> {
        let c = cpath(target)?;
        let empty = c"";
        // SAFETY: a plain syscall on our fd and NUL-terminated paths.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(annotate(
                io::Error::last_os_error(),
                &format!("attach the idmapped mount of {} on", self.source.display()),
                target,
            ));
        }
        Ok(())
    }
}

/// The user namespaces a container's idmapped mounts need, one per distinct mapping: the
/// container's own first (by path, or made for its mappings), others made when asked for.
pub struct UsernsSet<'r> {
    reaper: &'r Reaper,
    known: Vec<(Mappings, Userns)>,
}

impl<'r> UsernsSet<'r> {
    pub fn new(reaper: &'r Reaper) -> UsernsSet<'r> {
        UsernsSet {
            reaper,
            known: Vec::new(),
        }
    }

    /// Records `ns` as the namespace carrying `m`.
    pub fn insert(&mut self, m: Mappings, ns: Userns) {
        self.known.push((m, ns));
    }

    /// A namespace carrying `m`: a known one, or a new one.
    pub fn get(&mut self, m: &Mappings) -> io::Result<&Userns> {
        let i = match self.known.iter().position(|(k, _)| k == m) {
            Some(i) => i,
            None => {
                let ns = Userns::with_mappings(self.reaper, m)?;
                self.known.push((m.clone(), ns));
                self.known.len() - 1
            }
        };
        Ok(&self.known[i].1)
    }
}

/// Where a bundle's idmapped bind sources are attached.
pub const BINDS_DIR: &str = "idmapped";

/// The bind mounts of a bundle's `config.json` that ask for an idmapping (`uidMappings` and
/// `gidMappings` on the mount, OCI runtime-spec 1.1; kubelet asks for them on every volume of
/// a pod with a user namespace). runc 1.1.5 ignores those fields, so the shim idmaps each
/// source itself and attaches it at `<bundle>/idmapped/<n>`, and config.json binds from there
/// instead (without the fields, so a runc that knows them does not idmap twice). runc's bind
/// of an idmapped mount is idmapped too. Once `runc create` has made the container's copies,
/// the attached sources are detached: dropping this does it, on every path.
#[derive(Debug)]
pub struct IdmappedBinds {
    dir: PathBuf,
    attached: Vec<PathBuf>,
}

impl IdmappedBinds {
    /// Idmaps and attaches the sources and rewrites `<bundle>/config.json`. Nothing to do
    /// (no mount with mappings) leaves the bundle untouched.
    pub fn prepare(bundle: &Path, namespaces: &mut UsernsSet) -> io::Result<IdmappedBinds> {
        let mut binds = IdmappedBinds {
            dir: bundle.join(BINDS_DIR),
            attached: Vec::new(),
        };
        let config = bundle.join("config.json");
        let data = std::fs::read(&config).map_err(|e| annotate(e, "read", &config))?;
        let mut spec: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("parse {}: {e}", config.display()),
            )
        })?;
        let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
            return Ok(binds);
        };
        let mut changed = false;
        for (i, m) in mounts.iter_mut().enumerate() {
            let Some(mappings) = mount_mappings(m)? else {
                continue;
            };
            let dest = m["destination"].as_str().unwrap_or_default().to_string();
            let at = |e: io::Error| io::Error::new(e.kind(), format!("mount at {dest}: {e}"));
            let options: Vec<&str> = m["options"]
                .as_array()
                .map(|a| a.iter().filter_map(|o| o.as_str()).collect())
                .unwrap_or_default();
            let recursive = options.contains(&"rbind");
            if !(m["type"] == "bind" || recursive || options.contains(&"bind")) {
                return Err(at(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "only bind mounts can be idmapped here (uidMappings on another type)",
                )));
            }
            let source = PathBuf::from(m["source"].as_str().unwrap_or_default());
            let ns = namespaces.get(&mappings).map_err(at)?;
            let tree = Detached::clone_tree(&source, recursive).map_err(at)?;
            tree.idmap(ns, recursive, false).map_err(at)?;
            let target = binds.mount_point(i, &source).map_err(at)?;
            tree.attach(&target).map_err(at)?;
            m["source"] = serde_json::Value::from(target.to_string_lossy().into_owned());
            if let Some(o) = m.as_object_mut() {
                o.remove("uidMappings");
                o.remove("gidMappings");
            }
            changed = true;
        }
        if changed {
            log::info!(
                "{}: {} idmapped bind sources attached",
                bundle.display(),
                binds.attached.len()
            );
            let data = serde_json::to_vec(&spec).map_err(io::Error::other)?;
            crate::util::atomic_write(&config, &data, 0o600)
                .map_err(|e| annotate(e, "write", &config))?;
        }
        Ok(binds)
    }

    /// An empty file or directory (as `source` is) at `<dir>/<i>` to attach on; remembered
    /// before anything is attached, so that a failure still removes it.
    fn mount_point(&mut self, i: usize, source: &Path) -> io::Result<PathBuf> {
        let meta = std::fs::metadata(source).map_err(|e| annotate(e, "stat", source))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| annotate(e, "create", &self.dir))?;
        let target = self.dir.join(i.to_string());
        if meta.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        }
        .map_err(|e| annotate(e, "create", &target))?;
        self.attached.push(target.clone());
        Ok(target)
    }
}

impl Drop for IdmappedBinds {
    fn drop(&mut self) {
        if self.attached.is_empty() {
            return;
        }
        if let Err(e) = remove_binds_dir(&self.dir) {
            log::warn!("{e}");
        }
    }
}

/// Detaches whatever is attached in a bundle's idmapped-binds directory and removes it; a
/// missing one is fine (also the `delete` action's cleanup after a crashed shim).
pub fn remove_binds_dir(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "list", dir)),
    };
    for entry in entries.flatten() {
        let p = entry.path();
        // MNT_DETACH: the container holds its own copy; ours goes even if something is busy.
        loop {
            match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
                Err(e) => return Err(annotate(e.into(), "unmount", &p)),
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(annotate(e, "remove", dir)),
        _ => Ok(()),
    }
}

/// A spec mount's `uidMappings`/`gidMappings`, None without; both or neither.
fn mount_mappings(m: &serde_json::Value) -> io::Result<Option<Mappings>> {
    let list = |key: &str| -> io::Result<Vec<IdMapping>> {
        match m.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("mount at {}: {key}: {e}", m["destination"]),
                )
            }),
        }
    };
    let mappings = Mappings {
        uids: list("uidMappings")?,
        gids: list("gidMappings")?,
    };
    if mappings.is_empty() {
        return Ok(None);
    }
    if mappings.uids.is_empty() || mappings.gids.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "mount at {}: uidMappings and gidMappings go together",
                m["destination"]
            ),
        ));
    }
    Ok(Some(mappings))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", p.display()),
        )
    })
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    use protocol::mount::Mount;

    use super::*;
    use crate::mount::{Idmap, mount_all, unmount_all};

    /// Root, or skip; with CORRAL_REQUIRE_ROOT=1 not being root fails.
    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CORRAL_REQUIRE_ROOT").as_deref() != Ok("1"),
            "this test needs root and CORRAL_REQUIRE_ROOT=1 is set"
        );
        eprintln!("note: skipping, this test needs root");
        false
    }

    const HOST_ROOT: u32 = 100_000;

    fn mapping() -> Mappings {
        let m = vec![IdMapping {
            container_id: 0,
            host_id: HOST_ROOT,
            size: 65536,
        }];
        Mappings {
            uids: m.clone(),
            gids: m,
        }
    }

    /// A user namespace for `mapping()`, and its helper process gone (reaped here: no reaper
    /// runs in a unit test, and the helper was forked by this thread).
    fn userns() -> Userns {
        let (reaper, _monitor) = Reaper::new();
        let ns = Userns::with_mappings(&reaper, &mapping()).unwrap();
        let children = std::fs::read_to_string("/proc/thread-self/children").unwrap();
        let pids: Vec<i32> = children
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 1, "one helper: {children:?}");
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pids[0]), None);
        assert_eq!(
            status.unwrap(),
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pids[0]), 0)
        );
        ns
    }

    fn mounts_below(dir: &Path) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| Path::new(p).starts_with(dir))
            .collect()
    }

    /// Runs `sh -c script` as the container's root seen from the host (uid and gid
    /// HOST_ROOT) and says whether it succeeded.
    fn as_container_root(script: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", script])
            .uid(HOST_ROOT)
            .gid(HOST_ROOT)
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn the_helper_namespace_carries_the_mapping() {
        if !root() {
            return;
        }
        let ns = userns();
        // The namespace outlives its helper through the fd: join it from a child and look.
        let out = unsafe {
            let fd = ns.0.as_raw_fd();
            std::process::Command::new("cat")
                .arg("/proc/self/uid_map")
                .pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWUSER) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                })
                .output()
                .unwrap()
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields, ["0", "100000", "65536"], "{text}");
    }

    #[test]
    fn an_idmapped_overlay_shows_and_writes_through_the_mapping() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for dir in ["l1/etc", "l2", "snap/fs", "snap/work", "merged"] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        std::fs::write(d.join("l1/etc/passwd"), "root\n").unwrap();
        std::fs::write(d.join("l2/top"), "x").unwrap();
        let ns = userns();
        let overlay = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", d.join("snap/work").display()),
                format!("upperdir={}", d.join("snap/fs").display()),
                format!(
                    "lowerdir={}:{}",
                    d.join("l2").display(),
                    d.join("l1").display()
                ),
            ],
            ..Default::default()
        };
        let merged = d.join("merged");
        let idmap = Idmap {
            userns: &ns,
            root: (HOST_ROOT, HOST_ROOT),
        };
        mount_all(std::slice::from_ref(&overlay), &merged, Some(&idmap)).unwrap();
        // Only the overlay is mounted: the idmapped layer copies were never attached.
        assert_eq!(mounts_below(d), [merged.to_string_lossy()]);
        // Files owned by 0 on disk belong to the container's root.
        let meta = std::fs::metadata(merged.join("etc/passwd")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (HOST_ROOT, HOST_ROOT));
        // That root writes into a root-owned directory (0755), and in place (copy-up).
        let etc = merged.join("etc");
        assert!(as_container_root(&format!(
            "echo hi > {0}/new && echo more >> {0}/passwd && mkdir {1}/dir",
            etc.display(),
            merged.display()
        )));
        // What lands on disk carries the unshifted ids.
        for written in ["etc/new", "etc/passwd", "dir"] {
            let meta = std::fs::metadata(d.join("snap/fs").join(written)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{written}");
        }
        assert_eq!(
            std::fs::read_to_string(d.join("l1/etc/passwd")).unwrap(),
            "root\n",
            "the lower layer is untouched"
        );
        unmount_all(&merged).unwrap();
        assert!(mounts_below(d).is_empty());
    }

    #[test]
    fn a_bind_rootfs_is_idmapped_and_a_bad_layer_leaves_nothing() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("src/etc")).unwrap();
        std::fs::create_dir_all(d.join("rootfs")).unwrap();
        let ns = userns();
        let idmap = Idmap {
            userns: &ns,
            root: (HOST_ROOT, HOST_ROOT),
        };
        let bind = Mount {
            type_: "bind".into(),
            source: d.join("src").to_string_lossy().into_owned(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        };
        let rootfs = d.join("rootfs");
        mount_all(std::slice::from_ref(&bind), &rootfs, Some(&idmap)).unwrap();
        assert_eq!(
            std::fs::metadata(rootfs.join("etc")).unwrap().uid(),
            HOST_ROOT
        );
        assert!(as_container_root(&format!(
            "touch {}/etc/f",
            rootfs.display()
        )));
        assert_eq!(std::fs::metadata(d.join("src/etc/f")).unwrap().uid(), 0);
        unmount_all(&rootfs).unwrap();

        // A missing lower layer fails the mount, naming the layer, and leaves no mount.
        let overlay = Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!(
                "lowerdir={}:{}",
                d.join("src").display(),
                d.join("missing").display()
            )],
            ..Default::default()
        };
        let e = mount_all(std::slice::from_ref(&overlay), &rootfs, Some(&idmap)).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(mounts_below(d).is_empty());
        // Nor can a tmpfs root be idmapped: refused as unsupported.
        let tmpfs = Mount {
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            ..Default::default()
        };
        let e = mount_all(std::slice::from_ref(&tmpfs), &rootfs, Some(&idmap)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    }

    #[test]
    fn idmapped_binds_are_attached_for_runc_and_detached_after() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let bundle = d.join("bundle");
        std::fs::create_dir_all(d.join("vol")).unwrap();
        std::fs::write(d.join("vol/data"), "x").unwrap();
        std::fs::write(d.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::create_dir_all(&bundle).unwrap();
        let map = serde_json::json!([{"containerID": 0, "hostID": HOST_ROOT, "size": 65536}]);
        let spec = serde_json::json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/vol", "type": "bind", "source": d.join("vol"),
                 "options": ["rbind", "ro"], "uidMappings": map, "gidMappings": map},
                {"destination": "/etc/hosts", "type": "bind", "source": d.join("hosts"),
                 "options": ["rbind", "rw"], "uidMappings": map, "gidMappings": map},
            ]
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        let (reaper, _monitor) = Reaper::new();
        let mut set = UsernsSet::new(&reaper);
        set.insert(mapping(), userns());
        let binds = IdmappedBinds::prepare(&bundle, &mut set).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let mounts = written["mounts"].as_array().unwrap();
        assert_eq!(mounts[0], spec["mounts"][0], "other mounts are left alone");
        for (i, m) in mounts.iter().enumerate().skip(1) {
            let src = bundle.join(BINDS_DIR).join(i.to_string());
            assert_eq!(m["source"], src.to_string_lossy().as_ref());
            assert!(m.get("uidMappings").is_none() && m.get("gidMappings").is_none());
            assert_eq!(std::fs::metadata(&src).unwrap().uid(), HOST_ROOT);
        }
        assert_eq!(mounts_below(d).len(), 2);
        drop(binds);
        assert!(mounts_below(d).is_empty());
        assert!(!bundle.join(BINDS_DIR).exists());

        // Mappings on a mount that is not a bind are refused, and nothing stays attached.
        let bad = serde_json::json!({"mounts": [
            {"destination": "/vol", "type": "bind", "source": d.join("vol"),
             "options": ["rbind"], "uidMappings": map, "gidMappings": map},
            {"destination": "/t", "type": "tmpfs", "source": "tmpfs",
             "uidMappings": map, "gidMappings": map},
        ]});
        std::fs::write(bundle.join("config.json"), bad.to_string()).unwrap();
        let e = IdmappedBinds::prepare(&bundle, &mut set).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("mount at /t"), "{e}");
        assert!(mounts_below(d).is_empty());
        assert!(!bundle.join(BINDS_DIR).exists());
    }

    #[test]
    fn mappings_parse_from_the_spec_and_write_as_map_files() {
        let m: Vec<IdMapping> = serde_json::from_str(
            r#"[{"containerID":0,"hostID":1000,"size":65536},{"containerID":70000,"hostID":5,"size":1}]"#,
        )
        .unwrap();
        assert_eq!(Mappings::map_file(&m), "0 1000 65536\n70000 5 1\n");
        let both = Mappings {
            uids: m.clone(),
            gids: vec![IdMapping {
                container_id: 0,
                host_id: 2000,
                size: 10,
            }],
        };
        assert_eq!(both.host_root(), Some((1000, 2000)));
        assert!(both.owns(1000, 2000) && both.owns(66535, 2009) && both.owns(5, 2000));
        assert!(!both.owns(0, 2000) && !both.owns(1000, 2010) && !both.owns(999, 2000));
        let no_root = Mappings {
            uids: vec![m[1]],
            gids: m,
        };
        assert_eq!(no_root.host_root(), None);
    }
}
