//! Content-addressed blob store with containerd's content-store semantics.
//!
//! Blobs are immutable and named by their sha256 [`Digest`]. They arrive through *ingests*: a
//! writer opened by a free-form ref (`layer-sha256:…`, `tar-blobs/sha256/…`), appended to (possibly
//! across several connections or a crash of the writer), then committed, which verifies size and
//! digest and makes the blob visible under its digest.
//!
//! ```text
//!  writer(ref) ──write_at──▶ ingest "ref" (offset, digest so far) ──commit(size, digest)──▶ blob
//!      ▲  drop/crash: ingest stays; writer(ref) again resumes at its offset      │
//!      └──────────────── abort(ref) removes it                                     info/reader_at/
//!                                                                                  update/delete
//! ```
//!
//! What it is not: namespaces, leases and garbage collection belong to the supervisor's metadata
//! layer on top (as containerd's `core/metadata` wraps its local store). The API is blocking; the
//! supervisor calls it through `spawn_blocking`.
//!
//! - [`ContentStore`], [`ContentWriter`], [`ReaderAt`]: the contract every backend honours,
//!   checked by the conformance suite in `testsuite` (feature `testsuite`).
//! - [`local::LocalStore`]: the on-disk backend (`<root>/blobs/sha256/<hex>`).
//! - `walk` and `list_statuses` take containerd's filter language ([`protocol::filters`]).

pub mod digest;
pub mod error;
pub mod local;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

pub use digest::{Digest, Digester};
pub use error::{Code, Error, Result};
pub use local::LocalStore;

/// Labels of a blob: free-form key/value strings (containerd uses them for GC references).
pub type Labels = BTreeMap<String, String>;

/// containerd's limit on one label: key and value together at most 4096 bytes.
pub const MAX_LABEL_SIZE: usize = 4096;

/// What the store knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: Labels,
}

/// State of an in-flight ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub reference: String,
    /// Bytes held for the ref: where the next write must start.
    pub offset: u64,
    /// Expected total size, if a writer declared one.
    pub total: Option<u64>,
    /// Expected digest, if a writer declared one.
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Options for [`ContentStore::writer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOpts {
    pub reference: String,
    pub total: Option<u64>,
    pub expected: Option<Digest>,
}

impl WriterOpts {
    pub fn new(reference: impl Into<String>) -> WriterOpts {
        WriterOpts {
            reference: reference.into(),
            total: None,
            expected: None,
        }
    }

    pub fn total(mut self, total: u64) -> WriterOpts {
        self.total = Some(total);
        self
    }

    pub fn expected(mut self, digest: Digest) -> WriterOpts {
        self.expected = Some(digest);
        self
    }
}

/// Outcome of [`ContentStore::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs re-hashed and found intact.
    pub ok: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Blobs (or stray files) moved aside because their bytes do not match their name.
    pub quarantined: Vec<Quarantined>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The file name under the blob directory.
    pub name: String,
    /// What its bytes hash to now (None if it could not be read).
    pub actual: Option<Digest>,
    pub moved_to: PathBuf,
    pub reason: String,
}

/// A content store: immutable blobs by digest, plus in-flight ingests by ref.
///
/// # Invariants
///
/// 1. A blob readable under digest `D` has exactly the bytes whose sha256 is `D`. Nothing becomes
///    visible under `D` except through a commit that verified it; a failed commit stores nothing.
/// 2. A committed blob is never modified or replaced. Committing the same digest again answers
///    AlreadyExists and keeps the first blob (and its labels).
/// 3. An ingest is named by its ref. At most one writer holds a ref at a time; dropping the writer
///    (or the death of its process) releases the ref and keeps the data, so `writer(ref)` again
///    resumes at [`Status::offset`]. Only [`ContentWriter::commit`] or [`ContentStore::abort`]
///    end an ingest.
/// 4. Labels belong to a blob: set at commit, changed by `update`, gone with `delete`. Each label's
///    key plus value is at most [`MAX_LABEL_SIZE`] bytes.
/// 5. Timestamps: `created_at` is the commit time, `updated_at` the later of it and the last label
///    change.
///
/// # Errors (by [`Code`])
///
/// | method | codes |
/// |---|---|
/// | `info`, `reader_at` | NotFound |
/// | `update` | NotFound; InvalidArgument (a field path other than `labels` / `labels.<k>`, oversized label) |
/// | `walk` | InvalidArgument (filter syntax); whatever the callback returns stops the walk and is returned |
/// | `delete` | NotFound |
/// | `ReaderAt::read_at` | OutOfRange (offset beyond the size; at the size it reads 0 bytes) |
/// | `writer` | InvalidArgument (empty ref); Unavailable (ref held by another writer); AlreadyExists (`expected` is already stored); FailedPrecondition (`total`/`expected` differ from those the ingest was opened with) |
/// | `ContentWriter::write_at` | OutOfRange (offset ≠ current offset) |
/// | `ContentWriter::truncate` | Unimplemented (size ≠ 0) |
/// | `ContentWriter::commit` | InvalidArgument (oversized label); FailedPrecondition (size or digest mismatch: names expected and actual; the ingest is kept so it can be truncated, resumed or aborted; also a writer already committed); AlreadyExists (the blob exists: the ingest is removed, the old blob kept) |
/// | `status`, `abort` | NotFound (no such ref); `abort` also Unavailable (a writer holds the ref) |
/// | `list_statuses` | InvalidArgument (filter syntax; field `ref`) |
///
/// Failures of the underlying storage are Internal (NotFound if a file vanished under us).
///
/// # Example
///
/// ```
/// use content::{ContentStore, Digest, LocalStore, WriterOpts, Labels};
/// # let dir = tempfile::tempdir().unwrap();
/// let store = LocalStore::open(dir.path()).unwrap();
/// let data = b"hello, blob";
/// let digest = Digest::of(data);
///
/// let mut w = store.writer(WriterOpts::new("upload-1").total(data.len() as u64)).unwrap();
/// w.write_at(0, &data[..5]).unwrap();
/// drop(w); // connection lost: the ingest stays, and resumes where it stopped
/// let mut w = store.writer(WriterOpts::new("upload-1")).unwrap();
/// assert_eq!(w.offset(), 5);
/// w.write_at(5, &data[5..]).unwrap();
/// let labels = Labels::from([("k".to_string(), "v".to_string())]);
/// assert_eq!(w.commit(None, Some(&digest), labels).unwrap(), digest);
///
/// let info = store.info(&digest).unwrap();
/// assert_eq!((info.size, info.labels["k"].as_str()), (11, "v"));
/// let mut buf = [0u8; 4];
/// let n = store.reader_at(&digest).unwrap().read_at(&mut buf, 7).unwrap();
/// assert_eq!(&buf[..n], b"blob");
/// ```
pub trait ContentStore: Send + Sync {
    /// Size, timestamps and labels of a committed blob.
    fn info(&self, digest: &Digest) -> Result<Info>;

    /// Changes labels of a blob and returns the new info. `fieldpaths` empty or `["labels"]`:
    /// replace all labels with `info.labels`; `labels.<k>`: set `k` to `info.labels[k]`, or remove
    /// it when `info.labels` lacks `k`. Other fields are immutable.
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info>;

    /// Calls `f` for each blob matching any of `filters` (fields `digest`, `size`, `labels.<k>`;
    /// see [`protocol::filters`]); no filter matches all. Order is unspecified.
    fn walk(&self, filters: &[&str], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()>;

    /// Removes a blob and its labels. Open readers keep reading the old bytes.
    fn delete(&self, digest: &Digest) -> Result<()>;

    /// Random access to a blob.
    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>>;

    /// Opens (creating or resuming) the ingest `opts.reference`.
    fn writer(&self, opts: WriterOpts) -> Result<Box<dyn ContentWriter>>;

    /// Status of an ingest, whether or not a writer holds it.
    fn status(&self, reference: &str) -> Result<Status>;

    /// Statuses of ingests matching any of `filters` (field `ref`).
    fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>>;

    /// Removes an ingest and its data.
    fn abort(&self, reference: &str) -> Result<()>;

    /// Re-hashes every blob; moves any whose bytes do not match its name out of the store (and
    /// drops its labels), so that readers get NotFound instead of wrong bytes and a re-pull can
    /// store it again. Meant for start-up after an unclean shutdown, or on demand.
    fn verify(&self) -> Result<VerifyReport>;
}

/// Random access to one committed blob.
pub trait ReaderAt: Send + Sync {
    fn size(&self) -> u64;

    /// The digest the blob is stored under (what its bytes should hash to).
    fn digest(&self) -> Digest;

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end. OutOfRange past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
}

/// Sequential [`std::io::Read`] over a [`ReaderAt`] from a start offset (for streaming a blob, e.g.
/// into a decompressor when applying a layer).
///
/// Read from the start, the bytes are hashed on the way: once the end is reached, a blob whose
/// bytes do not hash to its digest (damaged on disk) makes that last read fail (InvalidData)
/// instead of ending the stream, and [`DamageProbe::damaged`] says so. Damage is never served
/// as a good end of stream.
pub struct BlobReader {
    inner: Box<dyn ReaderAt>,
    pos: u64,
    /// From offset 0 only: the bytes so far, to check at the end.
    hasher: Option<Digester>,
    probe: DamageProbe,
}

/// Tells, after a [`BlobReader`] was read to its end, whether the blob was damaged (its bytes
/// hashed to something else). Cloned off the reader before it is handed to a consumer.
#[derive(Clone, Default)]
pub struct DamageProbe(Arc<OnceLock<Digest>>);

impl DamageProbe {
    /// What the blob's bytes hashed to, if not to its digest.
    pub fn damaged(&self) -> Option<Digest> {
        self.0.get().copied()
    }
}

impl BlobReader {
    /// OutOfRange if `offset` is beyond the blob's size.
    pub fn new(inner: Box<dyn ReaderAt>, offset: u64) -> Result<BlobReader> {
        // A zero-length read checks the offset the same way every backend does.
        inner.read_at(&mut [], offset)?;
        Ok(BlobReader {
            inner,
            pos: offset,
            hasher: (offset == 0).then(Digester::new),
            probe: DamageProbe::default(),
        })
    }

    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// A probe for damage found once the reader reached the end.
    pub fn probe(&self) -> DamageProbe {
        self.probe.clone()
    }
}

impl std::io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .inner
            .read_at(buf, self.pos)
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        let at_end = self.pos >= self.inner.size() || (n == 0 && !buf.is_empty());
        if at_end && let Some(h) = self.hasher.take() {
            let actual = h.digest();
            let digest = self.inner.digest();
            if actual != digest {
                let _ = self.probe.0.set(actual);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    Error::Damaged { digest, actual },
                ));
            }
        }
        Ok(n)
    }
}

/// The single writer of one ingest. Dropping it releases the ref; the data stays.
pub trait ContentWriter: Send {
    fn reference(&self) -> &str;

    /// Appends `data`, which must start at the current offset (else OutOfRange, nothing written).
    /// Returns the new offset.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u64>;

    /// Appends `data` at the current offset.
    fn write_all(&mut self, data: &[u8]) -> Result<u64> {
        self.write_at(self.offset(), data)
    }

    /// Bytes held so far.
    fn offset(&self) -> u64;

    /// Digest of the bytes held so far.
    fn digest(&self) -> Digest;

    fn status(&self) -> Result<Status>;

    /// Discards the data to restart the ingest; only `0` is supported.
    fn truncate(&mut self, size: u64) -> Result<()>;

    /// Verifies and stores the data as a blob. `size` and `expected` default to the `total` and
    /// `expected` the ingest was opened with; unset means "not checked". Returns the digest.
    fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<Digest>;
}

/// InvalidArgument for labels that break containerd's size limit.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument("label key must not be empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {k:?}"
            )));
        }
    }
    Ok(())
}
