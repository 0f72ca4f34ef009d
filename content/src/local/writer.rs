//! The writer of one local ingest (see the layout and commit order in the parent module).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Inner, fsutil};
use crate::error::{Error, Result};
use crate::{ContentWriter, Digest, Digester, Labels, Status, WriterOpts, validate_labels};
use durable::out_of_space;

pub struct LocalWriter {
    inner: Arc<Inner>,
    reference: String,
    dir: PathBuf,
    /// The flocked ingest directory: holding it is holding the ref.
    _lock: File,
    data: File,
    offset: u64,
    hasher: Digester,
    total: Option<u64>,
    expected: Option<Digest>,
    closed: bool,
}

impl LocalWriter {
    pub(super) fn open(inner: Arc<Inner>, opts: WriterOpts) -> Result<LocalWriter> {
        let WriterOpts {
            reference,
            total,
            expected,
        } = opts;
        if reference.is_empty() {
            return Err(Error::InvalidArgument(
                "ingest ref must not be empty".into(),
            ));
        }
        if let Some(d) = &expected
            && inner.blob_path(d).exists()
        {
            return Err(Error::AlreadyExists(*d));
        }
        let (lock, dir) = inner.lock_ingest(&reference, true)?;
        let write = |name: &str, value: &str| -> Result<()> {
            let path = dir.join(name);
            fsutil::replace(&path, value.as_bytes()).map_err(Error::io("write", path))
        };
        let data_path = dir.join("data");
        let (total, expected) = match inner.read_status(&dir)? {
            None => {
                // New (or never fully initialised): start clean; `ref` last marks it initialised.
                remove_if_exists(&data_path)?;
                for (name, value) in [
                    ("total", total.map(|t| t.to_string())),
                    ("expected", expected.map(|d| d.to_string())),
                ] {
                    match value {
                        Some(v) => write(name, &v)?,
                        None => remove_if_exists(&dir.join(name))?,
                    }
                }
                write("startedat", &now_nanos().to_string())?;
                write("ref", &reference)?;
                (total, expected)
            }
            Some(status) => {
                if status.reference != reference {
                    return Err(Error::Corrupt {
                        path: dir.join("ref"),
                        what: format!(
                            "ref {:?} where {reference:?} was expected",
                            status.reference
                        ),
                    });
                }
                let conflict = |what, stored: String, given: String| Error::ExpectationConflict {
                    ref_: reference.clone(),
                    what,
                    stored,
                    given,
                };
                match (status.total, total) {
                    (Some(s), Some(g)) if s != g => {
                        return Err(conflict("total", s.to_string(), g.to_string()));
                    }
                    (None, Some(g)) => write("total", &g.to_string())?,
                    _ => {}
                }
                match (status.expected, expected) {
                    (Some(s), Some(g)) if s != g => {
                        return Err(conflict("expected", s.to_string(), g.to_string()));
                    }
                    (None, Some(g)) => write("expected", &g.to_string())?,
                    _ => {}
                }
                (status.total.or(total), status.expected.or(expected))
            }
        };
        if let Ok(meta) = fs::metadata(&data_path) {
            if meta.nlink() > 1 {
                // A commit that fell back to link+unlink crashed in between: the data file *is* a
                // blob now, and must not be written to. Start the ingest over.
                log::warn!(
                    "content: ingest {reference:?} data is already committed; restarting it"
                );
                fs::remove_file(&data_path).map_err(Error::io("remove", &data_path))?;
            } else if meta.permissions().mode() & 0o200 == 0 {
                // A crash between commit's chmod and rename.
                fs::set_permissions(&data_path, fs::Permissions::from_mode(0o644))
                    .map_err(Error::io("chmod", &data_path))?;
            }
        }
        let mut data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&data_path)
            .map_err(Error::io("open ingest data", &data_path))?;
        // Resume: the digest so far must cover the bytes already there.
        let mut hasher = Digester::new();
        let mut offset = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Io {
                        op: "read ingest data",
                        path: data_path,
                        source: e,
                    });
                }
            }
        }
        Ok(LocalWriter {
            inner,
            reference,
            dir,
            _lock: lock,
            data,
            offset,
            hasher,
            total,
            expected,
            closed: false,
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            Err(Error::WriterClosed(self.reference.clone()))
        } else {
            Ok(())
        }
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The disk is full: the ingest goes (closing this writer), so that its bytes do not keep
    /// the disk full for everyone else; a client that retries starts the blob over.
    fn discard(&mut self, source: io::Error) -> Error {
        self.closed = true;
        if let Err(e) = self.inner.remove_ingest(&self.dir) {
            log::warn!(
                "content: removing ingest {:?} after running out of space: {e}",
                self.reference
            );
        }
        log::warn!(
            "content: ingest {:?} ran out of space writing {}: removed it",
            self.reference,
            self.data_path().display()
        );
        Error::IngestOutOfSpace {
            ref_: self.reference.clone(),
            path: self.data_path(),
            source,
        }
    }
}

impl ContentWriter for LocalWriter {
    fn reference(&self) -> &str {
        &self.reference
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u64> {
        self.check_open()?;
        if offset != self.offset {
            return Err(Error::WriteOffset {
                ref_: self.reference.clone(),
                offset,
                current: self.offset,
            });
        }
        if let Err(e) = self.data.write_all_at(data, offset) {
            if out_of_space(&e) {
                return Err(self.discard(e));
            }
            // Keep file length == offset == hashed bytes, so a retry (or a resume) stays coherent.
            let _ = self.data.set_len(self.offset);
            return Err(Error::Io {
                op: "write ingest data",
                path: self.data_path(),
                source: e,
            });
        }
        self.hasher.update(data);
        self.offset += data.len() as u64;
        Ok(self.offset)
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    fn digest(&self) -> Digest {
        self.hasher.digest()
    }

    fn status(&self) -> Result<Status> {
        let mut status = self
            .inner
            .read_status(&self.dir)?
            .ok_or_else(|| Error::RefNotFound(self.reference.clone()))?;
        status.offset = self.offset;
        Ok(status)
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        self.check_open()?;
        if size != 0 {
            return Err(Error::TruncateUnsupported {
                ref_: self.reference.clone(),
                size,
            });
        }
        self.data
            .set_len(0)
            .map_err(Error::io("truncate ingest data", self.data_path()))?;
        self.hasher = Digester::new();
        self.offset = 0;
        Ok(())
    }

    fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<Digest> {
        self.check_open()?;
        validate_labels(&labels)?;
        let data_path = self.data_path();
        if let Err(e) = self.data.sync_all() {
            if out_of_space(&e) {
                return Err(self.discard(e));
            }
            return Err(Error::Io {
                op: "fsync ingest data",
                path: data_path,
                source: e,
            });
        }
        if let Some(expected) = size.or(self.total)
            && expected != self.offset
        {
            return Err(Error::SizeMismatch {
                ref_: self.reference.clone(),
                expected,
                actual: self.offset,
            });
        }
        let actual = self.hasher.digest();
        if let Some(expected) = expected.copied().or(self.expected)
            && expected != actual
        {
            return Err(Error::DigestMismatch {
                ref_: self.reference.clone(),
                expected,
                actual,
            });
        }
        let blob = self.inner.blob_path(&actual);
        if blob.exists() {
            self.closed = true;
            self.inner.remove_ingest(&self.dir)?;
            return Err(Error::AlreadyExists(actual));
        }
        // Read-only before it becomes visible: a blob is never writable under its name.
        self.data
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(Error::io("chmod ingest data", &data_path))?;
        failpoint("commit-before-rename");
        match fsutil::rename_noreplace(&data_path, &blob) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Another ref committed the same bytes first.
                self.closed = true;
                self.inner.remove_ingest(&self.dir)?;
                return Err(Error::AlreadyExists(actual));
            }
            Err(e) => {
                let _ = self.data.set_permissions(fs::Permissions::from_mode(0o644));
                return Err(Error::Io {
                    op: "rename ingest data to",
                    path: blob,
                    source: e,
                });
            }
        }
        self.closed = true;
        fsutil::fsync_dir(&self.inner.blobs).map_err(Error::io("fsync", &self.inner.blobs))?;
        failpoint("commit-after-rename");
        // The blob is in place: whatever happens to its labels, the ingest is done with (a
        // failed label write, e.g. on a full disk, must not leave it behind as active).
        let labelled = self.inner.labels.modify(&actual.hex(), |l| *l = labels);
        self.inner.remove_ingest(&self.dir)?;
        labelled?;
        Ok(actual)
    }
}

fn remove_if_exists(path: &std::path::Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            op: "remove",
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Crash-test hook: `CORRAL_CONTENT_FAILPOINT=<name>` SIGKILLs this process at that point, as a
/// power cut or OOM kill would. Compiled only into tests and the `testsuite` feature.
fn failpoint(_name: &str) {
    #[cfg(any(test, feature = "testsuite"))]
    if std::env::var_os("CORRAL_CONTENT_FAILPOINT").is_some_and(|v| v == _name) {
        // SAFETY: kill(2) on our own pid; no memory involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
