//! The local content store: blobs as read-only files named by digest, ingests as directories
//! named by a hash of their ref, labels in redb.
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex>           committed blob, mode 0444, never rewritten
//!   ingest/<sha256(ref)>/        one in-flight ingest; its writer holds flock(LOCK_EX) on this dir
//!     ref                        the ref (written last at creation: its presence = initialised)
//!     startedat  total  expected nanoseconds since epoch / bytes / digest (atomically written)
//!     data                       bytes so far; its length is the resume offset, its mtime updated_at
//!   quarantine/<hex>.<nanos>     blobs `verify` found corrupt
//!   labels.redb                  see `labels`
//! ```
//!
//! Refs are free-form (`/`, spaces, anything): hashing them gives a fixed, safe directory name.
//! The lock is a flock on the ingest directory, so a writer that crashes (or is SIGKILLed) releases
//! its ref with its file descriptors, and the next writer resumes at the data length. A writer
//! that finds its ref held tries again for about half a second before answering Unavailable (see
//! `Inner::lock_ingest`), as containerd's store does.
//!
//! Commit order (crash-safe at every step, see the crash tests):
//! fsync data → verify size and digest → chmod 0444 → rename(NOREPLACE) into blobs/ → fsync blobs/
//! → labels (redb transaction) → remove the ingest. A crash before the rename leaves a resumable
//! or abortable ingest and no blob; after it, a complete blob.
//!
//! Durability of an ingest: nothing of it is synced before its commit. Data writes are not
//! fsynced one by one (that would cap throughput far below the disk's); the data length survives
//! a process crash exactly, and after a power loss any torn tail is caught by the digest check at
//! commit (the client then truncates and restarts), never stored. Its directory and metadata
//! files are written by rename (whole or not at all to any process, and after a process crash)
//! but not synced, as containerd's are not: syncing them cost nine fsyncs per blob, a quarter of
//! a small image's pull. After a power loss an ingest whose `ref` does not hash to its directory's
//! name, or whose `startedat`, `total` or `expected` is torn, is damaged: it reads as not
//! initialised, and the next writer of its ref starts it over. What a commit stores is checked
//! against the writer's own `total` and `expected`, held in memory, never against the files.

mod fsutil;
mod labels;
mod writer;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::{
    ContentStore, ContentWriter, Digest, Digester, Info, Quarantined, ReaderAt, Status,
    VerifyReport, WriterOpts, validate_labels,
};
use labels::LabelDb;
use protocol::filters::{Fields, Filters};
pub use writer::LocalWriter;

/// How many times a writer (or an abort) tries to take a ref held by another writer.
pub const LOCK_TRIES: u32 = 10;
/// The pause after the first failed try; it doubles after each one.
const LOCK_FIRST_PAUSE: Duration = Duration::from_millis(1);

/// The on-disk content store. Cheap to clone; all clones share one label database.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
    labels: LabelDb,
}

impl LocalStore {
    /// Opens (creating if needed) the store at `root`, and drops label entries of blobs that are
    /// gone (e.g. a crash between a delete's two steps).
    pub fn open(root: impl AsRef<Path>) -> Result<LocalStore> {
        let root = root.as_ref().to_owned();
        let blobs = root.join("blobs").join(Digest::ALGORITHM);
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        }
        // The directories' own entries must be durable before any blob is renamed into them.
        for dir in [root.as_path(), &root.join("blobs")] {
            fsutil::fsync_dir(dir).map_err(Error::io("fsync", dir))?;
        }
        let labels = LabelDb::open(&root.join("labels.redb"))?;
        let inner = Inner {
            root,
            blobs,
            ingest,
            labels,
        };
        let orphans: Vec<String> = inner
            .labels
            .all()?
            .into_keys()
            .filter(|hex| !inner.blobs.join(hex).exists())
            .collect();
        if !orphans.is_empty() {
            log::warn!(
                "content {}: dropping labels of {} missing blobs",
                inner.root.display(),
                orphans.len()
            );
            inner
                .labels
                .remove(&orphans.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(LocalStore {
            inner: Arc::new(inner),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    fn info_from(&self, digest: Digest, meta: &fs::Metadata, entry: Option<labels::Entry>) -> Info {
        let created_at = meta.modified().unwrap_or(UNIX_EPOCH);
        let (labels, changed) = entry.unwrap_or_default();
        let updated_at = changed.map_or(created_at, |c| c.max(created_at));
        Info {
            digest,
            size: meta.len(),
            created_at,
            updated_at,
            labels,
        }
    }

    fn blob_meta(&self, digest: &Digest) -> Result<fs::Metadata> {
        let path = self.inner.blob_path(digest);
        fs::metadata(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(*digest),
            _ => Error::Io {
                op: "stat blob",
                path,
                source: e,
            },
        })
    }

    /// Moves blob `digest` out of the store because it is damaged (a read found its bytes
    /// hash to `actual`, or its size is wrong): readers get NotFound from now on instead of
    /// wrong bytes, and a new download can store it again. Its labels go with it.
    pub fn quarantine_blob(
        &self,
        digest: &Digest,
        actual: Option<Digest>,
        reason: String,
    ) -> Result<Quarantined> {
        self.quarantine(&digest.hex(), actual, reason)
    }

    fn quarantine(
        &self,
        name: &str,
        actual: Option<Digest>,
        reason: String,
    ) -> Result<Quarantined> {
        let dir = self.inner.root.join("quarantine");
        fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let from = self.inner.blobs.join(name);
        let to = dir.join(format!("{name}.{nanos}"));
        // Labels first: they must never point at a blob that is gone.
        if Digest::from_hex(name).is_ok() {
            self.inner.labels.remove(&[name])?;
        }
        fs::rename(&from, &to).map_err(Error::io("move to quarantine", &from))?;
        fsutil::fsync_dir(&self.inner.blobs).map_err(Error::io("fsync", &self.inner.blobs))?;
        fsutil::fsync_dir(&dir).map_err(Error::io("fsync", &dir))?;
        log::error!(
            "content {}: quarantined {name} to {}: {reason}",
            self.inner.root.display(),
            to.display()
        );
        Ok(Quarantined {
            name: name.to_owned(),
            actual,
            moved_to: to,
            reason,
        })
    }
}

impl Inner {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.ingest.join(Digest::of(reference.as_bytes()).hex())
    }

    /// Locks the ingest directory of `reference`, creating it if `create`. Returns the locked
    /// directory handle (the lock lives as long as it) and the directory.
    ///
    /// A ref held by another writer is tried again [`LOCK_TRIES`] times, pausing 1 ms, 2 ms,
    /// 4 ms… in between (about half a second in all) before the answer is [`Error::RefLocked`],
    /// as containerd's store does: a client's writer Close returns as soon as its side of the
    /// stream is closed, before the server has dropped the writer, so a client that closes a
    /// writer and at once opens the same ref again races the release. Nothing is held while
    /// waiting (a failed flock holds nothing, and the handle is dropped first).
    fn lock_ingest(&self, reference: &str, create: bool) -> Result<(File, PathBuf)> {
        let mut pause = LOCK_FIRST_PAUSE;
        let mut tries = 1;
        loop {
            match self.try_lock_ingest(reference, create) {
                Err(Error::RefLocked(_)) if tries < LOCK_TRIES => {
                    std::thread::sleep(pause);
                    pause *= 2;
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    /// One attempt of [`Inner::lock_ingest`]: [`Error::RefLocked`] at once if the ref is held.
    fn try_lock_ingest(&self, reference: &str, create: bool) -> Result<(File, PathBuf)> {
        if reference.is_empty() {
            return Err(Error::InvalidArgument(
                "ingest ref must not be empty".into(),
            ));
        }
        let dir = self.ingest_dir(reference);
        // Retry only if the directory is removed or replaced between open and lock (an abort or
        // commit racing us); each round makes progress, so a few rounds are plenty.
        for _ in 0..16 {
            if create {
                match fs::create_dir(&dir) {
                    // Not synced: an ingest directory lost to a power loss is an ingest to start
                    // over, like its files (see the module doc).
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::Io {
                            op: "create ingest directory",
                            path: dir,
                            source: e,
                        });
                    }
                }
            }
            let handle = match File::open(&dir) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::RefNotFound(reference.into()));
                }
                Err(e) => {
                    return Err(Error::Io {
                        op: "open ingest directory",
                        path: dir,
                        source: e,
                    });
                }
            };
            if !fsutil::try_lock_exclusive(&handle)
                .map_err(Error::io("lock ingest directory", &dir))?
            {
                return Err(Error::RefLocked(reference.into()));
            }
            let held = handle
                .metadata()
                .map_err(Error::io("stat ingest directory", &dir))?;
            match fs::metadata(&dir) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok((handle, dir));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::RefNotFound(reference.into()));
                }
                Err(e) => {
                    return Err(Error::Io {
                        op: "stat ingest directory",
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        Err(Error::RefLocked(reference.into()))
    }

    /// Reads an ingest's status from its files; None if it is not (or no longer) initialised,
    /// or damaged by a power loss (see the module doc), which is logged.
    fn read_status(&self, dir: &Path) -> Result<Option<Status>> {
        match self.read_status_files(dir) {
            Err(Error::Corrupt { path, what }) => {
                log::warn!(
                    "content: ingest {} is damaged ({}: {what}); it will be started over",
                    dir.display(),
                    path.display()
                );
                Ok(None)
            }
            r => r,
        }
    }

    /// [`Inner::read_status`], with damage as [`Error::Corrupt`].
    fn read_status_files(&self, dir: &Path) -> Result<Option<Status>> {
        let reference = match fs::read(dir.join("ref")) {
            Ok(r) => String::from_utf8_lossy(&r).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    op: "read",
                    path: dir.join("ref"),
                    source: e,
                });
            }
        };
        let corrupt = |name: &str, what: String| Error::Corrupt {
            path: dir.join(name),
            what,
        };
        if dir.file_name().and_then(|n| n.to_str())
            != Some(Digest::of(reference.as_bytes()).hex().as_str())
        {
            return Err(corrupt(
                "ref",
                format!("ref {reference:?} is not the one this directory is named for"),
            ));
        }
        let started_at = read_opt(&dir.join("startedat"))?
            .ok_or_else(|| corrupt("startedat", "no such file".into()))
            .and_then(|s| {
                s.parse()
                    .map_err(|_| corrupt("startedat", format!("a bad time {s:?}")))
            })
            .map(from_nanos)?;
        let total = read_opt(&dir.join("total"))?
            .map(|s| parse_total(&dir.join("total"), &s))
            .transpose()?;
        let expected = read_opt(&dir.join("expected"))?
            .map(|s| {
                Digest::parse(&s).map_err(|_| corrupt("expected", format!("a bad digest {s:?}")))
            })
            .transpose()?;
        let (offset, updated_at) = match fs::metadata(dir.join("data")) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, None),
            Err(e) => {
                return Err(Error::Io {
                    op: "stat",
                    path: dir.join("data"),
                    source: e,
                });
            }
        };
        // File times come from the kernel's coarse clock and may trail `startedat` slightly.
        let updated_at = updated_at.map_or(started_at, |u| u.max(started_at));
        Ok(Some(Status {
            reference,
            offset,
            total,
            expected,
            started_at,
            updated_at,
        }))
    }

    /// Removes a locked ingest directory: `ref` first, so a half-removed ingest reads as absent.
    fn remove_ingest(&self, dir: &Path) -> Result<()> {
        match fs::remove_file(dir.join("ref")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    op: "remove",
                    path: dir.join("ref"),
                    source: e,
                });
            }
        }
        fs::remove_dir_all(dir).map_err(Error::io("remove ingest", dir))
    }
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            op: "read",
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn parse_total(path: &Path, s: &str) -> Result<u64> {
    s.parse().map_err(|_| Error::Corrupt {
        path: path.to_owned(),
        what: format!("a bad total {s:?}"),
    })
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "digest" => Some(self.digest.to_string()),
            [f] if f == "size" => Some(self.size.to_string()),
            [f, key @ ..] if f == "labels" && !key.is_empty() => {
                self.labels.get(&key.join(".")).cloned()
            }
            _ => None,
        }
    }
}

impl Fields for Status {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.reference.clone()),
            [f] if f == "expected" => self.expected.map(|d| d.to_string()),
            _ => None,
        }
    }
}

impl ContentStore for LocalStore {
    fn info(&self, digest: &Digest) -> Result<Info> {
        let meta = self.blob_meta(digest)?;
        let entry = self.inner.labels.get(&digest.hex())?;
        Ok(self.info_from(*digest, &meta, Some(entry)))
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let mut replace_all = fieldpaths.is_empty();
        let mut keys = Vec::new();
        for path in fieldpaths {
            match path.strip_prefix("labels") {
                Some("") => replace_all = true,
                Some(key) if key.starts_with('.') && key.len() > 1 => keys.push(&key[1..]),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {path:?} field on content info {}",
                        info.digest
                    )));
                }
            }
        }
        validate_labels(&info.labels)?;
        let meta = self.blob_meta(&info.digest)?;
        let hex = info.digest.hex();
        let (labels, changed) = self.inner.labels.modify(&hex, |labels| {
            if replace_all {
                labels.clone_from(&info.labels);
            }
            for key in &keys {
                match info.labels.get(*key) {
                    Some(v) => labels.insert((*key).to_owned(), v.clone()),
                    None => labels.remove(*key),
                };
            }
        })?;
        // A concurrent delete may have removed the blob after our check; don't leave labels behind.
        if let Err(e) = self.blob_meta(&info.digest) {
            self.inner.labels.remove(&[&hex])?;
            return Err(e);
        }
        Ok(self.info_from(info.digest, &meta, Some((labels, Some(changed)))))
    }

    fn walk(&self, filters: &[&str], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let filters = Filters::parse_all(filters)?;
        let blobs = &self.inner.blobs;
        let mut all_labels = self.inner.labels.all()?;
        for entry in fs::read_dir(blobs).map_err(Error::io("read directory", blobs))? {
            let entry = entry.map_err(Error::io("read directory", blobs))?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                log::warn!(
                    "content: ignoring stray file {} (verify quarantines it)",
                    entry.path().display()
                );
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => {
                    return Err(Error::Io {
                        op: "stat blob",
                        path: entry.path(),
                        source: e,
                    });
                }
            };
            let info = self.info_from(digest, &meta, all_labels.remove(&digest.hex()));
            if filters.matches(&info) {
                f(&info)?;
            }
        }
        Ok(())
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        self.blob_meta(digest)?;
        let hex = digest.hex();
        self.inner.labels.remove(&[&hex])?;
        let path = self.inner.blob_path(digest);
        fs::remove_file(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(*digest),
            _ => Error::Io {
                op: "remove blob",
                path,
                source: e,
            },
        })?;
        fsutil::fsync_dir(&self.inner.blobs).map_err(Error::io("fsync", &self.inner.blobs))
    }

    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>> {
        let path = self.inner.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(*digest),
            _ => Error::Io {
                op: "open blob",
                path: path.clone(),
                source: e,
            },
        })?;
        let size = file
            .metadata()
            .map_err(Error::io("stat blob", &path))?
            .len();
        Ok(Box::new(LocalReader {
            file,
            size,
            digest: *digest,
            path,
        }))
    }

    fn writer(&self, opts: WriterOpts) -> Result<Box<dyn ContentWriter>> {
        Ok(Box::new(LocalWriter::open(self.inner.clone(), opts)?))
    }

    fn status(&self, reference: &str) -> Result<Status> {
        if reference.is_empty() {
            return Err(Error::InvalidArgument(
                "ingest ref must not be empty".into(),
            ));
        }
        self.inner
            .read_status(&self.inner.ingest_dir(reference))?
            .ok_or_else(|| Error::RefNotFound(reference.into()))
    }

    fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>> {
        let filters = Filters::parse_all(filters)?;
        let ingest = &self.inner.ingest;
        let mut out = Vec::new();
        for entry in fs::read_dir(ingest).map_err(Error::io("read directory", ingest))? {
            let entry = entry.map_err(Error::io("read directory", ingest))?;
            match self.inner.read_status(&entry.path()) {
                Ok(Some(status)) if filters.matches(&status) => out.push(status),
                Ok(_) => {}
                // Removed by a concurrent commit/abort while we read it.
                Err(e) if e.code() == crate::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn abort(&self, reference: &str) -> Result<()> {
        let (_lock, dir) = self.inner.lock_ingest(reference, false)?;
        if self.inner.read_status(&dir)?.is_none() {
            // A directory left by a writer that crashed before initialising it, or damaged by a
            // power loss: not an ingest.
            self.inner.remove_ingest(&dir)?;
            return Err(Error::RefNotFound(reference.into()));
        }
        self.inner.remove_ingest(&dir)
    }

    fn verify(&self) -> Result<VerifyReport> {
        let blobs = &self.inner.blobs;
        let mut report = VerifyReport::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut names: Vec<_> = fs::read_dir(blobs)
            .map_err(Error::io("read directory", blobs))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(Error::io("read directory", blobs))?;
        names.sort();
        for name in names {
            let name = name.to_string_lossy().into_owned();
            let Ok(digest) = Digest::from_hex(&name) else {
                report.quarantined.push(self.quarantine(
                    &name,
                    None,
                    "not named by a sha256 digest".into(),
                )?);
                continue;
            };
            let path = blobs.join(&name);
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => {
                    return Err(Error::Io {
                        op: "open blob",
                        path,
                        source: e,
                    });
                }
            };
            let mut hasher = Digester::new();
            let mut read_err = None;
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        report.bytes += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        read_err = Some(e);
                        break;
                    }
                }
            }
            let actual = hasher.digest();
            match read_err {
                Some(e) => report.quarantined.push(self.quarantine(
                    &name,
                    None,
                    format!("unreadable: {e}"),
                )?),
                None if actual != digest => report.quarantined.push(self.quarantine(
                    &name,
                    Some(actual),
                    format!("content hashes to {actual}, not {digest}"),
                )?),
                None => report.ok += 1,
            }
        }
        Ok(report)
    }
}

/// Reader of one blob. It keeps the file open, so a concurrent delete does not cut it short.
pub struct LocalReader {
    file: File,
    size: u64,
    digest: Digest,
    path: PathBuf,
}

impl ReaderAt for LocalReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn digest(&self) -> Digest {
        self.digest
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset > self.size {
            return Err(Error::ReadPastEnd {
                digest: self.digest,
                offset,
                size: self.size,
            });
        }
        let want = buf.len().min((self.size - offset) as usize);
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Io {
                        op: "read blob",
                        path: self.path.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests;
