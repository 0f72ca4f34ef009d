//! State on disk that survives damage and a full disk: the redb databases of corral (corrald's
//! metadata, the content store's labels, each snapshotter's records) are opened and kept open
//! through this crate.
//!
//! What it is: [`open`], which tells a damaged file from a missing one and never panics, and
//! [`Database`], a redb database that reopens itself after an I/O error. What it is not: a
//! schema, a record format or a policy on what to do with a damaged file — each owner decides
//! that (corrald refuses to start on damaged metadata; the content store sets damaged labels
//! aside).
//!
//! Two redb behaviours make this crate necessary (redb 2.6):
//!
//! - **A damaged file panics redb.** A file cut short or overwritten with garbage makes
//!   `Database::create` panic (an index out of range, an assertion) or answer with an I/O error
//!   that names no cause; an empty file is silently made a new, empty database, which would
//!   make corrald forget every image while the blobs it has stay on disk. [`open`] refuses an
//!   empty file, catches the panic (quietly: no backtrace on stderr), checks every page's
//!   checksum ([`redb::Database::check_integrity`]) and answers [`OpenError::Damaged`] with the
//!   path and the cause.
//!
//! - **One failed write poisons the handle.** After any I/O error (ENOSPC when the disk is
//!   full, a quota, EIO) every later transaction of that `redb::Database` fails with
//!   `PreviousIo` ("close and re-open the database") even once space is free again, so a
//!   daemon would stay broken until restarted. The commit that failed may still have become
//!   durable (seen on tmpfs: a record whose commit answered ENOSPC was there after reopening):
//!   a caller must treat a failed commit as "may or may not have happened", as it would a lost
//!   reply. [`Database`] notes the error and, at the next transaction, drops the poisoned handle
//!   and opens the file again, which makes redb repair it to its last durable commit.
//!
//! ```text
//!   begin_write ──▶ handle ok? ──yes──▶ redb transaction ──commit──▶ Ok / Err(Io) ─┐
//!                      │ no (an I/O error was seen)                                  │
//!                      ▼                                                             │
//!              wait for the old handle's last transaction, reopen (redb repairs) ◀──┘ marks
//! ```

use std::cell::Cell;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use protocol::Code;
use redb::{CommitError, DatabaseError, ReadTransaction, StorageError, TransactionError};

/// How long a reopen waits for transactions still running on the failed handle (they hold
/// redb's file lock) before giving up for this call.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// Why a database file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process (or another handle in this one) has the file open.
    #[error("{} is in use by another process", path.display())]
    InUse { path: PathBuf },
    /// The file is not a usable database: cut short, overwritten, or failing its checksums.
    #[error("{} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    /// The file could not be read or written (a full disk, permissions, EIO).
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl OpenError {
    pub fn code(&self) -> Code {
        match self {
            OpenError::InUse { .. } => Code::Unavailable,
            OpenError::Damaged { .. } => Code::DataLoss,
            OpenError::Io { source, .. } if out_of_space(source) => Code::ResourceExhausted,
            OpenError::Io { .. } => Code::Internal,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            OpenError::InUse { path }
            | OpenError::Damaged { path, .. }
            | OpenError::Io { path, .. } => path,
        }
    }
}

/// True for ENOSPC and EDQUOT: the caller can free space and try again.
pub fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The error class of a redb error: a full disk is ResourceExhausted, a damaged file
/// DataLoss, a handle waiting to be reopened Unavailable, anything else Internal.
pub fn code_of(e: &redb::Error) -> Code {
    match e {
        redb::Error::Io(io) if out_of_space(io) => Code::ResourceExhausted,
        redb::Error::Corrupted(_) => Code::DataLoss,
        redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// What [`open`] found.
pub struct Opened {
    pub db: Database,
    /// The file failed its integrity check and redb repaired it (to its last intact commit):
    /// the owner should say so.
    pub repaired: bool,
}

/// Opens the database at `path`, creating it if the file does not exist.
///
/// An existing file must be a sound database: an empty file, one redb cannot read, one that
/// makes redb panic and one whose pages fail their checksums beyond repair are
/// [`OpenError::Damaged`] (the file is left as it is). A file redb could repair is opened with
/// [`Opened::repaired`] set. The check reads every page, which for corral's databases (a few
/// megabytes) takes milliseconds.
pub fn open(path: &Path) -> Result<Opened, OpenError> {
    let damaged = |reason: String| OpenError::Damaged {
        path: path.to_owned(),
        reason,
    };
    match std::fs::metadata(path) {
        // redb would make an empty file a new, empty database: the records it held would be
        // forgotten without a word.
        Ok(m) if m.len() == 0 => {
            return Err(damaged(
                "the file is empty (0 bytes): it was cut short".into(),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(OpenError::Io {
                path: path.to_owned(),
                source,
            });
        }
    }
    let mut db = create(path)?;
    let repaired = match quietly(|| db.check_integrity()) {
        Ok(Ok(clean)) => !clean,
        Ok(Err(e)) => return Err(open_error(path, e)),
        Err(panic) => return Err(damaged(format!("its integrity check failed ({panic})"))),
    };
    if repaired {
        log::warn!(
            "{}: failed its integrity check; redb repaired it to its last intact commit",
            path.display()
        );
    }
    Ok(Opened {
        db: Database {
            path: path.to_owned(),
            slot: Mutex::new(Slot {
                db: Some(Arc::new(db)),
                failed: false,
            }),
        },
        repaired,
    })
}

/// redb's page cache per database, for reads and writes together. redb's default is 1 GiB,
/// which keeps every page it has read: the integrity check at open reads them all, so each of
/// corrald's three databases stayed whole in its heap (1.4 MB of an idle corrald's 4 MB). A
/// page not cached is read from the kernel's page cache; corral's records are small and few
/// per call.
pub const CACHE_BYTES: usize = 256 * 1024;

/// `redb::Database::create` with its panics and errors turned into [`OpenError`].
fn create(path: &Path) -> Result<redb::Database, OpenError> {
    match quietly(|| {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
    }) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(panic) => Err(OpenError::Damaged {
            path: path.to_owned(),
            reason: format!("redb cannot read it ({panic})"),
        }),
    }
}

fn open_error(path: &Path, e: DatabaseError) -> OpenError {
    let path = path.to_owned();
    let damaged = |reason: String| OpenError::Damaged {
        path: path.clone(),
        reason,
    };
    match e {
        DatabaseError::DatabaseAlreadyOpen => OpenError::InUse { path },
        DatabaseError::UpgradeRequired(v) => damaged(format!(
            "it is in redb file format {v}, which this build does not read"
        )),
        DatabaseError::Storage(StorageError::Corrupted(m)) => damaged(m),
        // A header or page that ends early or holds nonsense: redb reports it as an I/O error.
        DatabaseError::Storage(StorageError::Io(source))
            if matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) =>
        {
            damaged(format!("{source} (the file is cut short or overwritten)"))
        }
        DatabaseError::Storage(StorageError::Io(source)) => OpenError::Io { path, source },
        e => damaged(e.to_string()),
    }
}

thread_local! {
    /// Set while [`quietly`] runs: the panic hook stays silent on this thread.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without the panic hook printing it (a
/// damaged file is reported once, by the caller, in words). Other threads' panics are printed
/// as before.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        // Assertion messages span lines; a log line does not.
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    })
}

/// The storage error of a failed `begin_*`: the only kind redb returns there (the other
/// variant belongs to closing a read transaction).
fn storage(e: TransactionError) -> StorageError {
    match e {
        TransactionError::Storage(e) => e,
        e => StorageError::Corrupted(e.to_string()),
    }
}

/// A redb database that reopens itself after an I/O error (see the module docs). Use
/// [`Database::begin_write`], [`Database::begin_read`] and [`Database::commit`] in place of
/// redb's own; report other storage errors with [`Database::note`].
pub struct Database {
    path: PathBuf,
    slot: Mutex<Slot>,
}

struct Slot {
    /// None while a reopen has not succeeded yet.
    db: Option<Arc<redb::Database>>,
    /// An I/O error was seen: the handle is poisoned and must be reopened.
    failed: bool,
}

impl Database {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Begins a write transaction, reopening the database first if an I/O error poisoned it.
    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        match self.handle()?.begin_write().map_err(storage) {
            Err(StorageError::PreviousIo) => {
                // A write failed on another path that did not tell us: reopen now.
                self.mark_failed();
                self.handle()?.begin_write().map_err(storage)
            }
            r => r,
        }
    }

    /// Begins a read transaction, reopening the database first if an I/O error poisoned it.
    pub fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        self.handle()?.begin_read().map_err(storage)
    }

    /// Commits `tx`; an I/O error marks the handle for reopening. A commit that failed may
    /// still be durable (see the module docs).
    pub fn commit(&self, tx: redb::WriteTransaction) -> Result<(), CommitError> {
        tx.commit().inspect_err(|e| {
            if let CommitError::Storage(StorageError::Io(_) | StorageError::PreviousIo) = e {
                self.mark_failed();
            }
        })
    }

    /// Reports an error seen inside a transaction: after an I/O error the next transaction
    /// reopens the database.
    pub fn note(&self, e: &redb::Error) {
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.mark_failed();
        }
    }

    fn mark_failed(&self) {
        let mut slot = self.lock();
        if !slot.failed {
            log::warn!(
                "{}: an I/O error poisoned the database handle; reopening it at the next transaction",
                self.path.display()
            );
        }
        slot.failed = true;
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current handle, reopened first if needed.
    ///
    /// The reopen runs under the slot's lock, file I/O included (redb repairs the file as it
    /// opens it): every caller needs the new handle, so they wait for it rather than each
    /// failing on the old one.
    fn handle(&self) -> Result<Arc<redb::Database>, StorageError> {
        let mut slot = self.lock();
        if slot.failed || slot.db.is_none() {
            self.reopen(&mut slot)?;
        }
        Ok(slot.db.clone().expect("reopen leaves a handle"))
    }

    fn reopen(&self, slot: &mut Slot) -> Result<(), StorageError> {
        let deadline = Instant::now() + REOPEN_WAIT;
        // Callers between `handle` and their `begin_*` still hold the old handle: wait for
        // them, then drop it.
        if let Some(mut old) = slot.db.take() {
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        slot.db = Some(still);
                        return Err(StorageError::PreviousIo);
                    }
                }
            }
        }
        // Transactions begun on the old handle keep redb's file lock until they end.
        loop {
            match create(&self.path) {
                Ok(db) => {
                    log::warn!(
                        "{}: reopened after an I/O error (redb repaired it to its last durable commit)",
                        self.path.display()
                    );
                    slot.db = Some(Arc::new(db));
                    slot.failed = false;
                    return Ok(());
                }
                Err(OpenError::InUse { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(OpenError::InUse { .. }) => {
                    return Err(StorageError::PreviousIo);
                }
                Err(OpenError::Io { source, .. }) => {
                    return Err(StorageError::Io(source));
                }
                Err(e @ OpenError::Damaged { .. }) => {
                    log::error!("reopening after an I/O error: {e}");
                    return Err(StorageError::Corrupted(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<&str, &str> = TableDefinition::new("t");

    fn put(db: &Database, k: &str, v: &str) -> Result<(), Box<redb::Error>> {
        let tx = db.begin_write().map_err(|e| Box::new(e.into()))?;
        tx.open_table(T)
            .map_err(|e| Box::new(e.into()))?
            .insert(k, v)
            .map_err(|e| Box::new(e.into()))?;
        db.commit(tx).map_err(|e| Box::new(e.into()))?;
        Ok(())
    }

    fn get(db: &Database, k: &str) -> Option<String> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        t.get(k).unwrap().map(|v| v.value().to_string())
    }

    #[test]
    fn a_new_file_is_created_and_reopened_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.redb");
        {
            let o = open(&p).unwrap();
            assert!(!o.repaired);
            put(&o.db, "a", "1").unwrap();
            let e = open(&p).err().expect("second open");
            assert_eq!(e.code(), Code::Unavailable, "{e}");
        }
        let o = open(&p).unwrap();
        assert_eq!(get(&o.db, "a").as_deref(), Some("1"));
    }

    fn damaged_reason(p: &Path) -> String {
        match open(p) {
            Err(OpenError::Damaged { path, reason }) => {
                assert_eq!(path, p);
                reason
            }
            Err(e) => panic!("expected Damaged, got {e:?}"),
            Ok(_) => panic!("a damaged file opened"),
        }
    }

    /// Every way of damaging a file is reported as Damaged with its path: never a panic,
    /// never a silently empty database.
    #[test]
    fn damaged_files_are_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.redb");
        {
            let o = open(&good).unwrap();
            let tx = o.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(T).unwrap();
                for i in 0..2000 {
                    t.insert(format!("key{i}").as_str(), "v".repeat(100).as_str())
                        .unwrap();
                }
            }
            o.db.commit(tx).unwrap();
        }
        let bytes = std::fs::read(&good).unwrap();
        let case = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            let reason = damaged_reason(&p);
            let e = OpenError::Damaged {
                path: p.clone(),
                reason: reason.clone(),
            };
            assert_eq!(e.code(), Code::DataLoss);
            assert!(e.to_string().contains(p.to_str().unwrap()), "{e}");
            // The file is left for the owner to inspect or set aside.
            assert_eq!(std::fs::read(&p).unwrap(), data, "{name} was changed");
            reason
        };
        let reason = case("empty.redb", &[]);
        assert!(reason.contains("empty"), "{reason}");
        case("short.redb", &bytes[..300]);
        case("half.redb", &bytes[..bytes.len() / 2]);
        let mut garbage = bytes.clone();
        for b in &mut garbage[4096..4096 * 20] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        case("garbage.redb", &garbage);
        let mut header = bytes.clone();
        header[..512].fill(0xa5);
        case("header.redb", &header);
    }

    /// A poisoned handle (as after ENOSPC) is reopened at the next transaction: writes and
    /// reads work again without a new `open`, and what was committed before is there.
    #[test]
    fn an_io_error_is_recovered_by_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(&dir.path().join("db.redb")).unwrap();
        put(&o.db, "before", "1").unwrap();
        o.db.note(&redb::Error::Io(io::Error::from_raw_os_error(28)));
        // A read transaction begun before the error keeps the old handle's file lock for a
        // while: the reopen waits for it.
        let reader = o.db.lock().db.clone().unwrap().begin_read().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(reader);
        });
        put(&o.db, "after", "2").unwrap();
        t.join().unwrap();
        assert_eq!(get(&o.db, "before").as_deref(), Some("1"));
        assert_eq!(get(&o.db, "after").as_deref(), Some("2"));
        assert!(!o.db.lock().failed);
    }

    #[test]
    fn codes_of_redb_errors() {
        let full = redb::Error::Io(io::Error::from_raw_os_error(28));
        assert_eq!(code_of(&full), Code::ResourceExhausted);
        assert_eq!(code_of(&redb::Error::PreviousIo), Code::Unavailable);
        assert_eq!(code_of(&redb::Error::Corrupted("x".into())), Code::DataLoss);
        let eio = redb::Error::Io(io::Error::from_raw_os_error(5));
        assert_eq!(code_of(&eio), Code::Internal);
    }

    #[test]
    fn quiet_panics_become_errors() {
        let r: Result<(), String> = quietly(|| panic!("boom {}", 1));
        assert_eq!(r.unwrap_err(), "boom 1");
        assert_eq!(quietly(|| 3).unwrap(), 3);
    }
}
