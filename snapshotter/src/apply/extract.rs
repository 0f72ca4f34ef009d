//! The tar-extract side of apply: one entry at a time, confined to the root.
//!
//! Confinement: every entry path is normalised lexically (a leading `/` is stripped as
//! containerd does, any `..` component is refused), then its parent directory is opened from
//! the root fd without following any symlink (openat2 `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`,
//! or component by component with `O_NOFOLLOW`), and the entry is created with a `*at` call on
//! that directory fd. A layer therefore cannot write through a symlink it (or a lower layer)
//! planted, whatever the symlink points at; such entries are refused with an error naming the
//! symlink. containerd instead resolves such symlinks inside the root; refusing is stricter and
//! layers produced by diffing real trees never contain paths through symlinks.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::CStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use super::WhiteoutMode;
use super::error::{ApplyError, Result};
use super::fsutil::{self, AsFdRef, cstr};
use super::inherit;

pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(crate) const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
pub(crate) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;
const COPY_BUF: usize = 256 * 1024;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Lexically normalises an entry path: strips leading `/`, drops empty and `.` components,
/// refuses `..`, NUL and overlong names. The root itself normalises to the empty path.
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<u8>> {
    let bad = |reason| ApplyError::InvalidPath {
        path: lossy(raw),
        reason,
    };
    if raw.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(bad("contains a `..` component (would escape the root)")),
            c => {
                if c.len() > NAME_MAX {
                    return Err(bad("a component is longer than 255 bytes"));
                }
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.len() > PATH_MAX {
        return Err(bad("longer than 4095 bytes"));
    }
    Ok(out)
}

/// Splits a normalised path into (parent, name).
pub(crate) fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Metadata of one tar entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn corrupt(path: &[u8], what: &str, e: std::io::Error) -> ApplyError {
    ApplyError::Corrupt {
        context: format!("{what} of entry {:?}", lossy(path)),
        source: e,
    }
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative) into (secs, nanos).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += c.to_digit(10)? * 10u32.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        // -1.5 means 1.5 s before the epoch.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

impl Meta {
    fn read<R: Read>(e: &mut tar::Entry<'_, R>, rel: &[u8]) -> Result<Meta> {
        let h = e.header();
        let mode = h.mode().map_err(|err| corrupt(rel, "mode", err))? & 0o7777;
        let uid = h.uid().map_err(|err| corrupt(rel, "uid", err))?;
        let gid = h.gid().map_err(|err| corrupt(rel, "gid", err))?;
        let secs = h.mtime().map_err(|err| corrupt(rel, "mtime", err))?;
        let mut meta = Meta {
            mode,
            uid: u32::try_from(uid).map_err(|_| ApplyError::InvalidPath {
                path: lossy(rel),
                reason: "uid does not fit 32 bits",
            })?,
            gid: u32::try_from(gid).map_err(|_| ApplyError::InvalidPath {
                path: lossy(rel),
                reason: "gid does not fit 32 bits",
            })?,
            mtime: (secs as i64, 0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = e
            .pax_extensions()
            .map_err(|err| corrupt(rel, "PAX header", err))?
        {
            for ext in pax {
                let ext = ext.map_err(|err| corrupt(rel, "PAX record", err))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        meta.mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs
                        .push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(meta)
    }
}

/// The most the tar reader may read between two entries: the previous entry's padding, the
/// headers, and the GNU long name, long link, PAX records and sparse map of the next entry,
/// which the tar crate reads whole into memory, whatever size the header claims. Go's
/// archive/tar (and so containerd) refuses long names and PAX records over 1 MiB each; this is
/// room for three of them and their headers.
const MAX_HEADERS: u64 = 4 << 20;

/// The layer stream as the tar reader sees it: bytes read outside entry data (`used` is
/// `Some`) are counted, and past [`MAX_HEADERS`] the read fails, so that a header claiming
/// gigabytes of long name costs at most that much memory.
struct HeaderBudget<R> {
    inner: R,
    used: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(used) = self.used.get() else {
            return self.inner.read(buf);
        };
        if used > MAX_HEADERS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "more than {} MiB of tar headers (GNU long names, PAX records, sparse \
                     maps) before one entry",
                    MAX_HEADERS >> 20
                ),
            ));
        }
        // Never more than one byte past the budget: the next read refuses.
        let room = usize::try_from(MAX_HEADERS + 1 - used).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        let n = self.inner.read(&mut buf[..n])?;
        self.used.set(Some(used + n as u64));
        Ok(n)
    }
}

fn e_path<R: Read>(e: &tar::Entry<'_, R>) -> Vec<u8> {
    e.path_bytes().into_owned()
}

/// Extracts tar entries into a root directory.
pub(crate) struct Extractor {
    root: Rc<OwnedFd>,
    mode: WhiteoutMode,
    is_root: bool,
    /// Paths this layer created: whiteouts never hide them (OCI: whiteouts apply to lower
    /// layers only) and opaque markers keep them.
    unpacked: HashSet<Vec<u8>>,
    /// Directory mtimes, set after all entries (creating children changes a dir's mtime).
    dir_times: Vec<(Vec<u8>, (i64, u32))>,
    /// Directories made for entries whose layer does not list them, in creation order (see
    /// `inherit.rs`); one the layer lists later is taken off again.
    implicit: Vec<Vec<u8>>,
    /// The last directory resolved: tar streams list siblings together, so this saves most
    /// path walks. Cleared whenever anything is removed.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    buf: Vec<u8>,
}

impl Extractor {
    pub(crate) fn new(root: &Path, mode: WhiteoutMode) -> Result<Extractor> {
        let fd = fsutil::open_dir_path(root).map_err(|e| {
            ApplyError::io("open apply root", root.as_os_str().as_encoded_bytes(), e)
        })?;
        Ok(Extractor {
            root: Rc::new(fd),
            mode,
            is_root: unsafe { libc::geteuid() } == 0,
            unpacked: HashSet::new(),
            dir_times: Vec::new(),
            implicit: Vec::new(),
            cache: None,
            buf: vec![0u8; COPY_BUF],
        })
    }

    /// Applies every entry of the archive, then the deferred directory times. Returns the
    /// directories the layer needed but did not list (see `inherit.rs`).
    pub(crate) fn run<R: Read>(mut self, reader: R) -> Result<Vec<Vec<u8>>> {
        let outside_entries = Rc::new(Cell::new(Some(0)));
        let mut ar = tar::Archive::new(HeaderBudget {
            inner: reader,
            used: outside_entries.clone(),
        });
        let entries = ar.entries().map_err(|e| ApplyError::Corrupt {
            context: "reading tar".into(),
            source: e,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ApplyError::Corrupt {
                context: "reading tar header".into(),
                source: e,
            })?;
            outside_entries.set(None);
            self.entry(&mut entry)?;
            // What the entry did not read of its data is data, not headers: drained here, so
            // that the tar reader's skip does not count against the header budget.
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| ApplyError::Corrupt {
                context: format!("reading data of entry {:?}", lossy(&e_path(&entry))),
                source: e,
            })?;
            outside_entries.set(Some(0));
        }
        self.finish()
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let etype = e.header().entry_type();
        if matches!(
            etype,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let raw = e.path_bytes().into_owned();
        let rel = normalize(&raw)?;
        if rel.is_empty() {
            // `./` or `/`: the root's own metadata belongs to the snapshot, not the layer.
            return Ok(());
        }
        let (parent, name) = split(&rel);
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&rel);
        }
        let meta = Meta::read(e, &rel)?;
        let parent_fd = self.dir(parent, true, &rel)?.expect("created");
        let cname = cstr(name).map_err(|e| ApplyError::io("name", &rel, e))?;
        match etype {
            T::Regular | T::Continuous | T::GNUSparse => {
                self.file(e, &parent_fd, &cname, &rel, &meta)?
            }
            T::Directory => self.mkdir(&parent_fd, &cname, &rel, &meta)?,
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| ApplyError::InvalidPath {
                        path: lossy(&rel),
                        reason: "symlink without a target",
                    })?
                    .into_owned();
                let ctarget =
                    cstr(&target).map_err(|e| ApplyError::io("symlink target", &rel, e))?;
                self.create(&parent_fd, &cname, &rel, "symlink", |d, n| {
                    fsutil::symlink_at(&ctarget, d, n)
                })?;
                self.finish_node(&parent_fd, &cname, &rel, &meta, false)?;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| ApplyError::InvalidPath {
                        path: lossy(&rel),
                        reason: "hardlink without a target",
                    })?
                    .into_owned();
                self.hardlink(&parent_fd, &cname, &rel, &target)?;
            }
            T::Char | T::Block => {
                if !self.is_root {
                    return Err(ApplyError::NeedsRoot {
                        what: "device node",
                        path: lossy(&rel),
                    });
                }
                let h = e.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = if etype == T::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                let dev = libc::makedev(major, minor);
                self.create(&parent_fd, &cname, &rel, "mknod", |d, n| {
                    fsutil::mknod_at(d, n, kind, dev)
                })?;
                self.finish_node(&parent_fd, &cname, &rel, &meta, true)?;
            }
            T::Fifo => {
                self.create(&parent_fd, &cname, &rel, "mkfifo", |d, n| {
                    fsutil::mknod_at(d, n, libc::S_IFIFO, 0)
                })?;
                self.finish_node(&parent_fd, &cname, &rel, &meta, true)?;
            }
            other => {
                return Err(ApplyError::UnsupportedEntry {
                    path: lossy(&rel),
                    kind: format!("{other:?}"),
                });
            }
        }
        self.unpacked.insert(rel);
        Ok(())
    }

    /// Opens directory `rel` (relative to the root) without following symlinks. Missing
    /// directories are created when `create` (with a lower layer's metadata in overlay mode),
    /// else `Ok(None)`. `entry` names the entry we are working for, for error messages.
    fn dir(&mut self, rel: &[u8], create: bool, entry: &[u8]) -> Result<Option<Rc<OwnedFd>>> {
        if rel.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some((p, fd)) = &self.cache
            && p == rel
        {
            return Ok(Some(fd.clone()));
        }
        let c = cstr(rel).map_err(|e| ApplyError::io("resolve", rel, e))?;
        if let Ok(Some(fd)) = fsutil::open_dir_beneath(self.root.as_fd_ref(), &c) {
            let fd = Rc::new(fd);
            self.cache = Some((rel.to_vec(), fd.clone()));
            return Ok(Some(fd));
        }
        // Slow path: walk component by component, to create missing parents or to say
        // precisely which component is wrong.
        let mut cur = self.root.clone();
        let mut end = 0;
        for comp in rel.split(|b| *b == b'/') {
            end += comp.len();
            let prefix = &rel[..end];
            end += 1;
            let ccomp = cstr(comp).map_err(|e| ApplyError::io("resolve", rel, e))?;
            match fsutil::open_dir_at(cur.as_fd_ref(), &ccomp) {
                Ok(fd) => cur = Rc::new(fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if !create {
                        return Ok(None);
                    }
                    self.make_parent(&cur, &ccomp, prefix)?;
                    let fd = fsutil::open_dir_at(cur.as_fd_ref(), &ccomp)
                        .map_err(|e| ApplyError::io("open directory", prefix, e))?;
                    cur = Rc::new(fd);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                    let st = fsutil::lstat_at(cur.as_fd_ref(), &ccomp)
                        .map_err(|e| ApplyError::io("lstat", prefix, e))?;
                    let is_link = st.is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    return Err(if is_link {
                        ApplyError::SymlinkInPath {
                            path: lossy(entry),
                            component: lossy(prefix),
                        }
                    } else {
                        ApplyError::NotADirectory {
                            path: lossy(entry),
                            component: lossy(prefix),
                        }
                    });
                }
                Err(e) => return Err(ApplyError::io("open directory", prefix, e)),
            }
        }
        self.cache = Some((rel.to_vec(), cur.clone()));
        Ok(Some(cur))
    }

    /// Creates a parent directory the layer did not list. In overlay mode it takes the mode,
    /// owner and mtime of the same directory in the highest lowerdir that has it, so the merged
    /// view keeps the lower directory's attributes (containerd's `WithParents`).
    fn make_parent(&mut self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<()> {
        match fsutil::mkdir_at(dir.as_fd_ref(), name, 0o755) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(()),
            Err(e) => return Err(ApplyError::io("mkdir", rel, e)),
        }
        self.implicit.push(rel.to_vec());
        let WhiteoutMode::Overlay { lowerdirs } = &self.mode else {
            return Ok(());
        };
        let Some(t) = inherit::template(lowerdirs, rel) else {
            return Ok(());
        };
        let fd = fsutil::open_dir_at(dir.as_fd_ref(), name)
            .map_err(|e| ApplyError::io("open directory", rel, e))?;
        inherit::apply_owner_mode(&fd, rel, &t)?;
        self.dir_times.push((rel.to_vec(), t.mtime));
        Ok(())
    }

    /// Removes whatever is at `name` (recursively, without following symlinks).
    fn remove(&mut self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<()> {
        self.cache = None;
        fsutil::remove_all_at(dir.as_fd_ref(), name).map_err(|e| ApplyError::io("remove", rel, e))
    }

    /// Runs a creating `*at` call; if the name exists, removes it and tries once more.
    fn create(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        op: &'static str,
        f: impl Fn(std::os::fd::BorrowedFd<'_>, &CStr) -> std::io::Result<()>,
    ) -> Result<()> {
        match f(dir.as_fd_ref(), name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove(dir, name, rel)?;
                f(dir.as_fd_ref(), name).map_err(|e| ApplyError::io(op, rel, e))
            }
            Err(e) => Err(ApplyError::io(op, rel, e)),
        }
    }

    /// chown fails with EPERM for a non-root caller; that is expected, not an error.
    fn chown(&self, r: std::io::Result<()>, rel: &[u8]) -> Result<()> {
        match r {
            Err(e) if !self.is_root && e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            r => r.map_err(|e| ApplyError::io("chown", rel, e)),
        }
    }

    fn xattr_result(&self, r: std::io::Result<()>, rel: &[u8], key: &[u8]) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTSUP)
                    || (!self.is_root && e.raw_os_error() == Some(libc::EPERM)) =>
            {
                log::warn!("skipping xattr {} on {:?}: {e}", lossy(key), lossy(rel));
                Ok(())
            }
            // The value or the name, as the layer gives it, is what the kernel refuses.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ERANGE | libc::E2BIG)
                ) =>
            {
                Err(ApplyError::BadXattr {
                    path: lossy(rel),
                    key: lossy(key),
                    source: e,
                })
            }
            Err(e) => Err(ApplyError::io("setxattr", rel, e)),
        }
    }

    /// Layer xattrs we never set: overlay's own attributes would let a layer forge whiteouts,
    /// opaque dirs or redirects in the merged view.
    fn allowed_xattr(key: &[u8]) -> bool {
        !key.starts_with(b"trusted.overlay.")
    }

    fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        let mut f = match fsutil::create_file_at(dir.as_fd_ref(), name) {
            Ok(f) => f,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                self.remove(dir, name, rel)?;
                fsutil::create_file_at(dir.as_fd_ref(), name)
                    .map_err(|err| ApplyError::io("create", rel, err))?
            }
            Err(err) => return Err(ApplyError::io("create", rel, err)),
        };
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(corrupt(rel, "data", err)),
            };
            f.write_all(&self.buf[..n])
                .map_err(|err| ApplyError::io("write", rel, err))?;
        }
        self.chown(fsutil::fchown(f.as_fd(), meta.uid, meta.gid), rel)?;
        fsutil::fchmod(f.as_fd(), meta.mode).map_err(|err| ApplyError::io("chmod", rel, err))?;
        for (k, v) in meta.xattrs.iter().filter(|(k, _)| Self::allowed_xattr(k)) {
            let ck = cstr(k).map_err(|err| ApplyError::io("xattr name", rel, err))?;
            self.xattr_result(fsutil::fsetxattr(f.as_fd(), &ck, v), rel, k)?;
        }
        fsutil::futimens(f.as_fd(), meta.mtime, meta.mtime)
            .map_err(|err| ApplyError::io("set times", rel, err))
    }

    fn mkdir(&mut self, dir: &OwnedFd, name: &CStr, rel: &[u8], meta: &Meta) -> Result<()> {
        match fsutil::mkdir_at(dir.as_fd_ref(), name, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let st = fsutil::lstat_at(dir.as_fd_ref(), name)
                    .map_err(|e| ApplyError::io("lstat", rel, e))?;
                // An existing directory is merged into, anything else replaced.
                if !st.is_some_and(|s| fsutil::is_dir(&s)) {
                    self.remove(dir, name, rel)?;
                    fsutil::mkdir_at(dir.as_fd_ref(), name, 0o700)
                        .map_err(|e| ApplyError::io("mkdir", rel, e))?;
                } else if let Some(i) = self.implicit.iter().position(|p| p == rel) {
                    // Made earlier for a child: the layer's own entry decides its attributes,
                    // mtime included, not a lower layer.
                    self.implicit.remove(i);
                    self.dir_times.retain(|(p, _)| p != rel);
                }
            }
            Err(e) => return Err(ApplyError::io("mkdir", rel, e)),
        }
        let fd = fsutil::open_dir_at(dir.as_fd_ref(), name)
            .map_err(|e| ApplyError::io("open directory", rel, e))?;
        self.chown(fsutil::fchown(fd.as_fd(), meta.uid, meta.gid), rel)?;
        fsutil::fchmod(fd.as_fd(), meta.mode).map_err(|e| ApplyError::io("chmod", rel, e))?;
        for (k, v) in meta.xattrs.iter().filter(|(k, _)| Self::allowed_xattr(k)) {
            let ck = cstr(k).map_err(|e| ApplyError::io("xattr name", rel, e))?;
            self.xattr_result(fsutil::fsetxattr(fd.as_fd(), &ck, v), rel, k)?;
        }
        self.dir_times.push((rel.to_vec(), meta.mtime));
        // Children usually follow their directory.
        self.cache = Some((rel.to_vec(), Rc::new(fd)));
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and times of a node addressed by name.
    fn finish_node(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let d = dir.as_fd_ref();
        self.chown(fsutil::lchown_at(d, name, meta.uid, meta.gid), rel)?;
        if chmod {
            fsutil::chmod_at(d, name, meta.mode).map_err(|e| ApplyError::io("chmod", rel, e))?;
        }
        for (k, v) in meta.xattrs.iter().filter(|(k, _)| Self::allowed_xattr(k)) {
            let ck = cstr(k).map_err(|e| ApplyError::io("xattr name", rel, e))?;
            self.xattr_result(fsutil::lsetxattr_at(d, name, &ck, v), rel, k)?;
        }
        fsutil::lutimes_at(d, name, meta.mtime, meta.mtime)
            .map_err(|e| ApplyError::io("set times", rel, e))
    }

    fn hardlink(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        target_raw: &[u8],
    ) -> Result<()> {
        let bad = |reason: String| ApplyError::BadHardlink {
            path: lossy(rel),
            target: lossy(target_raw),
            reason,
        };
        let target = normalize(target_raw).map_err(|e| bad(e.to_string()))?;
        if target.is_empty() {
            return Err(bad("target is the root directory".into()));
        }
        if target == rel {
            return Ok(());
        }
        let (tparent, tname) = split(&target);
        let tdir = self
            .dir(tparent, false, &target)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("target does not exist inside the root".into()))?;
        let ctname = cstr(tname).map_err(|e| ApplyError::io("name", &target, e))?;
        let st = fsutil::lstat_at(tdir.as_fd_ref(), &ctname)
            .map_err(|e| ApplyError::io("lstat", &target, e))?
            .ok_or_else(|| bad("target does not exist inside the root".into()))?;
        if fsutil::is_dir(&st) {
            return Err(bad("target is a directory".into()));
        }
        if let Ok(Some(existing)) = fsutil::lstat_at(dir.as_fd_ref(), name)
            && existing.st_ino == st.st_ino
            && existing.st_dev == st.st_dev
        {
            return Ok(());
        }
        // `dir` may have been invalidated by nothing here: resolving the target only opens.
        self.create(dir, name, rel, "link", |d, n| {
            fsutil::link_at(tdir.as_fd_ref(), &ctname, d, n)
        })
    }

    fn whiteout(&mut self, rel: &[u8]) -> Result<()> {
        let (parent, name) = split(rel);
        if name == OPAQUE_MARKER {
            return self.opaque(parent, rel);
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            // aufs bookkeeping (`.wh..wh.plnk` etc.): meaningless here, as in containerd.
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(ApplyError::InvalidPath {
                path: lossy(rel),
                reason: "whiteout does not name a file (empty, `.` or `..`)",
            });
        }
        let target_rel = join(parent, target);
        if self.unpacked.contains(&target_rel) {
            // OCI: a whiteout hides lower layers only, never entries of its own layer.
            return Ok(());
        }
        let ctarget = cstr(target).map_err(|e| ApplyError::io("name", rel, e))?;
        match self.mode.clone() {
            WhiteoutMode::Delete => {
                if let Some(dir) = self.dir(parent, false, rel)? {
                    self.remove(&dir, &ctarget, &target_rel)?;
                }
            }
            WhiteoutMode::Overlay { .. } => {
                if !self.is_root {
                    return Err(ApplyError::NeedsRoot {
                        what: "overlay whiteout (char device 0/0)",
                        path: lossy(rel),
                    });
                }
                let dir = self.dir(parent, true, rel)?.expect("created");
                self.remove(&dir, &ctarget, &target_rel)?;
                fsutil::mknod_at(dir.as_fd_ref(), &ctarget, libc::S_IFCHR, 0)
                    .map_err(|e| ApplyError::io("create whiteout", &target_rel, e))?;
            }
        }
        Ok(())
    }

    /// `.wh..wh..opq`: the directory hides everything below it from lower layers.
    fn opaque(&mut self, dir_rel: &[u8], rel: &[u8]) -> Result<()> {
        let overlay = matches!(self.mode, WhiteoutMode::Overlay { .. });
        if overlay && !self.is_root {
            return Err(ApplyError::NeedsRoot {
                what: "overlay opaque directory (trusted xattr)",
                path: lossy(rel),
            });
        }
        let Some(dir) = self.dir(dir_rel, overlay, rel)? else {
            return Ok(());
        };
        // In delete mode this removes what lower layers put here; in overlay mode the upper
        // dir normally holds only this layer's entries, but anything else there must go too.
        for child in fsutil::read_dir_names(dir.as_fd_ref())
            .map_err(|e| ApplyError::io("read directory", dir_rel, e))?
        {
            let child_rel = join(dir_rel, child.to_bytes());
            if !self.unpacked.contains(&child_rel) {
                self.remove(&dir, &child, &child_rel)?;
            }
        }
        if overlay {
            let key = cstr(OVERLAY_OPAQUE_XATTR.as_bytes()).expect("no NUL");
            fsutil::fsetxattr(dir.as_fd_ref(), &key, b"y")
                .map_err(|e| ApplyError::io("set opaque xattr on", dir_rel, e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        let times = std::mem::take(&mut self.dir_times);
        for (rel, t) in times.iter().rev() {
            let (parent, name) = split(rel);
            // A directory later replaced or removed by the layer has no time to set.
            let Ok(Some(dir)) = self.dir(parent, false, rel) else {
                continue;
            };
            let cname = cstr(name).map_err(|e| ApplyError::io("name", rel, e))?;
            match fsutil::lstat_at(dir.as_fd_ref(), &cname) {
                Ok(Some(st)) if fsutil::is_dir(&st) => {}
                _ => continue,
            }
            fsutil::lutimes_at(dir.as_fd_ref(), &cname, *t, *t)
                .map_err(|e| ApplyError::io("set times", rel, e))?;
        }
        Ok(std::mem::take(&mut self.implicit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream whose first header announces `size` bytes of GNU long name or PAX records
    /// (`kind` L or x), followed by as many bytes as anyone reads: what a tiny compressed
    /// layer expands to.
    struct Bomb {
        header: Vec<u8>,
        at: usize,
    }

    impl Bomb {
        fn new(kind: u8, size: u64) -> Bomb {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(tar::EntryType::new(kind));
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            Bomb {
                header: h.as_bytes().to_vec(),
                at: 0,
            }
        }
    }

    impl Read for Bomb {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at < self.header.len() {
                let n = buf.len().min(self.header.len() - self.at);
                buf[..n].copy_from_slice(&self.header[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            // PAX-looking records, so a parser has no reason to stop early.
            for (i, b) in buf.iter_mut().enumerate() {
                *b = b"9 a=bcde\n"[(self.at + i) % 9];
            }
            self.at += buf.len();
            Ok(buf.len())
        }
    }

    #[test]
    fn a_4_gib_long_name_or_pax_header_is_refused_without_allocating_it() {
        for kind in [b'L', b'K', b'x'] {
            for gzip in [false, true] {
                let dir = protocol::fuzzing::TempDir::new("corral-bomb");
                let bomb = Bomb::new(kind, 4 << 30);
                let (reader, media): (Box<dyn Read + Send>, _) = if gzip {
                    let z = flate2::read::GzEncoder::new(bomb, flate2::Compression::fast());
                    (Box::new(z), "application/vnd.oci.image.layer.v1.tar+gzip")
                } else {
                    (Box::new(bomb), "application/vnd.oci.image.layer.v1.tar")
                };
                let (r, largest) = protocol::fuzzing::measure(|| {
                    crate::apply::apply_layer(reader, Some(media), dir.path(), WhiteoutMode::Delete)
                });
                let e = r.expect_err("a 4 GiB header is refused");
                assert_eq!(e.code(), crate::Code::InvalidArgument, "{e}");
                assert!(e.to_string().contains("MiB"), "{e}");
                assert!(
                    largest < 16 << 20,
                    "type {} (gzip {gzip}): allocated {largest} bytes at once",
                    kind as char
                );
            }
        }
    }

    #[test]
    fn normalize_strips_and_refuses() {
        assert_eq!(normalize(b"/a//./b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        for bad in [&b"../x"[..], b"a/../../x", b"/../etc/passwd", b"a/.."] {
            let e = normalize(bad).unwrap_err();
            assert!(e.to_string().contains("`..`"), "{e}");
        }
        assert!(normalize(&[b'x'; 256]).is_err());
        assert!(normalize(&[b'x'; 255]).is_ok());
        assert!(normalize(b"a\0b").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1600000000"), Some((1_600_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1600000000.5"),
            Some((1_600_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn split_and_join() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"c"), b"c");
        assert_eq!(join(b"a", b"c"), b"a/c");
    }
}
