//! corrald's metadata: namespaced records in one redb database.
//!
//! containerd keeps the same records in bolt buckets (core/metadata/buckets.go); ours are redb
//! tables whose keys start with the namespace, so a namespace's objects are one key range and a
//! namespace can never see another's. Blobs and snapshot directories are shared on disk; what
//! makes them visible in a namespace is a record here.
//!
//! ```text
//! <root>/meta.redb                              schema version 1
//! ├── meta            "schema_version" → u64, "uuid" → server uuid (Introspection.Server)
//! ├── namespaces      <ns>                      → Namespace { labels, created_at }
//! ├── images          <ns>\0<name>              → Image { labels, target, created_at, updated_at }
//! ├── containers      <ns>\0<id>                → Container { spec, runtime, snapshot, … }
//! ├── content         <ns>\0<digest>            → Blob { size, labels, created_at, updated_at }
//! ├── snapshots       <ns>\0<snapshotter>\0<key> → Snapshot { backend key, parent, labels, … }
//! ├── leases          <ns>\0<id>                → Lease { labels, created_at }
//! └── lease_resources <ns>\0<lease>\0<type>\0<id> → ()      (types: content, ingests,
//!                                                              snapshots/<snapshotter>)
//! ```
//!
//! A blob's bytes stay on disk while any namespace has a `content` record of it; leases and
//! their resources are documented in `leases.rs`.
//!
//! Keys use NUL as separator: identifiers, digests and snapshot keys cannot contain it.
//! Values are JSON documents (serde), so a record gains optional fields without a migration;
//! a change of key layout bumps [`SCHEMA_VERSION`] and adds a migration in [`Db::open`].
//! Every write is one redb transaction, durable when `commit` returns.
//!
//! The file is opened and kept open through the `durable` crate: a damaged file is an error
//! naming it ([`Error::Open`], DataLoss; corrald then refuses to start, never replaces it with
//! an empty database), and a write that fails with ENOSPC is ResourceExhausted naming the file,
//! after which the handle is reopened at the next transaction (redb refuses everything after
//! one I/O error until then). A commit that failed may still turn out durable, as a lost
//! reply would: callers must not assume it did not happen.

pub mod containers;
mod leases;
mod records;

use std::path::Path;
use std::sync::Arc;

use protocol::Code;
use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use leases::check_resource_type;
pub use records::*;

pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
pub const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
pub const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
pub const CONTENT: TableDefinition<&str, &[u8]> = TableDefinition::new("content");
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
pub const LEASE_RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("lease_resources");

const ALL: [TableDefinition<&str, &[u8]>; 7] = [
    NAMESPACES,
    IMAGES,
    CONTAINERS,
    CONTENT,
    SNAPSHOTS,
    LEASES,
    LEASE_RESOURCES,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened: in use, damaged (the message says which file and why), or
    /// unreadable.
    #[error("metadata database {0}")]
    Open(durable::OpenError),
    /// A transaction failed; `path` is the database file (ENOSPC names the full disk this way).
    #[error("metadata database {path}: {source}")]
    Storage {
        path: String,
        source: Box<redb::Error>,
    },
    #[error("metadata schema version {found} is newer than this corrald ({SCHEMA_VERSION})")]
    TooNew { found: u64 },
    /// A record a change depends on is missing (e.g. the lease a resource is attached to).
    #[error("{0}: not found")]
    NotFound(String),
    #[error("corrupt metadata record {key:?} in {table}: {source}")]
    Corrupt {
        table: String,
        key: String,
        source: serde_json::Error,
    },
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Open(e) => e.code(),
            // A full disk is ResourceExhausted: the client can free space and retry.
            Error::Storage { source, .. } => durable::code_of(source),
            Error::Corrupt { .. } => Code::DataLoss,
            Error::NotFound(_) => Code::NotFound,
            Error::TooNew { .. } => Code::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The key of a namespaced record: `ns\0part\0part…`.
pub fn key(ns: &str, parts: &[&str]) -> String {
    let mut k = String::from(ns);
    for p in parts {
        k.push('\0');
        k.push_str(p);
    }
    k
}

/// The key range of everything under `prefix` (a namespace, or namespace + parts).
fn range_of(prefix: &str) -> (String, String) {
    (format!("{prefix}\0"), format!("{prefix}\u{1}"))
}

pub struct Db {
    db: Arc<durable::Database>,
}

/// A write transaction: typed access to the tables, committed as one.
pub struct Tx {
    tx: redb::WriteTransaction,
    db: Arc<durable::Database>,
}

/// The error of a failed redb call on `db`, which also learns of I/O errors that poisoned it
/// (it reopens itself at the next transaction, see the `durable` crate).
fn storage<E: Into<redb::Error>>(db: &durable::Database) -> impl Fn(E) -> Error + '_ {
    move |e| {
        let source = e.into();
        db.note(&source);
        Error::Storage {
            path: db.path().display().to_string(),
            source: Box::new(source),
        }
    }
}

impl Db {
    /// Opens (or creates) the database. A second corrald on the same root gets Unavailable; a
    /// damaged file is [`Error::Open`] with [`durable::OpenError::Damaged`] (DataLoss), never
    /// a panic and never an empty database in its place.
    pub fn open(path: &Path) -> Result<Db> {
        let opened = durable::open(path).map_err(Error::Open)?;
        if opened.repaired {
            log::warn!(
                "metadata database {}: damaged pages were repaired (redb went back to its last \
                 intact commit; the newest changes may be lost)",
                path.display()
            );
        }
        let db = Arc::new(opened.db);
        let tx = db.begin_write().map_err(storage(&db))?;
        {
            let mut meta = tx.open_table(META).map_err(storage(&db))?;
            let found = meta
                .get("schema_version")
                .map_err(storage(&db))?
                .map(|v| u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8])));
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(Error::TooNew { found: v }),
                // Migrations from older versions go here.
                _ => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())
                        .map_err(storage(&db))?;
                }
            }
            for t in ALL {
                tx.open_table(t).map_err(storage(&db))?;
            }
        }
        db.commit(tx).map_err(storage(&db))?;
        Ok(Db { db })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    pub fn write(&self) -> Result<Tx> {
        Ok(Tx {
            tx: self.db.begin_write().map_err(storage(&self.db))?,
            db: self.db.clone(),
        })
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(storage(&self.db))?;
        let t = tx.open_table(table).map_err(storage(&self.db))?;
        let Some(v) = t.get(key).map_err(storage(&self.db))? else {
            return Ok(None);
        };
        decode(table, key, v.value()).map(Some)
    }

    /// All records under `prefix` (e.g. a namespace), in key order, with their keys.
    pub fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        let tx = self.db.begin_read().map_err(storage(&self.db))?;
        let t = tx.open_table(table).map_err(storage(&self.db))?;
        let (lo, hi) = range_of(prefix);
        let mut out = Vec::new();
        for entry in t
            .range(lo.as_str()..hi.as_str())
            .map_err(storage(&self.db))?
        {
            let (k, v) = entry.map_err(storage(&self.db))?;
            let k = k.value().to_string();
            let rec = decode(table, &k, v.value())?;
            out.push((k, rec));
        }
        Ok(out)
    }

    /// Every record of a table, for garbage collection and namespace listing.
    pub fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>> {
        let tx = self.db.begin_read().map_err(storage(&self.db))?;
        let t = tx.open_table(table).map_err(storage(&self.db))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage(&self.db))? {
            let (k, v) = entry.map_err(storage(&self.db))?;
            let k = k.value().to_string();
            let rec = decode(table, &k, v.value())?;
            out.push((k, rec));
        }
        Ok(out)
    }

    /// The persisted server uuid, created on first use.
    pub fn server_uuid(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        let tx = self.db.begin_write().map_err(storage(&self.db))?;
        let uuid = {
            let mut meta = tx.open_table(META).map_err(storage(&self.db))?;
            let existing = meta
                .get("uuid")
                .map_err(storage(&self.db))?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match existing {
                Some(u) => u,
                None => {
                    let u = fresh();
                    meta.insert("uuid", u.as_bytes())
                        .map_err(storage(&self.db))?;
                    u
                }
            }
        };
        self.db.commit(tx).map_err(storage(&self.db))?;
        Ok(uuid)
    }
}

fn decode<T: DeserializeOwned>(
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        table: table.to_string(),
        key: key.replace('\0', "/"),
        source,
    })
}

impl Tx {
    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>> {
        let t = self.tx.open_table(table).map_err(storage(&self.db))?;
        let Some(v) = t.get(key).map_err(storage(&self.db))? else {
            return Ok(None);
        };
        decode(table, key, v.value()).map(Some)
    }

    pub fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).expect("records serialise");
        self.tx
            .open_table(table)
            .map_err(storage(&self.db))?
            .insert(key, bytes.as_slice())
            .map_err(storage(&self.db))?;
        Ok(())
    }

    /// Removes a record; true if it existed.
    pub fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool> {
        Ok(self
            .tx
            .open_table(table)
            .map_err(storage(&self.db))?
            .remove(key)
            .map_err(storage(&self.db))?
            .is_some())
    }

    /// True if any record exists under `prefix`.
    pub fn any_under(&self, table: TableDefinition<&str, &[u8]>, prefix: &str) -> Result<bool> {
        let t = self.tx.open_table(table).map_err(storage(&self.db))?;
        let (lo, hi) = range_of(prefix);
        Ok(t.range(lo.as_str()..hi.as_str())
            .map_err(storage(&self.db))?
            .next()
            .is_some())
    }

    /// Keys under `prefix`.
    pub fn keys_under(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<String>> {
        let t = self.tx.open_table(table).map_err(storage(&self.db))?;
        let (lo, hi) = range_of(prefix);
        let mut out = Vec::new();
        for e in t
            .range(lo.as_str()..hi.as_str())
            .map_err(storage(&self.db))?
        {
            out.push(e.map_err(storage(&self.db))?.0.value().to_string());
        }
        Ok(out)
    }

    /// Every key of a table (e.g. all namespaces).
    pub fn keys_all(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<String>> {
        let t = self.tx.open_table(table).map_err(storage(&self.db))?;
        let mut out = Vec::new();
        for e in t.iter().map_err(storage(&self.db))? {
            out.push(e.map_err(storage(&self.db))?.0.value().to_string());
        }
        Ok(out)
    }

    pub fn commit(self) -> Result<()> {
        self.db.commit(self.tx).map_err(storage(&self.db))?;
        Ok(())
    }

    /// Ends the transaction without writing: for one that changed nothing, where a commit
    /// would still cost a sync of the database file.
    pub fn abort(self) -> Result<()> {
        self.tx.abort().map_err(storage(&self.db))?;
        Ok(())
    }
}

impl Tx {
    /// Namespaces come into being with the first object written in them (as in containerd).
    pub fn ensure_namespace(&self, ns: &str) -> Result<()> {
        if self.get::<Namespace>(NAMESPACES, ns)?.is_none() {
            self.put(
                NAMESPACES,
                ns,
                &Namespace {
                    labels: Labels::new(),
                    created_at: Time::now(),
                },
            )?;
        }
        Ok(())
    }

    /// Makes a stored blob visible in `ns`. A new record gets `labels`; an existing one keeps
    /// its own labels, with `labels` merged over them when `merge`. True if the record is new.
    pub fn record_blob(
        &self,
        ns: &str,
        digest: &str,
        size: u64,
        labels: Labels,
        merge: bool,
    ) -> Result<bool> {
        let k = key(ns, &[digest]);
        let now = Time::now();
        let (rec, created) = match self.get::<Blob>(CONTENT, &k)? {
            Some(_) if !merge => return Ok(false),
            Some(mut b) => {
                b.labels.extend(labels);
                b.updated_at = now;
                (b, false)
            }
            None => (
                Blob {
                    size: size as i64,
                    labels,
                    created_at: now,
                    updated_at: now,
                },
                true,
            ),
        };
        self.ensure_namespace(ns)?;
        self.put(CONTENT, &k, &rec)?;
        Ok(created)
    }

    /// True if the namespace holds any object (images, containers, content, snapshots, leases).
    pub fn namespace_in_use(&self, ns: &str) -> Result<Option<&'static str>> {
        for (t, what) in [
            (IMAGES, "images"),
            (CONTAINERS, "containers"),
            (CONTENT, "content"),
            (SNAPSHOTS, "snapshots"),
            (LEASES, "leases"),
        ] {
            if self.any_under(t, ns)? {
                return Ok(Some(what));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn namespaces_are_disjoint_key_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        let tx = db.write().unwrap();
        for (ns, name) in [("a", "img1"), ("a", "img2"), ("ab", "img3"), ("b", "img1")] {
            let rec = Image {
                labels: BTreeMap::new(),
                target: Descriptor::default(),
                created_at: Time::now(),
                updated_at: Time::now(),
            };
            tx.put(IMAGES, &key(ns, &[name]), &rec).unwrap();
        }
        tx.commit().unwrap();
        let a: Vec<(String, Image)> = db.list(IMAGES, "a").unwrap();
        let names: Vec<_> = a.iter().map(|(k, _)| k.replace('\0', "/")).collect();
        assert_eq!(
            names,
            ["a/img1", "a/img2"],
            "namespace 'ab' leaked into 'a'"
        );
        assert!(
            db.get::<Image>(IMAGES, &key("b", &["img2"]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn uuid_and_schema_version_persist_and_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let u1 = {
            let db = Db::open(&path).unwrap();
            let u = db.server_uuid(|| "u-1".into()).unwrap();
            let err = Db::open(&path).err().expect("second open must fail");
            assert_eq!(err.code(), Code::Unavailable, "{err}");
            u
        };
        let db = Db::open(&path).unwrap();
        assert_eq!(db.server_uuid(|| "u-2".into()).unwrap(), u1);
    }

    #[test]
    fn corrupt_records_are_reported_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        let tx = db.write().unwrap();
        tx.tx
            .open_table(IMAGES)
            .unwrap()
            .insert(key("ns", &["bad"]).as_str(), b"{not json".as_slice())
            .unwrap();
        tx.commit().unwrap();
        let err = db.get::<Image>(IMAGES, &key("ns", &["bad"])).unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
        assert!(err.to_string().contains("ns/bad"), "{err}");
    }
}
