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
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};

use crate::Labels;
use crate::error::{Error, Result};

const LABELS: TableDefinition<(&str, &str), &str> = TableDefinition::new("labels");
const UPDATED: TableDefinition<&str, u64> = TableDefinition::new("updated");

pub struct LabelDb {
    db: Database,
    path: PathBuf,
}

/// Labels of one blob and when they last changed (None: never set).
pub type Entry = (Labels, Option<SystemTime>);

impl LabelDb {
    pub fn open(path: &Path) -> Result<LabelDb> {
        let p = path;
        let db = Database::create(path).db(p)?;
        let txn = db.begin_write().db(p)?;
        txn.open_table(LABELS).db(p)?;
        txn.open_table(UPDATED).db(p)?;
        txn.commit().db(p)?;
        Ok(LabelDb {
            db,
            path: path.to_owned(),
        })
    }

    pub fn get(&self, hex: &str) -> Result<Entry> {
        let p = self.path.as_path();
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
        let p = self.path.as_path();
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
        let p = self.path.as_path();
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
        txn.commit().db(p)?;
        Ok((labels, now))
    }

    /// Removes the entries of the given blobs.
    pub fn remove(&self, hexes: &[&str]) -> Result<()> {
        let p = self.path.as_path();
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
        txn.commit().db(p)?;
        Ok(())
    }
}

trait DbResult<T> {
    fn db(self, path: &Path) -> Result<T>;
}

impl<T, E: Display> DbResult<T> for std::result::Result<T, E> {
    fn db(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::Database {
            path: path.to_owned(),
            message: e.to_string(),
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
