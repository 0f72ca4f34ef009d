//! Namespaced snapshots: containerd's metadata snapshotter over our backend snapshotters.
//!
//! A backend ([`snapshotter::Snapshotter`]) has one flat key space. Clients see one key space per
//! namespace and snapshotter: the `snapshots` table maps `<ns>\0<snapshotter>\0<key>` to a
//! [`Snapshot`] record naming the backend key, the (namespaced) parent, labels and times. Backend
//! keys are `<ns>/<n>/<key>` with a fresh number `n`, so two namespaces using the same key (or one
//! namespace reusing a key whose old backend snapshot is not collected yet) never collide.
//!
//! ```text
//!  ns "a": key "k" ─┐                         backend (overlayfs)
//!                   ├─ snapshots table ──▶    "a/1764…01/k"
//!  ns "b": key "k" ─┘                         "b/1764…02/k"
//! ```
//!
//! Labels and times live in the record (containerd keeps them in its metadata too); the kind
//! comes from the backend. Only `containerd.io/snapshot/…` labels are passed down to the backend,
//! as containerd does.
//!
//! Crash ordering (no redb write transaction is held across backend work):
//! - create (prepare/view/commit): the backend snapshot first, then the record; a crash between
//!   leaves an unreferenced backend snapshot that [`Namespaced::cleanup`] removes.
//! - remove: the record first, then the backend snapshot; a failed backend removal leaves the
//!   same kind of orphan.
//!
//! Concurrent calls on one namespaced key are kept apart by [`Busy`] claims (taken and released
//! around a call, never held across an `await`): a second call on a key in flight gets
//! Unavailable instead of interleaving with the first. Creations and cleanup exclude each
//! other through the gate in [`Busy`] (cleanup must not mistake a half-made snapshot for an
//! orphan).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use protocol::Code;
use snapshotter::{Kind, Mount, Snapshotter, Usage};

use crate::metadata::{self, Db, Labels, SNAPSHOTS, Snapshot, Time, key};

/// Labels with this prefix are passed down to the backend (containerd's inherited labels).
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {key} does not exist")]
    NotFound { key: String },
    #[error("parent snapshot {parent} does not exist")]
    ParentNotFound { parent: String },
    #[error("snapshot {key}: already exists")]
    AlreadyExists { key: String },
    #[error("cannot remove snapshot {key}: it is the parent of {child} (remove that first)")]
    HasChildren { key: String, child: String },
    #[error("snapshot {key} is being changed by another call, retry")]
    Busy { key: String },
    #[error("invalid snapshot {what} {key:?}: {reason}")]
    InvalidKey {
        what: &'static str,
        key: String,
        reason: &'static str,
    },
    /// A backend error, its message rewritten to name namespaced keys.
    #[error("{message}")]
    Backend { code: Code, message: String },
    #[error(transparent)]
    Metadata(#[from] metadata::Error),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } | Error::ParentNotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::HasChildren { .. } => Code::FailedPrecondition,
            Error::Busy { .. } => Code::Unavailable,
            Error::InvalidKey { .. } => Code::InvalidArgument,
            Error::Backend { code, .. } => *code,
            Error::Metadata(e) => e.code(),
        }
    }

    /// A backend error with the backend keys in its message replaced by the client's keys.
    fn backend(e: snapshotter::Error, names: &[(&str, &str)]) -> Error {
        let mut message = e.to_string();
        for (backend, client) in names {
            if !backend.is_empty() {
                message = message.replace(backend, client);
            }
        }
        Error::Backend {
            code: e.code(),
            message,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a client sees of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// Empty for none.
    pub parent: String,
    pub kind: Kind,
    pub created_at: Time,
    pub updated_at: Time,
    pub labels: Labels,
}

impl Info {
    fn as_backend(&self) -> snapshotter::Info {
        snapshotter::Info {
            name: self.name.clone(),
            parent: Some(self.parent.clone()).filter(|p| !p.is_empty()),
            kind: self.kind,
            created_at: std::time::SystemTime::UNIX_EPOCH,
            updated_at: std::time::SystemTime::UNIX_EPOCH,
            labels: self.labels.clone(),
        }
    }
}

/// Namespaced keys with a call in flight, and the gate between creations and cleanup.
#[derive(Default)]
pub struct Busy {
    keys: Mutex<HashSet<String>>,
    /// Read: a creation (backend snapshot made, record not yet written). Write: cleanup, which
    /// must not take such a half-made snapshot for an orphan. Held across backend work, which
    /// is the point: it is the window being protected, and only cleanup ever waits on it.
    gate: RwLock<()>,
}

/// Releases its claims when dropped.
pub struct Claim<'a> {
    busy: &'a Busy,
    keys: Vec<String>,
}

impl Busy {
    /// Claims all `keys` (records keys), or none: `Busy` naming the first one taken.
    fn claim(&self, keys: &[(&str, String)]) -> Result<Claim<'_>> {
        let mut held = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((name, _)) = keys.iter().find(|(_, k)| held.contains(k)) {
            return Err(Error::Busy {
                key: name.to_string(),
            });
        }
        for (_, k) in keys {
            held.insert(k.clone());
        }
        Ok(Claim {
            busy: self,
            keys: keys.iter().map(|(_, k)| k.clone()).collect(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = self.busy.keys.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            held.remove(k);
        }
    }
}

/// Source of the `n` in backend keys: seeded from the clock so numbers from an earlier run are
/// not reused; a collision anyway is caught by the backend (AlreadyExists) and retried.
fn next_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = || {
        let t = Time::now();
        (t.seconds as u64) * 1_000_000 + (t.nanos as u64) / 1000
    };
    let _ = NEXT.compare_exchange(0, seed(), Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The lease resource type of snapshots of `snapshotter` (containerd's `snapshots/<name>`).
pub fn lease_resource_type(snapshotter: &str) -> String {
    format!("snapshots/{snapshotter}")
}

/// One backend snapshotter as one namespace sees it. Cheap to build per call.
pub struct Namespaced<'a> {
    pub db: &'a Db,
    pub busy: &'a Busy,
    pub ns: &'a str,
    /// The snapshotter's name (`overlayfs`, `native`).
    pub name: &'a str,
    pub backend: &'a dyn Snapshotter,
    /// The lease that what this call creates is attached to (`containerd-lease`).
    pub lease: Option<&'a str>,
}

fn check_key(what: &'static str, key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        what,
        key: key.to_string(),
        reason,
    })
}

fn inherited(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(INHERITED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Namespaced<'_> {
    fn record_key(&self, key: &str) -> String {
        key_of(self.ns, self.name, key)
    }

    fn record(&self, key: &str) -> Result<Snapshot> {
        check_key("key", key)?;
        self.db
            .get::<Snapshot>(SNAPSHOTS, &self.record_key(key))?
            .ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })
    }

    fn info_of(&self, key: &str, rec: &Snapshot) -> Result<Info> {
        let b = self
            .backend
            .stat(&rec.backend_key)
            .map_err(|e| match e.code() {
                // A record whose backend snapshot is gone reads as absent.
                Code::NotFound => Error::NotFound {
                    key: key.to_string(),
                },
                _ => Error::backend(e, &[(&rec.backend_key, key)]),
            })?;
        Ok(Info {
            name: key.to_string(),
            parent: rec.parent.clone(),
            kind: b.kind,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            labels: rec.labels.clone(),
        })
    }

    /// Attaches the namespaced `key` to the call's lease, if any, inside `tx`.
    fn attach_to_lease(&self, tx: &metadata::Tx, key: &str) -> Result<()> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        tx.add_lease_resource(self.ns, lease, &lease_resource_type(self.name), key)?;
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        let rec = self.record(key)?;
        self.info_of(key, &rec)
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.record(key)?;
        self.backend
            .mounts(&rec.backend_key)
            .map_err(|e| Error::backend(e, &[(&rec.backend_key, key)]))
    }

    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.record(key)?;
        self.backend
            .usage(&rec.backend_key)
            .map_err(|e| Error::backend(e, &[(&rec.backend_key, key)]))
    }

    /// Creates the active (or, with `view`, read-only) snapshot `key` on `parent` (empty: none).
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: Labels,
        view: bool,
    ) -> Result<Vec<Mount>> {
        check_key("key", key)?;
        let rk = self.record_key(key);
        let _claim = self.busy.claim(&[(key, rk.clone())])?;
        let _creating = self.busy.gate.read().unwrap_or_else(|e| e.into_inner());
        if self.db.get::<Snapshot>(SNAPSHOTS, &rk)?.is_some() {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        let parent_backend = self.parent_backend_key(parent)?;
        let backend_labels = inherited(&labels);
        let (backend_key, mounts) = loop {
            let bk = format!("{}/{}/{key}", self.ns, next_number());
            let made = if view {
                self.backend
                    .view(&bk, parent_backend.as_deref(), backend_labels.clone())
            } else {
                self.backend
                    .prepare(&bk, parent_backend.as_deref(), backend_labels.clone())
            };
            match made {
                Ok(m) => break (bk, m),
                Err(e) if e.code() == Code::AlreadyExists => continue,
                Err(e) => {
                    let names = [
                        (bk.as_str(), key),
                        (parent_backend.as_deref().unwrap_or(""), parent),
                    ];
                    return Err(Error::backend(e, &names));
                }
            }
        };
        let written = (|| {
            let tx = self.db.write()?;
            // Stamped inside the write transaction: GC keeps the records its mark did not see
            // by their creation time, so that time must not precede the transaction.
            let now = Time::now();
            let rec = Snapshot {
                backend_key: backend_key.clone(),
                parent: parent.to_string(),
                labels,
                created_at: now,
                updated_at: now,
            };
            // The parent may have been removed while the backend worked: recheck in the
            // transaction that records the child (remove checks children in its own).
            if let Some(pb) = &parent_backend
                && tx
                    .get::<Snapshot>(SNAPSHOTS, &self.record_key(parent))?
                    .is_none_or(|p| &p.backend_key != pb)
            {
                return Err(Error::ParentNotFound {
                    parent: parent.to_string(),
                });
            }
            tx.ensure_namespace(self.ns)?;
            tx.put(SNAPSHOTS, &rk, &rec)?;
            self.attach_to_lease(&tx, key)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = written {
            self.discard(&backend_key);
            return Err(e);
        }
        Ok(mounts)
    }

    /// The backend key of the namespaced `parent` (empty: none).
    fn parent_backend_key(&self, parent: &str) -> Result<Option<String>> {
        if parent.is_empty() {
            return Ok(None);
        }
        match self.record(parent) {
            Ok(p) => Ok(Some(p.backend_key)),
            Err(Error::NotFound { .. }) => Err(Error::ParentNotFound {
                parent: parent.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Best-effort removal of a backend snapshot no record points to (cleanup retries).
    fn discard(&self, backend_key: &str) {
        if let Err(e) = self.backend.remove(backend_key) {
            log::warn!(
                "snapshotter {}: removing unreferenced snapshot {backend_key}: {e} (cleanup will retry)",
                self.name
            );
        }
    }

    /// Whether the backend can take layers extracted ahead of their parents
    /// ([`snapshotter::staging`]).
    pub fn can_stage(&self) -> bool {
        self.backend.staging().is_some()
    }

    fn staging(&self) -> Result<&dyn snapshotter::Staging> {
        self.backend.staging().ok_or_else(|| Error::Backend {
            code: Code::Unimplemented,
            message: format!("snapshotter {} cannot stage layers", self.name),
        })
    }

    /// An empty staging directory for [`snapshotter::apply::stage_layer`].
    pub fn stage_dir(&self) -> Result<snapshotter::StageDir> {
        self.staging()?
            .stage_dir()
            .map_err(|e| Error::backend(e, &[]))
    }

    /// Makes the staged `layer` the layer of the freshly prepared active snapshot `key`
    /// ([`snapshotter::Staging::adopt`]); commit it afterwards as usual.
    pub fn adopt(&self, key: &str, layer: snapshotter::StagedLayer) -> Result<()> {
        let staging = self.staging()?;
        let rk = self.record_key(key);
        let _claim = self.busy.claim(&[(key, rk)])?;
        let rec = self.record(key)?;
        staging
            .adopt(&rec.backend_key, layer)
            .map_err(|e| Error::backend(e, &[(&rec.backend_key, key)]))
    }

    /// Commits the active snapshot `key` as `name` (with `labels`) and removes `key`.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        check_key("name", name)?;
        let rk = self.record_key(key);
        let rn = self.record_key(name);
        let _claim = self.busy.claim(&[(key, rk.clone()), (name, rn.clone())])?;
        let _creating = self.busy.gate.read().unwrap_or_else(|e| e.into_inner());
        let active = self.record(key)?;
        if self.db.get::<Snapshot>(SNAPSHOTS, &rn)?.is_some() {
            return Err(Error::AlreadyExists {
                key: name.to_string(),
            });
        }
        let backend_labels = inherited(&labels);
        let backend_name = loop {
            let bn = format!("{}/{}/{name}", self.ns, next_number());
            match self
                .backend
                .commit(&bn, &active.backend_key, backend_labels.clone())
            {
                Ok(()) => break bn,
                Err(e) if e.code() == Code::AlreadyExists => continue,
                Err(e) => {
                    let names = [(bn.as_str(), name), (active.backend_key.as_str(), key)];
                    return Err(Error::backend(e, &names));
                }
            }
        };
        let written = (|| {
            let tx = self.db.write()?;
            // Stamped inside the write transaction, as in `create`: GC relies on it.
            let now = Time::now();
            let rec = Snapshot {
                backend_key: backend_name.clone(),
                parent: active.parent.clone(),
                labels,
                created_at: now,
                updated_at: now,
            };
            tx.delete(SNAPSHOTS, &rk)?;
            tx.put(SNAPSHOTS, &rn, &rec)?;
            self.attach_to_lease(&tx, name)?;
            // The active key is gone; so is its place in the lease (as in containerd).
            if let Some(lease) = self.lease {
                tx.delete_lease_resource(self.ns, lease, &lease_resource_type(self.name), key)?;
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = written {
            // The active key's backend snapshot is gone (commit consumed it); the record of
            // `key` stays pointing at nothing and reads as NotFound. Keep the committed data
            // unreferenced for cleanup rather than guess.
            log::error!(
                "snapshot {name} in {}: committed in the backend as {backend_name} but not recorded: {e}",
                self.ns
            );
            return Err(e);
        }
        Ok(())
    }

    /// Removes `key` (any kind). Its children must be removed first.
    pub fn remove(&self, key: &str) -> Result<()> {
        let rk = self.record_key(key);
        let _claim = self.busy.claim(&[(key, rk.clone())])?;
        check_key("key", key)?;
        // The child check and the delete are one write transaction, which serialises with
        // the transaction that records a new child.
        let tx = self.db.write()?;
        let rec: Snapshot = tx.get(SNAPSHOTS, &rk)?.ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })?;
        for k in tx.keys_under(SNAPSHOTS, &key_prefix(self.ns, self.name))? {
            if tx
                .get::<Snapshot>(SNAPSHOTS, &k)?
                .is_some_and(|r| r.parent == key)
            {
                return Err(Error::HasChildren {
                    key: key.to_string(),
                    child: client_key(&k).to_string(),
                });
            }
        }
        tx.delete(SNAPSHOTS, &rk)?;
        // As containerd: removal under a lease detaches the key from that lease.
        if let Some(lease) = self.lease {
            tx.delete_lease_resource(self.ns, lease, &lease_resource_type(self.name), key)?;
        }
        tx.commit()?;
        // Record first, then data: a crash here leaves an orphan for cleanup, never a record
        // pointing at a half-removed snapshot.
        self.discard(&rec.backend_key);
        Ok(())
    }

    /// Changes labels (`paths` empty or `labels` replace all; `labels.<k>` one) of `info.name`.
    pub fn update(&self, name: &str, new: &Labels, paths: &[String]) -> Result<Info> {
        let rk = self.record_key(name);
        let _claim = self.busy.claim(&[(name, rk.clone())])?;
        let mut rec = self.record(name)?;
        apply_label_paths(&mut rec.labels, new, paths).map_err(|path| Error::Backend {
            code: Code::InvalidArgument,
            message: format!(
                "cannot update {path:?} of snapshot {name}: only labels and labels.<key> may be updated"
            ),
        })?;
        rec.updated_at = Time::now();
        let tx = self.db.write()?;
        tx.put(SNAPSHOTS, &rk, &rec)?;
        tx.commit()?;
        self.info_of(name, &rec)
    }

    /// Snapshots of this namespace and snapshotter matching `filters` (containerd syntax over
    /// `name`, `parent`, `kind`, `labels.<k>`), in key order.
    pub fn list(&self, filters: &[&str]) -> Result<Vec<Info>> {
        let filter = snapshotter::Filter::parse(filters).map_err(|e| Error::backend(e, &[]))?;
        let all: Vec<(String, Snapshot)> =
            self.db.list(SNAPSHOTS, &key_prefix(self.ns, self.name))?;
        let mut out = Vec::new();
        for (k, rec) in all {
            let info = match self.info_of(client_key(&k), &rec) {
                Ok(i) => i,
                // Removed or half-made in the meantime: not listed.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if filter.matches(&info.as_backend()) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Removes backend snapshots that no namespace refers to, then lets the backend reclaim
    /// space. Creations wait while it runs.
    pub fn cleanup(&self) -> Result<()> {
        // No creation may sit between its backend snapshot and its record while we sweep.
        let _sweeping = self.busy.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut referenced: HashSet<String> = HashSet::new();
        for (k, rec) in self.db.all::<Snapshot>(SNAPSHOTS)? {
            if k.split('\0').nth(1) == Some(self.name) {
                referenced.insert(rec.backend_key);
            }
        }
        let mut orphans: Vec<(String, Option<String>)> = Vec::new();
        self.backend
            .walk(&[], &mut |i| {
                if !referenced.contains(&i.name) {
                    orphans.push((i.name, i.parent));
                }
                Ok(())
            })
            .map_err(|e| Error::backend(e, &[]))?;
        // Children before parents: repeat while progress is made.
        let mut children: HashMap<String, usize> = HashMap::new();
        self.backend
            .walk(&[], &mut |i| {
                if let Some(p) = i.parent {
                    *children.entry(p).or_default() += 1;
                }
                Ok(())
            })
            .map_err(|e| Error::backend(e, &[]))?;
        loop {
            let before = orphans.len();
            orphans.retain(|(name, parent)| {
                if children.get(name).copied().unwrap_or(0) > 0 {
                    return true;
                }
                match self.backend.remove(name) {
                    Ok(()) => {
                        log::info!("snapshotter {}: removed orphan {name}", self.name);
                        if let Some(p) = parent
                            && let Some(n) = children.get_mut(p)
                        {
                            *n -= 1;
                        }
                        false
                    }
                    Err(e) => {
                        log::warn!("snapshotter {}: orphan {name}: {e}", self.name);
                        true
                    }
                }
            });
            if orphans.len() == before {
                break;
            }
        }
        self.backend.cleanup().map_err(|e| Error::backend(e, &[]))
    }
}

/// Label that makes a snapshot a garbage-collection root (ctr sets it on what it prepares).
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

/// The sweep half of garbage collection for snapshots.
///
/// `live` holds the record keys ([`key_of`]) the collector found reachable (from content
/// labels `containerd.io/gc.ref.snapshot.<snapshotter>`, containers, unexpired leases);
/// `seen` every record the mark looked at (record key → backend key). Only a record the mark
/// saw, unchanged, can be unreachable: one created (or re-created under the same key) after
/// the mark's transaction is kept — it may have been prepared under a lease the mark never
/// saw (its creation time is no guide: a prepare stamps it before waiting for its write
/// transaction). Kept as well: snapshots labelled [`GC_ROOT_LABEL`] and every ancestor of a
/// kept snapshot. Everything else is removed: the records in one transaction, then the
/// backend snapshots, children before parents (a failed backend removal is logged and left
/// to [`Namespaced::cleanup`]). Returns the removed record keys.
pub fn sweep(
    db: &Db,
    backends: &std::collections::BTreeMap<String, std::sync::Arc<dyn Snapshotter>>,
    live: &HashSet<String>,
    seen: &HashMap<String, String>,
) -> Result<Vec<String>> {
    let tx = db.write()?;
    let mut records: HashMap<String, Snapshot> = HashMap::new();
    for k in tx.keys_all(SNAPSHOTS)? {
        if let Some(r) = tx.get::<Snapshot>(SNAPSHOTS, &k)? {
            records.insert(k, r);
        }
    }
    let parent_key = |k: &str, r: &Snapshot| -> Option<String> {
        if r.parent.is_empty() {
            return None;
        }
        let mut parts = k.splitn(3, '\0');
        let (ns, sn) = (parts.next()?, parts.next()?);
        Some(key_of(ns, sn, &r.parent))
    };
    let mut keep: HashSet<String> = HashSet::new();
    let mut stack: Vec<String> = records
        .iter()
        .filter(|(k, r)| {
            live.contains(*k)
                || r.labels.contains_key(GC_ROOT_LABEL)
                || seen.get(*k) != Some(&r.backend_key)
        })
        .map(|(k, _)| k.clone())
        .collect();
    while let Some(k) = stack.pop() {
        if !keep.insert(k.clone()) {
            continue;
        }
        if let Some(p) = records.get(&k).and_then(|r| parent_key(&k, r)) {
            stack.push(p);
        }
    }
    let mut gone: Vec<(String, Snapshot)> = records
        .into_iter()
        .filter(|(k, _)| !keep.contains(k))
        .collect();
    for (k, _) in &gone {
        tx.delete(SNAPSHOTS, k)?;
    }
    if gone.is_empty() {
        // Nothing to remove: no commit, so no sync of the database file.
        tx.abort()?;
        return Ok(Vec::new());
    }
    tx.commit()?;
    let removed: Vec<String> = gone.iter().map(|(k, _)| k.clone()).collect();
    // Backend removal, children first: repeat while progress is made.
    loop {
        let before = gone.len();
        let parents: HashSet<String> = gone.iter().filter_map(|(k, r)| parent_key(k, r)).collect();
        gone.retain(|(k, r)| {
            if parents.contains(k) {
                return true;
            }
            let sn = k.split('\0').nth(1).unwrap_or("");
            match backends.get(sn).map(|b| b.remove(&r.backend_key)) {
                Some(Err(e)) => log::warn!(
                    "gc: snapshot {} ({sn}): backend removal failed, cleanup will retry: {e}",
                    k.replace('\0', "/")
                ),
                None => log::warn!(
                    "gc: snapshot {}: snapshotter {sn} not loaded",
                    k.replace('\0', "/")
                ),
                Some(Ok(())) => {}
            }
            false
        });
        if gone.is_empty() || gone.len() == before {
            break;
        }
    }
    Ok(removed)
}

/// The record key of `key` in namespace `ns` of snapshotter `sn`.
pub fn key_of(ns: &str, sn: &str, k: &str) -> String {
    key(ns, &[sn, k])
}

fn key_prefix(ns: &str, sn: &str) -> String {
    key(ns, &[sn])
}

/// The client key of a record key.
fn client_key(record_key: &str) -> &str {
    record_key.splitn(3, '\0').nth(2).unwrap_or("")
}

/// Applies update paths to labels; `Err(path)` for a path other than `labels`/`labels.<k>`.
pub fn apply_label_paths(
    current: &mut Labels,
    new: &Labels,
    paths: &[String],
) -> std::result::Result<(), String> {
    if paths.is_empty() {
        *current = new.clone();
        return Ok(());
    }
    for p in paths {
        if p == "labels" {
            *current = new.clone();
        } else if let Some(k) = p.strip_prefix("labels.") {
            match new.get(k) {
                Some(v) => {
                    current.insert(k.to_string(), v.clone());
                }
                None => {
                    current.remove(k);
                }
            }
        } else {
            return Err(p.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshotter::NativeSnapshotter;

    struct Env {
        _dir: tempfile::TempDir,
        db: Db,
        busy: Busy,
        backend: std::sync::Arc<NativeSnapshotter>,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        let backend =
            std::sync::Arc::new(NativeSnapshotter::open(dir.path().join("native")).unwrap());
        Env {
            _dir: dir,
            db,
            busy: Busy::default(),
            backend,
        }
    }

    impl Env {
        fn ns<'a>(&'a self, ns: &'a str) -> Namespaced<'a> {
            Namespaced {
                db: &self.db,
                busy: &self.busy,
                ns,
                name: "native",
                backend: self.backend.as_ref(),
                lease: None,
            }
        }
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn same_key_in_two_namespaces_are_two_snapshots() {
        let e = env();
        let (a, b) = (e.ns("a"), e.ns("b"));
        let ma = a.prepare("k", "", Labels::new(), false).unwrap();
        let mb = b.prepare("k", "", Labels::new(), false).unwrap();
        assert_ne!(ma, mb, "namespaces share a backend snapshot");
        std::fs::write(format!("{}/file", ma[0].source), b"a").unwrap();
        assert!(!std::path::Path::new(&format!("{}/file", mb[0].source)).exists());
        assert_eq!(
            a.prepare("k", "", Labels::new(), false).unwrap_err().code(),
            Code::AlreadyExists
        );
        a.remove("k").unwrap();
        assert_eq!(a.stat("k").unwrap_err().code(), Code::NotFound);
        assert_eq!(b.stat("k").unwrap().kind, Kind::Active);
        assert!(e.ns("c").list(&[]).unwrap().is_empty());
    }

    #[test]
    fn chain_commit_parent_and_errors_name_client_keys() {
        let e = env();
        let a = e.ns("a");
        let err = a.prepare("x", "nope", Labels::new(), false).unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.to_string().contains("parent snapshot nope"), "{err}");
        // A parent of another namespace is not visible.
        e.ns("b").prepare("pb", "", Labels::new(), false).unwrap();
        e.ns("b").commit("cb", "pb", Labels::new()).unwrap();
        assert_eq!(
            a.prepare("x", "cb", Labels::new(), false)
                .unwrap_err()
                .code(),
            Code::NotFound
        );

        a.prepare("l1-active", "", Labels::new(), false).unwrap();
        a.commit("l1", "l1-active", labels(&[("k", "v")])).unwrap();
        assert_eq!(a.stat("l1-active").unwrap_err().code(), Code::NotFound);
        let l1 = a.stat("l1").unwrap();
        assert_eq!((l1.kind, l1.labels["k"].as_str()), (Kind::Committed, "v"));

        // Parent not committed: the message names the client's key, not the backend's.
        a.prepare("act", "", Labels::new(), false).unwrap();
        let err = a.prepare("y", "act", Labels::new(), false).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.to_string().contains("\"act\""), "{err}");
        assert!(!err.to_string().contains("a/"), "backend key leaked: {err}");

        a.view("v", "l1");
        let v = a.stat("v").unwrap();
        assert_eq!((v.kind, v.parent.as_str()), (Kind::View, "l1"));
        let err = a.remove("l1").unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.to_string().contains("v"), "{err}");
        let err = a.commit("c", "v", Labels::new()).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert_eq!(
            a.commit("act", "act", Labels::new()).unwrap_err().code(),
            Code::AlreadyExists
        );

        let kinds: Vec<_> = a
            .list(&["kind==committed"])
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(kinds, ["l1"]);
        let all = a.list(&[]).unwrap();
        assert_eq!(all.len(), 3, "{all:?}");
        // Unknown fields are absent, as in containerd; bad syntax is refused.
        assert!(a.list(&["bogus==1"]).unwrap().is_empty());
        assert_eq!(
            a.list(&["name==\"open"]).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn update_labels_and_cleanup_of_orphans() {
        let e = env();
        let a = e.ns("a");
        a.prepare("k", "", labels(&[("x", "1"), ("y", "2")]), false)
            .unwrap();
        let i = a
            .update(
                "k",
                &labels(&[("x", "9")]),
                &["labels.x".into(), "labels.y".into()],
            )
            .unwrap();
        assert_eq!(i.labels, labels(&[("x", "9")]));
        let err = a
            .update("k", &Labels::new(), &["parent".into()])
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // An orphan: in the backend, referenced by no record.
        e.backend
            .prepare("a/1/orphan", None, Labels::new())
            .unwrap();
        a.cleanup().unwrap();
        assert_eq!(
            e.backend.stat("a/1/orphan").unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            a.stat("k").unwrap().labels["x"],
            "9",
            "cleanup removed a live snapshot"
        );
    }

    #[test]
    fn snapshots_made_under_a_lease_are_attached_to_it() {
        let e = env();
        let tx = e.db.write().unwrap();
        let lease = metadata::Lease {
            labels: Labels::new(),
            created_at: Time::now(),
        };
        tx.put(metadata::LEASES, &key("a", &["l1"]), &lease)
            .unwrap();
        tx.commit().unwrap();
        let mut a = e.ns("a");
        a.lease = Some("l1");
        a.prepare("k", "", Labels::new(), false).unwrap();
        a.commit("c", "k", Labels::new()).unwrap();
        a.prepare("k2", "c", Labels::new(), false).unwrap();
        let held = |e: &Env| e.db.write().unwrap().lease_resources("a", "l1").unwrap();
        let want = |ids: &[&str]| -> Vec<(String, String)> {
            ids.iter()
                .map(|i| ("snapshots/native".to_string(), i.to_string()))
                .collect()
        };
        assert_eq!(held(&e), want(&["c", "k2"]));
        a.remove("k2").unwrap();
        assert_eq!(held(&e), want(&["c"]));

        // An unknown lease: NotFound, and nothing is left behind.
        a.lease = Some("nope");
        let err = a.prepare("x", "", Labels::new(), false).unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert_eq!(a.stat("x").unwrap_err().code(), Code::NotFound);
        let mut backend_keys = 0;
        e.backend
            .walk(&[], &mut |_| {
                backend_keys += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            backend_keys, 1,
            "the failed prepare left a backend snapshot"
        );
    }

    #[test]
    fn sweep_keeps_live_roots_recent_and_ancestors_and_removes_the_rest() {
        let e = env();
        let a = e.ns("a");
        a.prepare("l1-a", "", Labels::new(), false).unwrap();
        a.commit("l1", "l1-a", Labels::new()).unwrap();
        a.prepare("l2-a", "l1", Labels::new(), false).unwrap();
        a.commit("l2", "l2-a", Labels::new()).unwrap();
        a.prepare("orphan-a", "", Labels::new(), false).unwrap();
        a.commit("orphan", "orphan-a", Labels::new()).unwrap();
        a.prepare("orphan-child", "orphan", Labels::new(), false)
            .unwrap();
        a.prepare("rooted", "", labels(&[(GC_ROOT_LABEL, "x")]), false)
            .unwrap();
        // The same key in another namespace is another snapshot, not kept by a's liveness.
        e.ns("b").prepare("l2", "", Labels::new(), false).unwrap();
        let mut backends: std::collections::BTreeMap<String, std::sync::Arc<dyn Snapshotter>> =
            Default::default();
        backends.insert("native".into(), e.backend.clone());

        let live: HashSet<String> = [key_of("a", "native", "l2")].into();
        let removed = sweep(&e.db, &backends, &live, &seen(&e.db)).unwrap();
        let mut removed: Vec<String> = removed.iter().map(|k| k.replace('\0', "/")).collect();
        removed.sort();
        assert_eq!(
            removed,
            ["a/native/orphan", "a/native/orphan-child", "b/native/l2"]
        );
        let names: Vec<String> = a.list(&[]).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["l1", "l2", "rooted"]);
        let mut backend_count = 0;
        e.backend
            .walk(&[], &mut |_| {
                backend_count += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            backend_count, 3,
            "backend snapshots of swept records remain"
        );

        // Records the mark did not see (made after it, or re-made under a seen key) are never
        // swept: they may belong to a lease the mark did not see either.
        let before = seen(&e.db);
        a.prepare("new", "", Labels::new(), false).unwrap();
        a.remove("rooted").unwrap();
        a.prepare("rooted", "", Labels::new(), false).unwrap();
        let removed = sweep(&e.db, &backends, &HashSet::new(), &before).unwrap();
        assert!(
            !removed
                .iter()
                .any(|k| k.ends_with("\0new") || k.ends_with("\0rooted")),
            "{removed:?}"
        );
        assert_eq!(a.stat("new").unwrap().kind, Kind::Active);
        assert_eq!(a.stat("rooted").unwrap().kind, Kind::Active);
    }

    /// What a mark would see: every record key and its backend key.
    fn seen(db: &Db) -> HashMap<String, String> {
        let tx = db.write().unwrap();
        tx.keys_all(SNAPSHOTS)
            .unwrap()
            .into_iter()
            .filter_map(|k| {
                tx.get::<Snapshot>(SNAPSHOTS, &k)
                    .unwrap()
                    .map(|s| (k, s.backend_key))
            })
            .collect()
    }

    #[test]
    fn busy_keys_refuse_a_second_call() {
        let e = env();
        let rk = key_of("a", "native", "k");
        let claim = e.busy.claim(&[("k", rk)]).unwrap();
        let err = e
            .ns("a")
            .prepare("k", "", Labels::new(), false)
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        drop(claim);
        e.ns("a").prepare("k", "", Labels::new(), false).unwrap();
    }

    impl Namespaced<'_> {
        fn view(&self, key: &str, parent: &str) {
            self.prepare(key, parent, Labels::new(), true).unwrap();
        }
    }
}
