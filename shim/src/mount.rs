//! Mounting the rootfs mounts the daemon sends in `Task.Create`, and unmounting them.
//!
//! Options are `mount(8)` words: flags such as `ro`, `rbind`, `nosuid` become mount flags; the
//! rest (`lowerdir=…`, `upperdir=…`) is passed to the filesystem as data.
//!
//! For a container with a user namespace the layers are idmapped first ([`Idmap`], see
//! `idmap`): each lowerdir, and the directory holding upperdir and workdir (overlayfs wants
//! both on one mount), becomes an idmapped detached mount that the overlay names as
//! `/proc/self/fd/<n>`; a bind rootfs is idmapped and attached. The overlay is mounted with
//! the container root's host ids as its creator: overlayfs does its own work (the work
//! directory, copy-up) with its creator's credentials, and uid 0 has no place in the upper
//! layer's idmapping, so as root that work fails (EOVERFLOW) and the overlay comes up
//! read-only.

use std::io;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use protocol::mount::Mount;

use crate::idmap::{Detached, Userns};

/// How to idmap a container's root filesystem: through `userns`, whose root is `root` (host
/// uid, gid) outside.
pub struct Idmap<'a> {
    pub userns: &'a Userns,
    pub root: (u32, u32),
}

/// Splits `options` into mount flags, propagation flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (clear, set) = match o.as_str() {
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "atime" => (true, MsFlags::MS_NOATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "defaults" => (false, MsFlags::empty()),
            "dev" => (true, MsFlags::MS_NODEV),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "nodev" => (false, MsFlags::MS_NODEV),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "suid" => (true, MsFlags::MS_NOSUID),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let p = match o.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                propagation |= p;
                if o.starts_with('r') {
                    propagation |= MsFlags::MS_REC;
                }
                continue;
            }
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        if clear {
            flags.remove(set);
        } else {
            flags.insert(set);
        }
    }
    (flags, propagation, data.join(","))
}

/// Mounts one mount onto `target`.
pub fn mount_at(m: &Mount, target: &Path) -> io::Result<()> {
    let (flags, propagation, data) = parse_options(&m.options);
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    let fstype = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    let err = |e: nix::Error| {
        io::Error::other(format!(
            "mount {} ({}) on {}: {e}",
            m.source,
            m.type_,
            target.display()
        ))
    };
    mount(source, target, fstype, flags, data).map_err(err)?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(err)?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Mounts `mounts` in order onto `target`, idmapped when `idmap` says so; on failure undoes
/// what it did.
pub fn mount_all(mounts: &[Mount], target: &Path, idmap: Option<&Idmap>) -> io::Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        let mounted = match idmap {
            Some(idmap) => mount_idmapped(m, target, idmap),
            None => mount_at(m, target),
        };
        if let Err(e) = mounted {
            for _ in 0..i {
                let _ = unmount_all(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The directory whose owner the root of `mounts` shows: the last mount's upperdir (overlay's
/// root takes the upper layer's attributes), else its top lowerdir, else a bind's source.
pub fn top_layer(mounts: &[Mount]) -> Option<PathBuf> {
    let m = mounts.last()?;
    if m.type_ == "overlay" {
        let (_, _, data) = parse_options(&m.options);
        let mut lower = None;
        for item in data.split(',') {
            if let Some(d) = item.strip_prefix("upperdir=") {
                return Some(PathBuf::from(d));
            }
            if let Some(l) = item.strip_prefix("lowerdir=") {
                lower = l.split(':').next().map(PathBuf::from);
            }
        }
        lower
    } else {
        Some(PathBuf::from(&m.source))
    }
}

/// Mounts one mount onto `target` with its layers idmapped (overlay) or idmapped itself
/// (bind). The helper mounts are detached and dropped on every path out.
fn mount_idmapped(m: &Mount, target: &Path, idmap: &Idmap) -> io::Result<()> {
    let (flags, propagation, data) = parse_options(&m.options);
    let err = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "mount {} ({}) idmapped on {}: {e}",
                m.source,
                m.type_,
                target.display()
            ),
        )
    };
    let bind = m.type_ == "bind" || flags.contains(MsFlags::MS_BIND);
    if bind {
        let recursive = flags.contains(MsFlags::MS_REC);
        let tree = Detached::clone_tree(Path::new(&m.source), recursive).map_err(err)?;
        tree.idmap(idmap.userns, recursive, flags.contains(MsFlags::MS_RDONLY))
            .map_err(err)?;
        tree.attach(target).map_err(err)?;
    } else if m.type_ == "overlay" {
        let (data, _layers) = idmapped_overlay_data(&data, idmap.userns).map_err(err)?;
        // `_layers` (the detached idmapped copies the data names) must stay open until the
        // overlay has taken its own clones; they go when this returns.
        as_creator(idmap.root, || {
            mount(
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                target,
                Some("overlay"),
                flags,
                Some(data.as_str()),
            )
            .map_err(io::Error::from)
        })
        .map_err(err)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "mount {} on {}: a {:?} root filesystem cannot be idmapped (only overlay and \
                 bind mounts can)",
                m.source,
                target.display(),
                m.type_
            ),
        ));
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// overlayfs data with every layer replaced by an idmapped detached copy of it, and those
/// copies (which must stay open until the overlay is mounted).
fn idmapped_overlay_data(data: &str, userns: &Userns) -> io::Result<(String, Vec<Detached>)> {
    let mut out = Vec::new();
    let mut layers = Vec::new();
    let (mut upper, mut work) = (None, None);
    for item in data.split(',').filter(|i| !i.is_empty()) {
        if let Some(list) = item.strip_prefix("lowerdir=") {
            let mut paths = Vec::new();
            for dir in list.split(':') {
                let tree = Detached::clone_tree(Path::new(dir), false)?;
                tree.idmap(userns, false, false)?;
                paths.push(tree.proc_path().to_string_lossy().into_owned());
                layers.push(tree);
            }
            out.push(format!("lowerdir={}", paths.join(":")));
        } else if let Some(d) = item.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(d));
        } else if let Some(d) = item.strip_prefix("workdir=") {
            work = Some(PathBuf::from(d));
        } else {
            out.push(item.to_string());
        }
    }
    match (upper, work) {
        (Some(upper), Some(work)) => {
            let parent = common_parent(&upper, &work).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "upperdir {} and workdir {} have no common parent directory",
                        upper.display(),
                        work.display()
                    ),
                )
            })?;
            let tree = Detached::clone_tree(&parent, false)?;
            tree.idmap(userns, false, false)?;
            for (key, dir) in [("upperdir", &upper), ("workdir", &work)] {
                let rel = dir.strip_prefix(&parent).unwrap_or(dir);
                out.push(format!("{key}={}", tree.proc_path().join(rel).display()));
            }
            layers.push(tree);
        }
        (None, None) => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "overlay options have an upperdir without a workdir or the other way round",
            ));
        }
    }
    Ok((out.join(","), layers))
}

/// The deepest directory both `a` and `b` are below (not `/` itself unless they share nothing
/// else), or None for relative paths.
fn common_parent(a: &Path, b: &Path) -> Option<PathBuf> {
    if !a.is_absolute() || !b.is_absolute() {
        return None;
    }
    let mut common = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y || matches!(x, Component::ParentDir | Component::CurDir) {
            break;
        }
        common.push(x.as_os_str());
    }
    // A path that is the other one's ancestor: its parent holds both.
    if common == a || common == b {
        common.pop();
    }
    Some(common)
}

/// Runs `f` on a thread of its own whose file system ids are `(uid, gid)`, keeping its
/// capabilities (SECBIT_NO_SETUID_FIXUP: by default leaving fsuid 0 drops them). The thread's
/// credentials die with it; the caller's never change.
fn as_creator<T: Send>(
    (uid, gid): (u32, u32),
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("idmap-mount".into())
            .spawn_scoped(s, move || {
                const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
                // SAFETY: prctl, setfsgid and setfsuid only change this thread's credentials.
                unsafe {
                    if libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0 {
                        return Err(io::Error::other(format!(
                            "prctl(PR_SET_SECUREBITS): {}",
                            io::Error::last_os_error()
                        )));
                    }
                    libc::setfsgid(gid);
                    libc::setfsuid(uid);
                    // setfs[ug]id report no error; an invalid id leaves the old one, which
                    // asking with -1 (never valid) shows.
                    let (now_uid, now_gid) = (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX));
                    if now_uid as u32 != uid || now_gid as u32 != gid {
                        return Err(io::Error::other(format!(
                            "cannot take file system ids {uid}:{gid} (have {now_uid}:{now_gid})"
                        )));
                    }
                }
                f()
            })
            .map_err(|e| io::Error::other(format!("spawn the idmap mount thread: {e}")))?
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Unmounts everything stacked on `target`. Not mounted is success: delete is idempotent.
pub fn unmount_all(target: &Path) -> io::Result<()> {
    for _ in 0..64 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(nix::Error::EBUSY) => {
                // Something still holds it (a process being torn down): detach instead.
                umount2(target, MntFlags::MNT_DETACH)
                    .map_err(|e| io::Error::other(format!("unmount {}: {e}", target.display())))?;
            }
            Err(e) => {
                return Err(io::Error::other(format!(
                    "unmount {}: {e}",
                    target.display()
                )));
            }
        }
    }
    Err(io::Error::other(format!(
        "unmount {}: still mounted after 64 unmounts",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, p, d) = parse_options(&s(&["ro", "rbind", "nosuid", "rprivate"]));
        assert!(f.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        ));
        assert!(p.contains(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(d, "");
        let (f, _, d) = parse_options(&s(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/a:/b",
            "rw",
        ]));
        assert!(!f.contains(MsFlags::MS_RDONLY));
        assert_eq!(d, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
    }

    #[test]
    fn the_top_layer_decides_the_roots_owner() {
        let m = |type_: &str, source: &str, options: &[&str]| Mount {
            type_: type_.into(),
            source: source.into(),
            options: s(options),
            ..Default::default()
        };
        let rw = m(
            "overlay",
            "overlay",
            &["workdir=/w", "upperdir=/u", "lowerdir=/a:/b"],
        );
        assert_eq!(top_layer(&[rw]), Some(PathBuf::from("/u")));
        let view = m("overlay", "overlay", &["lowerdir=/a:/b"]);
        assert_eq!(top_layer(&[view]), Some(PathBuf::from("/a")));
        let bind = m("bind", "/snap/1/fs", &["rbind", "ro"]);
        assert_eq!(top_layer(&[bind]), Some(PathBuf::from("/snap/1/fs")));
        assert_eq!(top_layer(&[]), None);
    }
}
