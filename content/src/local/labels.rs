//! Blob labels, durable in a redb database at `<root>/labels.redb`.
//!
//! ```text
//! labels:  (hex digest, label key) -> label value
//! updated: hex digest              -> updated_at (ns since the Unix epoch)
//! ```
//!
//! Why redb rather than one atomically written file per blob: a label update is one transaction
//! (read-modify-write of `labels.<k>` without a lock of our own), a walk with a label filter is one
//! ordered scan instead of one open/read per blob, and the supervisor's metadata is in redb too.
//! The cost is that redb takes an exclusive lock on the file: one process opens a store root at a
//! time (the supervisor), like containerd's bolt database.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};

use crate::Labels;
use crate::error::{Error, Result};

const LABELS: TableDefinition<(&str, &str), &str> = TableDefinition::new("labels");
const UPDATED: TableDefinition<&str, u64> = TableDefinition::new("updated");

pub struct LabelDb {
    db: durable::Database,
}

/// Labels of one blob and when they last changed (None: never set).
pub type Entry = (Labels, Option<SystemTime>);

impl LabelDb {
    /// Opens (or creates) the label database. A damaged file is set aside as
    /// `labels.redb.damaged-<nanos>` and a new, empty one takes its place: the damage is
    /// reported, and the store keeps working with every blob's labels gone. (corrald keeps a
    /// blob's labels in its own metadata; the store's are empty for it.)
    pub fn open(path: &Path) -> Result<LabelDb> {
        let opened = match durable::open(path) {
            Err(durable::OpenError::Damaged { reason, .. }) => {
                let aside =
                    path.with_extension(format!("redb.damaged-{}", to_nanos(SystemTime::now())));
                std::fs::rename(path, &aside).map_err(|source| Error::Io {
                    op: "move damaged label database aside to",
                    path: aside.clone(),
                    source,
                })?;
                log::error!(
                    "content: label database {} is damaged ({reason}): moved it to {} and \
                     started a new one; the store's blob labels are lost",
                    path.display(),
                    aside.display()
                );
                durable::open(path)
            }
            r => r,
        };
        let opened = opened.map_err(|e| Error::Database {
            path: e.path().to_owned(),
            code: e.code(),
            message: e.to_string(),
        })?;
        let me = LabelDb { db: opened.db };
        let txn = me.db.begin_write().db(&me.db)?;
        txn.open_table(LABELS).db(&me.db)?;
        txn.open_table(UPDATED).db(&me.db)?;
        me.db.commit(txn).db(&me.db)?;
        Ok(me)
    }

    pub fn get(&self, hex: &str) -> Result<Entry> {
        let p = &self.db;
        let txn = self.db.begin_read().db(p)?;
        let labels = txn.open_table(LABELS).db(p)?;
        let updated = txn.open_table(UPDATED).db(p)?;
        let mut out = Labels::new();
        for row in labels.range((hex, "")..).db(p)? {
            let (k, v) = row.db(p)?;
            let (d, key) = k.value();
            if d != hex {
                break;
            }
            out.insert(key.to_owned(), v.value().to_owned());
        }
        let at = updated.get(hex).db(p)?.map(|v| from_nanos(v.value()));
        Ok((out, at))
    }

    /// Every blob that has an entry, by hex digest.
    pub fn all(&self) -> Result<HashMap<String, Entry>> {
        let p = &self.db;
        let txn = self.db.begin_read().db(p)?;
        let labels = txn.open_table(LABELS).db(p)?;
        let updated = txn.open_table(UPDATED).db(p)?;
        let mut out: HashMap<String, Entry> = HashMap::new();
        for row in updated.iter().db(p)? {
            let (k, v) = row.db(p)?;
            out.insert(
                k.value().to_owned(),
                (BTreeMap::new(), Some(from_nanos(v.value()))),
            );
        }
        for row in labels.iter().db(p)? {
            let (k, v) = row.db(p)?;
            let (d, key) = k.value();
            out.entry(d.to_owned())
                .or_default()
                .0
                .insert(key.to_owned(), v.value().to_owned());
        }
        Ok(out)
    }

    /// Read-modify-write of one blob's labels in a single transaction; returns the new entry.
    pub fn modify(&self, hex: &str, f: impl FnOnce(&mut Labels)) -> Result<(Labels, SystemTime)> {
        let p = &self.db;
        let txn = self.db.begin_write().db(p)?;
        let now = SystemTime::now();
        let labels = {
            let mut table = txn.open_table(LABELS).db(p)?;
            let mut labels = Labels::new();
            let mut old = Vec::new();
            for row in table.range((hex, "")..).db(p)? {
                let (k, v) = row.db(p)?;
                let (d, key) = k.value();
                if d != hex {
                    break;
                }
                old.push(key.to_owned());
                labels.insert(key.to_owned(), v.value().to_owned());
            }
            f(&mut labels);
            for key in &old {
                table.remove((hex, key.as_str())).db(p)?;
            }
            for (k, v) in &labels {
                table.insert((hex, k.as_str()), v.as_str()).db(p)?;
            }
            txn.open_table(UPDATED)
                .db(p)?
                .insert(hex, to_nanos(now))
                .db(p)?;
            labels
        };
        p.commit(txn).db(p)?;
        Ok((labels, now))
    }

    /// Removes the entries of the given blobs.
    pub fn remove(&self, hexes: &[&str]) -> Result<()> {
        let p = &self.db;
        let txn = self.db.begin_write().db(p)?;
        {
            let mut table = txn.open_table(LABELS).db(p)?;
            let mut updated = txn.open_table(UPDATED).db(p)?;
            for hex in hexes {
                let mut keys = Vec::new();
                for row in table.range((*hex, "")..).db(p)? {
                    let (k, _) = row.db(p)?;
                    let (d, key) = k.value();
                    if d != *hex {
                        break;
                    }
                    keys.push(key.to_owned());
                }
                for key in &keys {
                    table.remove((*hex, key.as_str())).db(p)?;
                }
                updated.remove(*hex).db(p)?;
            }
        }
        p.commit(txn).db(p)?;
        Ok(())
    }
}

trait DbResult<T> {
    /// The error of a failed call on `db`, naming its file; `db` learns of I/O errors (it
    /// reopens itself after one, see the `durable` crate).
    fn db(self, db: &durable::Database) -> Result<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for std::result::Result<T, E> {
    fn db(self, db: &durable::Database) -> Result<T> {
        self.map_err(|e| {
            let e = e.into();
            db.note(&e);
            Error::Database {
                path: db.path().to_owned(),
                code: durable::code_of(&e),
                message: e.to_string(),
            }
        })
    }
}

fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}
