//! Diff: the reverse of apply. Turns the difference between two snapshots into an OCI layer.
//!
//! What it is: containerd's "differ" (`diff.Compare`) for committing a container to an image:
//! `lower` is the parent snapshot, `upper` the snapshot on top of it, and the output is a tar
//! (optionally gzip/zstd) that [`crate::apply::apply_layer`] turns `lower` back into `upper` with.
//!
//! ```text
//!  upper = one overlay mount whose lowerdirs are lower's directories
//!        → walk the upperdir only: char 0/0 → `.wh.<name>`, opaque dir → `<dir>/.wh..wh..opq`
//!  anything else
//!        → walk both trees side by side: additions, changes, `.wh.<name>` for deletions
//! ```
//! Output is deterministic: entries sorted by name bytes, parents before children, whiteouts
//! dated at the epoch; PAX records carry long names, nanosecond mtimes and xattrs
//! (`SCHILY.xattr.*`). overlayfs' own `trusted.overlay.*` xattrs are never emitted.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Mount;
use crate::apply::{
    ApplyError, Compression, MountedDir, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, Result,
    WHITEOUT_PREFIX, lxattrs, overlay_dirs, sha256_string,
};

/// What [`diff_mounts`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diffed {
    /// `sha256:<hex>` of the bytes written to the writer (the blob's digest).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the layer's diffID).
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub size: u64,
    /// Size of the written (possibly compressed) stream.
    pub compressed_size: u64,
}

/// Writes the layer that turns `lower` into `upper` to `writer`.
///
/// `lower` may be empty (no parent: every file of `upper` is an addition). Mounts that are
/// neither a bind mount nor an overlay with a known upperdir are mounted read-only on a
/// temporary directory, which needs root.
///
/// Errors: [`crate::Code::InvalidArgument`] for unusable mounts,
/// [`crate::Code::Unimplemented`] for overlay features we cannot diff (redirect_dir,
/// metacopy), [`crate::Code::Unavailable`] when the writer fails, `Internal` for I/O errors.
pub fn diff_mounts(
    lower: &[Mount],
    upper: &[Mount],
    writer: impl Write,
    compression: Compression,
) -> Result<Diffed> {
    if upper.is_empty() {
        return Err(ApplyError::BadMounts {
            op: "diff",
            reason: "no upper mounts given".into(),
        });
    }
    if let [u] = upper
        && let Some((Some(upperdir), lowerdirs)) = overlay_dirs(u)
        && lower_dirs(lower).is_some_and(|l| l == lowerdirs)
    {
        return diff_overlay_upper(&upperdir, writer, compression);
    }
    let empty;
    let lower_mounted;
    let lower_dir: &Path = match lower {
        [] => {
            empty = tempfile::tempdir().map_err(|e| ApplyError::io("create", "temp dir", e))?;
            empty.path()
        }
        [m] if crate::apply::is_bind(m) => Path::new(&m.source),
        _ => {
            lower_mounted = MountedDir::mount(&read_only(lower), "diff")?;
            lower_mounted.path()
        }
    };
    let upper_mounted;
    let upper_dir: &Path = match upper {
        [m] if crate::apply::is_bind(m) => Path::new(&m.source),
        _ => {
            upper_mounted = MountedDir::mount(&read_only(upper), "diff")?;
            upper_mounted.path()
        }
    };
    diff_dirs(lower_dir, upper_dir, writer, compression)
}

/// The directories a lower mount list stands for, top first (as in `lowerdir=`).
fn lower_dirs(lower: &[Mount]) -> Option<Vec<PathBuf>> {
    match lower {
        [] => Some(Vec::new()),
        [m] if crate::apply::is_bind(m) => Some(vec![PathBuf::from(&m.source)]),
        [m] => {
            let (upper, mut lowers) = overlay_dirs(m)?;
            if let Some(u) = upper {
                lowers.insert(0, u);
            }
            Some(lowers)
        }
        _ => None,
    }
}

fn read_only(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            // An overlay with an upperdir needs a workdir and would write; as a view it does not.
            if m.kind == "overlay"
                && let Some((Some(upper), mut lowers)) = overlay_dirs(&m)
            {
                lowers.insert(0, upper);
                let joined: Vec<String> = lowers
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                m.options = vec![format!("lowerdir={}", joined.join(":"))];
            }
            m.options.retain(|o| o != "rw");
            if !m.options.iter().any(|o| o == "ro") {
                m.options.push("ro".into());
            }
            m
        })
        .collect()
}

/// Diffs two plain directory trees (double walk).
pub fn diff_dirs(
    lower: &Path,
    upper: &Path,
    writer: impl Write,
    compression: Compression,
) -> Result<Diffed> {
    let mut w = TarOut::new(writer, compression)?;
    let mut pending = Vec::new();
    double_walk(&mut w, lower, upper, &[], true, &mut pending)?;
    w.finish()
}

/// Diffs an overlay upperdir against its (implicit) lowerdirs by walking the upperdir.
pub fn diff_overlay_upper(
    upperdir: &Path,
    writer: impl Write,
    compression: Compression,
) -> Result<Diffed> {
    let mut w = TarOut::new(writer, compression)?;
    upper_walk(&mut w, upperdir, &[])?;
    w.finish()
}

fn lstat(p: &Path) -> Result<Option<Metadata>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApplyError::io("lstat", p.as_os_str().as_bytes(), e)),
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| ApplyError::io("read directory", dir.as_os_str().as_bytes(), e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| ApplyError::io("read directory", dir.as_os_str().as_bytes(), e))?;
        names.push(e.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

fn child(base: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(std::ffi::OsStr::from_bytes(rel))
    }
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = rel.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn upper_walk<W: Write>(w: &mut TarOut<W>, upper: &Path, rel: &[u8]) -> Result<()> {
    let dir = child(upper, rel);
    for name in sorted_names(&dir)? {
        let crel = join(rel, &name);
        let path = child(upper, &crel);
        let Some(m) = lstat(&path)? else { continue };
        if m.file_type().is_char_device() && m.rdev() == 0 {
            w.whiteout(&join(rel, &[WHITEOUT_PREFIX, &name].concat()))?;
            continue;
        }
        let xattrs = lxattrs(&path).map_err(|e| ApplyError::io("list xattrs", &crel, e))?;
        for (k, _) in &xattrs {
            if k.starts_with(b"trusted.overlay.redirect")
                || k.starts_with(b"trusted.overlay.metacopy")
            {
                return Err(ApplyError::UnsupportedEntry {
                    path: String::from_utf8_lossy(&crel).into_owned(),
                    kind: "overlay redirect/metacopy entry (mount without redirect_dir/metacopy)"
                        .into(),
                });
            }
        }
        w.entry(&crel, &path, &m, &xattrs)?;
        if m.is_dir() {
            let opaque = xattrs
                .iter()
                .any(|(k, v)| k == OVERLAY_OPAQUE_XATTR.as_bytes() && v == b"y");
            if opaque {
                w.whiteout(&join(&crel, OPAQUE_MARKER))?;
            }
            upper_walk(w, upper, &crel)?;
        }
    }
    Ok(())
}

/// Directories entered but not yet written: written just before their first changed child, so
/// every emitted entry has its parents in the layer with upper's attributes.
type Pending = Vec<(Vec<u8>, PathBuf, Metadata, Vec<(Vec<u8>, Vec<u8>)>, bool)>;

fn flush_pending<W: Write>(w: &mut TarOut<W>, pending: &mut Pending) -> Result<()> {
    for (rel, path, m, x, written) in pending.iter_mut() {
        if !*written {
            w.entry(rel, path, m, x)?;
            *written = true;
        }
    }
    Ok(())
}

fn double_walk<W: Write>(
    w: &mut TarOut<W>,
    lower: &Path,
    upper: &Path,
    rel: &[u8],
    lower_is_dir: bool,
    pending: &mut Pending,
) -> Result<()> {
    let unames = sorted_names(&child(upper, rel))?;
    let lnames = if lower_is_dir {
        sorted_names(&child(lower, rel))?
    } else {
        Vec::new()
    };
    // Merge the two sorted lists.
    let (mut i, mut j) = (0, 0);
    while i < lnames.len() || j < unames.len() {
        let (name, in_lower, in_upper) = match (lnames.get(i), unames.get(j)) {
            (Some(l), Some(u)) if l == u => {
                i += 1;
                j += 1;
                (l.clone(), true, true)
            }
            (Some(l), Some(u)) if l < u => {
                i += 1;
                (l.clone(), true, false)
            }
            (Some(l), None) => {
                i += 1;
                (l.clone(), true, false)
            }
            (_, Some(u)) => {
                j += 1;
                (u.clone(), false, true)
            }
            (None, None) => unreachable!("loop condition"),
        };
        let crel = join(rel, &name);
        if !in_upper {
            flush_pending(w, pending)?;
            w.whiteout(&join(rel, &[WHITEOUT_PREFIX, &name].concat()))?;
            continue;
        }
        let upath = child(upper, &crel);
        let Some(um) = lstat(&upath)? else { continue };
        let ux = lxattrs(&upath).map_err(|e| ApplyError::io("list xattrs", &crel, e))?;
        let lm = if in_lower {
            lstat(&child(lower, &crel))?
        } else {
            None
        };
        let same_kind = lm.as_ref().is_some_and(|l| l.file_type() == um.file_type());
        let changed = match &lm {
            Some(l) if same_kind => {
                let lx = lxattrs(&child(lower, &crel))
                    .map_err(|e| ApplyError::io("list xattrs", &crel, e))?;
                differs(l, &um, &lx, &ux, &child(lower, &crel), &upath)?
            }
            _ => true,
        };
        if um.is_dir() {
            pending.push((crel.clone(), upath, um, ux, false));
            if changed {
                flush_pending(w, pending)?;
            }
            double_walk(w, lower, upper, &crel, same_kind, pending)?;
            pending.pop();
        } else if changed {
            flush_pending(w, pending)?;
            w.entry(&crel, &upath, &um, &ux)?;
        }
    }
    Ok(())
}

fn differs(
    l: &Metadata,
    u: &Metadata,
    lx: &[(Vec<u8>, Vec<u8>)],
    ux: &[(Vec<u8>, Vec<u8>)],
    lpath: &Path,
    upath: &Path,
) -> Result<bool> {
    if l.mode() != u.mode()
        || l.uid() != u.uid()
        || l.gid() != u.gid()
        || l.rdev() != u.rdev()
        || lx != ux
    {
        return Ok(true);
    }
    if u.is_dir() {
        // A directory's mtime changes whenever its children do; those are diffed one by one.
        return Ok(false);
    }
    if l.size() != u.size() || l.mtime() != u.mtime() || l.mtime_nsec() != u.mtime_nsec() {
        return Ok(true);
    }
    if u.file_type().is_symlink() {
        let a = std::fs::read_link(lpath)
            .map_err(|e| ApplyError::io("readlink", lpath.as_os_str().as_bytes(), e))?;
        let b = std::fs::read_link(upath)
            .map_err(|e| ApplyError::io("readlink", upath.as_os_str().as_bytes(), e))?;
        return Ok(a != b);
    }
    // Equal second-granular mtimes may hide a change (a copy that truncated timestamps):
    // compare contents then, as containerd does.
    if u.is_file() && u.mtime_nsec() == 0 {
        return Ok(!same_content(lpath, upath)?);
    }
    Ok(false)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let open =
        |p: &Path| File::open(p).map_err(|e| ApplyError::io("open", p.as_os_str().as_bytes(), e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba)
            .map_err(|e| ApplyError::io("read", a.as_os_str().as_bytes(), e))?;
        let nb = read_full(&mut fb, &mut bb)
            .map_err(|e| ApplyError::io("read", b.as_os_str().as_bytes(), e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

type Stack<W> = Hashing<Encoder<Hashing<W>>>;

/// The tar side: entries in, hashed (compressed) bytes out.
struct TarOut<W: Write> {
    builder: tar::Builder<Stack<W>>,
    /// (dev, ino) of files with several links → the first path written, for hardlink entries.
    links: HashMap<(u64, u64), Vec<u8>>,
}

const USTAR_NAME: usize = 100;

impl<W: Write> TarOut<W> {
    fn new(writer: W, compression: Compression) -> Result<Self> {
        let out = Hashing {
            inner: writer,
            hash: Sha256::new(),
            count: 0,
        };
        let enc = match compression {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3).map_err(ApplyError::Write)?)
            }
        };
        let mut builder = tar::Builder::new(Hashing {
            inner: enc,
            hash: Sha256::new(),
            count: 0,
        });
        builder.mode(tar::HeaderMode::Complete);
        Ok(TarOut {
            builder,
            links: HashMap::new(),
        })
    }

    fn finish(self) -> Result<Diffed> {
        let tar_out = self.builder.into_inner().map_err(ApplyError::Write)?;
        let diff_id = sha256_string(tar_out.hash);
        let size = tar_out.count;
        let mut out = tar_out.inner.finish().map_err(ApplyError::Write)?;
        out.flush().map_err(ApplyError::Write)?;
        Ok(Diffed {
            digest: sha256_string(out.hash),
            diff_id,
            size,
            compressed_size: out.count,
        })
    }

    fn whiteout(&mut self, rel: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.write(h, rel, None, &[], None, io::empty())
    }

    fn entry(
        &mut self,
        rel: &[u8],
        path: &Path,
        m: &Metadata,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        let ft = m.file_type();
        let mut h = tar::Header::new_ustar();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mtime(m.mtime().max(0) as u64);
        h.set_size(0);
        let nanos = (m.mtime_nsec() != 0).then(|| (m.mtime(), m.mtime_nsec()));
        let xattrs: Vec<_> = xattrs
            .iter()
            .filter(|(k, _)| !k.starts_with(b"trusted.overlay."))
            .cloned()
            .collect();
        let bad = |e| ApplyError::io("read", path.as_os_str().as_bytes(), e);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            let mut name = rel.to_vec();
            name.push(b'/');
            return self.write(h, &name, None, &xattrs, nanos, io::empty());
        }
        if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(path).map_err(bad)?;
            return self.write(
                h,
                rel,
                Some(target.as_os_str().as_bytes()),
                &xattrs,
                nanos,
                io::empty(),
            );
        }
        if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    h.set_entry_type(tar::EntryType::Link);
                    return self.write(h, rel, Some(&first), &[], None, io::empty());
                }
                self.links.insert(key, rel.to_vec());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.size());
            let f = File::open(path).map_err(bad)?;
            return self.write(h, rel, None, &xattrs, nanos, f.take(m.size()));
        }
        if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            if !ft.is_fifo() {
                let rdev = m.rdev();
                h.set_device_major(libc::major(rdev))
                    .map_err(ApplyError::Write)?;
                h.set_device_minor(libc::minor(rdev))
                    .map_err(ApplyError::Write)?;
            }
            return self.write(h, rel, None, &xattrs, nanos, io::empty());
        }
        // Sockets are not part of a filesystem's content (containerd skips them too).
        Ok(())
    }

    fn write(
        &mut self,
        mut h: tar::Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        nanos: Option<(i64, i64)>,
        data: impl Read,
    ) -> Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if name.len() > USTAR_NAME {
            pax.push(("path".into(), name.to_vec()));
        }
        if let Some(l) = link {
            if l.len() > USTAR_NAME {
                pax.push(("linkpath".into(), l.to_vec()));
            }
            let old = h.as_old_mut();
            let n = l.len().min(USTAR_NAME);
            old.linkname[..n].copy_from_slice(&l[..n]);
        }
        if let Some((s, ns)) = nanos {
            pax.push(("mtime".into(), format!("{s}.{ns:09}").into_bytes()));
        }
        for (k, v) in xattrs {
            pax.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                v.clone(),
            ));
        }
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(ApplyError::Write)?;
        }
        let n = name.len().min(USTAR_NAME);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        self.builder.append(&h, data).map_err(ApplyError::Write)
    }
}
