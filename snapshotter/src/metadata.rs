//! Metadata (redb) and the snapshot lifecycle shared by the local backends.
//!
//! The overlayfs and native backends differ only in what a snapshot directory holds, how it
//! is populated and which mounts it yields (the [`Driver`]); everything else — keys, kinds,
//! parents, labels, ids, crash-safe creation and removal, reconcile — lives here in
//! [`Engine`], so both behave the same.
//!
//! # On disk
//!
//! ```text
//! <root>/
//!   metadata.redb          the DB below (one file)
//!   snapshots/
//!     <id>/                a snapshot's directory (numeric id keeps lowerdir paths short);
//!                          contents are the driver's (overlay: fs/ work/, native: the tree)
//!     new-<id>/            being created (prepare in progress, or interrupted by a crash)
//!     removed-<id>/        removed from metadata, waiting to be deleted
//!   staging/
//!     <n>/                 a layer extracted ahead of its parent (crate::staging), until it
//!                          is adopted (renamed into a snapshot) or dropped; emptied at open
//! ```
//!
//! # DB schema (version 1)
//!
//! ```text
//! snapshots: key (str) -> Record as JSON {id, kind, parent, labels, created, updated, usage}
//! children:  (parent key, child key) -> ()      index for "has children?"; rebuilt at open
//! meta:      "schema" -> 1
//!            "next_id" -> next snapshot id
//! ```
//!
//! # Crash safety
//!
//! - prepare: allocate an id, populate `new-<id>`, make it durable, rename it to `<id>`,
//!   then insert the record. A crash before the insert leaves a directory without record.
//!   A driver may skip "make it durable" for snapshots it can populate again
//!   ([`Driver::recreatable`]: overlay's active and view snapshots, two empty directories);
//!   a power loss that takes such a directory leaves a record without one, and open makes it
//!   again.
//! - remove: delete the record first, then rename `<id>` to `removed-<id>`, and answer; a
//!   thread of the store deletes the tree. A crash leaves a directory without record, or a
//!   `removed-` directory.
//! - open reconciles both directions: records whose directory is missing are dropped (with
//!   their descendants, which cannot work without them), unless the driver can make it
//!   again; directories no record names are
//!   renamed to `removed-<id>` and deleted, as are `new-*` and `removed-*`.
//!
//! So no record ever points at a half-built or half-deleted directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redb::{Durability, ReadableTable, TableDefinition};

use crate::Mount;
use crate::error::{Error, Result};
use crate::snapshotter::{Info, Kind, Labels, Usage, check_key, check_labels};
use crate::staging::{StageDir, StagedLayer};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const SCHEMA_VERSION: u64 = 1;
const DB_FILE: &str = "metadata.redb";
const STAGING_DIR: &str = "staging";
const NEW_PREFIX: &str = "new-";
const REMOVED_PREFIX: &str = "removed-";

/// A test hook called at named points of prepare and remove (crash tests stop the
/// process there). Points: `prepare:populated`, `prepare:renamed`, `prepare:done`,
/// `remove:unlinked`, `remove:renamed`.
#[doc(hidden)]
pub type Failpoint = Arc<dyn Fn(&str) + Send + Sync>;

/// Options shared by the local backends.
#[derive(Clone, Default)]
pub struct Options {
    /// overlayfs only: add `index=off` to overlay mounts. `None`: when the kernel's overlay
    /// module has the `index` parameter (as containerd does).
    pub overlay_index_off: Option<bool>,
    #[doc(hidden)]
    pub failpoint: Option<Failpoint>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("overlay_index_off", &self.overlay_index_off)
            .field("failpoint", &self.failpoint.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// One stored snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    labels: Labels,
    /// Nanoseconds since the Unix epoch.
    created: u64,
    updated: u64,
    /// (size, inodes), cached for committed snapshots.
    #[serde(default)]
    usage: Option<(i64, i64)>,
}

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            created_at: from_nanos(self.created),
            updated_at: from_nanos(self.updated),
            labels: self.labels.clone(),
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn from_nanos(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(n)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a Record always serializes")
}

fn get_record(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>> {
    match table.get(key).map_err(Error::db(format!("read {key:?}")))? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

fn must_get(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Record> {
    get_record(table, key)?.ok_or_else(|| Error::NotFound {
        key: key.to_string(),
    })
}

/// Ids of `key`'s parent chain, nearest first.
fn parent_ids(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    rec: &Record,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = rec.parent.clone();
    while let Some(p) = next {
        let r = get_record(table, &p)?.ok_or_else(|| Error::Corrupt {
            key: p.clone(),
            reason: "named as parent but missing".into(),
        })?;
        ids.push(r.id);
        next = r.parent;
        if ids.len() > 100_000 {
            return Err(Error::Corrupt {
                key: p,
                reason: "parent chain loops".into(),
            });
        }
    }
    Ok(ids)
}

/// A snapshot as the driver sees it when computing mounts.
pub(crate) struct Resolved {
    pub kind: Kind,
    /// The snapshot's own directory.
    pub dir: PathBuf,
    /// Parent directories, nearest first.
    pub parents: Vec<PathBuf>,
}

/// What differs between backends.
pub(crate) trait Driver: Send + Sync + 'static {
    /// Fills the new, empty snapshot directory `dir`. `parent` is the directory of the
    /// committed parent, if any.
    fn populate(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()>;
    /// Makes what `populate` wrote durable.
    fn sync(&self, dir: &Path) -> Result<()>;
    /// Whether a new snapshot of `kind` holds nothing `populate` cannot make again (overlay's
    /// empty upper and work directories). Such a snapshot is not synced when it is made: what
    /// a container later writes into it is never synced either, so a power loss can take that
    /// whatever we do, and should it take the directories themselves, start-up makes them
    /// again ([`Engine::reconcile`]). That saves three fsyncs on every container start.
    fn recreatable(&self, _kind: Kind) -> bool {
        false
    }
    /// The mounts of an active or view snapshot.
    fn mounts(&self, s: &Resolved) -> Vec<Mount>;
    /// The directory holding the snapshot's own layer (what `usage` measures).
    fn layer_dir(&self, dir: &Path) -> PathBuf;
}

/// The shared snapshot store; the backends wrap it with their [`Driver`].
pub(crate) struct Engine<D> {
    snapshots: PathBuf,
    /// `<root>/staging`: layers extracted ahead of their parents.
    staging: PathBuf,
    next_stage: AtomicU64,
    /// Reopens itself after an I/O error (a full disk), see the `durable` crate.
    db: durable::Database,
    pub(crate) driver: D,
    /// Ids of prepares between id allocation and record insertion: cleanup must not take
    /// their directories for orphans.
    inflight: Mutex<HashSet<u64>>,
    failpoint: Option<Failpoint>,
    /// Deletes the trees of removed snapshots after the removal has answered.
    sweeper: Sweeper,
}

/// Deletes the trees of removed snapshots, already renamed to `removed-<id>`, on a thread of
/// its own, in the order given: a removal answers once its record is gone and its directory
/// is out of the way, and deleting a container's upper directory (a millisecond for an empty
/// one, more for one the container filled) is not on its caller's path. What a crash or a
/// shutdown leaves undeleted, open's reconcile deletes (it removes every `removed-*`).
struct Sweeper {
    queue: Option<std::sync::mpsc::Sender<Sweep>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Sweep {
    Tree(PathBuf),
    /// Answered once every tree queued before it is deleted.
    Barrier(std::sync::mpsc::Sender<()>),
}

impl Sweeper {
    fn start() -> Sweeper {
        let (queue, jobs) = std::sync::mpsc::channel::<Sweep>();
        let spawned = std::thread::Builder::new()
            .name("snapshot-sweep".into())
            .spawn(move || {
                for job in jobs {
                    match job {
                        Sweep::Tree(tree) => delete_removed(&tree),
                        Sweep::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        match spawned {
            Ok(thread) => Sweeper {
                queue: Some(queue),
                thread: Some(thread),
            },
            Err(e) => {
                log::warn!("snapshotter: no thread to delete removed trees ({e}); deleting inline");
                Sweeper {
                    queue: None,
                    thread: None,
                }
            }
        }
    }

    /// Queues `tree`; deletes it here if there is no thread to take it.
    fn sweep(&self, tree: PathBuf) {
        if let Some(q) = &self.queue
            && q.send(Sweep::Tree(tree.clone())).is_ok()
        {
            return;
        }
        delete_removed(&tree);
    }

    /// Waits until every tree queued so far is deleted.
    fn settle(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if let Some(q) = &self.queue
            && q.send(Sweep::Barrier(done)).is_ok()
        {
            let _ = wait.recv();
        }
    }
}

fn delete_removed(tree: &Path) {
    if let Err(e) = remove_tree(tree) {
        log::warn!("snapshotter: {e}; the next start or cleanup will retry");
    }
}

impl Drop for Sweeper {
    /// Finishes what is queued, so that whoever closed the store finds no tree being deleted.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<D: Driver> Engine<D> {
    /// A metadata DB error, naming the file (a full disk is named this way).
    fn db_err<E: Into<redb::Error>>(
        &self,
        context: impl std::fmt::Display,
    ) -> impl FnOnce(E) -> Error {
        Error::db(format!("{}: {context}", self.db.path().display()))
    }

    /// Opens (creating if needed) the store at `root` and reconciles it.
    pub(crate) fn open(root: &Path, driver: D, opts: &Options) -> Result<Self> {
        let snapshots = root.join("snapshots");
        // 0700 like containerd: layers hold set-id binaries that unprivileged users must
        // not reach through the snapshotter's tree.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snapshots)
            .map_err(Error::io("create", &snapshots))?;
        let staging = root.join(STAGING_DIR);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(Error::io("create", &staging))?;
        let db_path = root.join(DB_FILE);
        // A damaged file is an error naming it, never a panic, and never silently replaced
        // by an empty database (which would forget every snapshot still on disk).
        let opened = durable::open(&db_path).map_err(|e| match e {
            durable::OpenError::InUse { path } => Error::Locked { path },
            e => Error::Open(e),
        })?;
        if opened.repaired {
            log::warn!(
                "snapshotter metadata {}: damaged pages were repaired (redb went back to its \
                 last intact commit)",
                db_path.display()
            );
        }
        let db = opened.db;
        // We hold the DB lock now, so no other instance stages here: what is left was left
        // by a crash.
        for e in fs::read_dir(&staging).map_err(Error::io("list", &staging))? {
            let e = e.map_err(Error::io("list", &staging))?;
            log::info!(
                "snapshotter: removing staged layer {} left by a crash",
                e.path().display()
            );
            remove_tree(&e.path())?;
        }
        let engine = Engine {
            snapshots,
            staging,
            next_stage: AtomicU64::new(1),
            db,
            driver,
            inflight: Mutex::new(HashSet::new()),
            failpoint: opts.failpoint.clone(),
            sweeper: Sweeper::start(),
        };
        engine.init_schema()?;
        engine.reconcile()?;
        Ok(engine)
    }

    /// Waits until the trees of the snapshots removed so far are deleted (they are deleted
    /// after their removal answers).
    pub(crate) fn settle(&self) {
        self.sweeper.settle()
    }

    fn init_schema(&self) -> Result<()> {
        let txn = self.db.begin_write().map_err(self.db_err("begin"))?;
        {
            let mut meta = txn.open_table(META).map_err(self.db_err("open meta"))?;
            let version = meta
                .get("schema")
                .map_err(self.db_err("read schema"))?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(self.db_err("write schema"))?;
                    meta.insert("next_id", 1)
                        .map_err(self.db_err("write next_id"))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Err(Error::Unsupported {
                        what: format!(
                            "metadata schema version {v} (this build knows {SCHEMA_VERSION})"
                        ),
                    });
                }
            }
            txn.open_table(SNAPSHOTS)
                .map_err(self.db_err("open snapshots"))?;
            txn.open_table(CHILDREN)
                .map_err(self.db_err("open children"))?;
        }
        self.db.commit(txn).map_err(self.db_err("commit schema"))
    }

    fn fail(&self, point: &str) {
        if let Some(f) = &self.failpoint {
            f(point);
        }
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    /// Brings metadata and directories into agreement (see the module doc).
    fn reconcile(&self) -> Result<()> {
        let txn = self.db.begin_write().map_err(self.db_err("begin"))?;
        {
            let mut table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            let mut records = BTreeMap::new();
            for item in table.iter().map_err(self.db_err("iterate"))? {
                let (k, v) = item.map_err(self.db_err("iterate"))?;
                let key = k.value().to_string();
                let rec = decode(&key, v.value())?;
                records.insert(key, rec);
            }
            // A record is broken when its directory is gone (unless the driver can make it
            // again) or any ancestor is broken.
            let mut broken: HashMap<String, bool> = HashMap::new();
            fn is_broken(
                key: &str,
                records: &BTreeMap<String, Record>,
                dir_ok: &dyn Fn(&Record) -> bool,
                memo: &mut HashMap<String, bool>,
                depth: usize,
            ) -> bool {
                if let Some(b) = memo.get(key) {
                    return *b;
                }
                let b = match records.get(key) {
                    None => true,
                    Some(_) if depth > 100_000 => true,
                    Some(r) => {
                        !dir_ok(r)
                            || r.parent
                                .as_deref()
                                .is_some_and(|p| is_broken(p, records, dir_ok, memo, depth + 1))
                    }
                };
                memo.insert(key.to_string(), b);
                b
            }
            let dir_ok = |r: &Record| self.dir(r.id).is_dir() || self.driver.recreatable(r.kind);
            for key in records.keys() {
                is_broken(key, &records, &dir_ok, &mut broken, 0);
            }
            for (key, b) in &broken {
                if *b {
                    log::warn!(
                        "snapshotter reconcile: dropping snapshot {key:?} (id {}): its directory or a parent's is gone",
                        records[key].id
                    );
                    table.remove(key.as_str()).map_err(self.db_err("remove"))?;
                    records.remove(key);
                }
            }
            // Made without a sync and lost to a power loss: made again, as empty as they were.
            for r in records.values() {
                if !self.dir(r.id).is_dir() {
                    self.recreate(r, &records)?;
                }
            }
            // Rebuild the children index from the surviving records.
            let mut children = txn.open_table(CHILDREN).map_err(self.db_err("open"))?;
            children
                .retain(|_, _| false)
                .map_err(self.db_err("clear"))?;
            for (key, r) in &records {
                if let Some(p) = &r.parent {
                    children
                        .insert((p.as_str(), key.as_str()), ())
                        .map_err(self.db_err("index"))?;
                }
            }
            // Never hand out an id at or below one in use.
            let max = records.values().map(|r| r.id).max().unwrap_or(0);
            let mut meta = txn.open_table(META).map_err(self.db_err("open meta"))?;
            let next = meta
                .get("next_id")
                .map_err(self.db_err("read next_id"))?
                .map(|v| v.value())
                .unwrap_or(1);
            if next <= max {
                meta.insert("next_id", max + 1)
                    .map_err(self.db_err("write next_id"))?;
            }
        }
        self.db
            .commit(txn)
            .map_err(self.db_err("commit reconcile"))?;
        self.cleanup_dirs()
    }

    /// Makes the directory of `r`, a recreatable snapshot whose directory is gone, again.
    fn recreate(&self, r: &Record, records: &BTreeMap<String, Record>) -> Result<()> {
        log::warn!(
            "snapshotter reconcile: the directory of {:?} snapshot {} was lost (a power loss \
             before it reached the disk); making it again, empty",
            r.kind,
            r.id
        );
        let new_dir = self.snapshots.join(format!("{NEW_PREFIX}{}", r.id));
        if new_dir.exists() {
            remove_tree(&new_dir)?;
        }
        fs::create_dir(&new_dir).map_err(Error::io("create", &new_dir))?;
        let parent_dir = r
            .parent
            .as_deref()
            .and_then(|p| records.get(p))
            .map(|p| self.dir(p.id));
        self.driver
            .populate(&new_dir, r.kind, parent_dir.as_deref())?;
        self.driver.sync(&new_dir)?;
        let dir = self.dir(r.id);
        fs::rename(&new_dir, &dir).map_err(Error::io("rename", &new_dir))?;
        fsync_dir(&self.snapshots)
    }

    /// Deletes directories no record names (except in-flight prepares).
    fn cleanup_dirs(&self) -> Result<()> {
        let entries = fs::read_dir(&self.snapshots).map_err(Error::io("list", &self.snapshots))?;
        let mut names = Vec::new();
        for e in entries {
            let e = e.map_err(Error::io("list", &self.snapshots))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        // Order matters (see prepare): list, then in-flight ids, then records.
        let inflight = self.inflight.lock().unwrap().clone();
        let known: HashSet<u64> = {
            let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
            let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            let mut ids = HashSet::new();
            for item in table.iter().map_err(self.db_err("iterate"))? {
                let (k, v) = item.map_err(self.db_err("iterate"))?;
                ids.insert(decode(k.value(), v.value())?.id);
            }
            ids
        };
        for name in names {
            let path = self.snapshots.join(&name);
            if name.starts_with(REMOVED_PREFIX) {
                remove_tree(&path)?;
                continue;
            }
            let (id, is_new) = match name.strip_prefix(NEW_PREFIX) {
                Some(rest) => (rest.parse::<u64>().ok(), true),
                None => (name.parse::<u64>().ok(), false),
            };
            let Some(id) = id else {
                log::warn!(
                    "snapshotter cleanup: leaving unknown entry {}",
                    path.display()
                );
                continue;
            };
            if inflight.contains(&id) || (!is_new && known.contains(&id)) {
                continue;
            }
            log::info!("snapshotter cleanup: removing orphan {}", path.display());
            let removed = self.snapshots.join(format!("{REMOVED_PREFIX}{name}"));
            match fs::rename(&path, &removed) {
                Ok(()) => remove_tree(&removed)?,
                // Someone else (a concurrent remove or cleanup) got there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("rename", &path)(e)),
            }
        }
        fsync_dir(&self.snapshots)
    }

    fn alloc_id(&self) -> Result<u64> {
        let mut txn = self.db.begin_write().map_err(self.db_err("begin"))?;
        // Not durable on its own: a crash may hand the id out again after restart, which is
        // harmless because open deletes every directory no durable record names.
        txn.set_durability(Durability::None);
        let id = {
            let mut meta = txn.open_table(META).map_err(self.db_err("open meta"))?;
            let id = meta
                .get("next_id")
                .map_err(self.db_err("read next_id"))?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert("next_id", id + 1)
                .map_err(self.db_err("write next_id"))?;
            id
        };
        // Register before the directory exists (cleanup_dirs relies on this order).
        self.inflight.lock().unwrap().insert(id);
        if let Err(e) = self.db.commit(txn) {
            self.inflight.lock().unwrap().remove(&id);
            return Err(self.db_err("commit next_id")(e));
        }
        Ok(id)
    }

    /// Checks that `key` is free and `parent` is committed; returns the parent's record.
    fn check_create(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
        parent: Option<&str>,
    ) -> Result<Option<Record>> {
        if get_record(table, key)?.is_some() {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        let Some(parent) = parent else {
            return Ok(None);
        };
        let p = must_get(table, parent)?;
        if p.kind != Kind::Committed {
            return Err(Error::ParentNotCommitted {
                parent: parent.to_string(),
                kind: p.kind,
            });
        }
        Ok(Some(p))
    }

    pub(crate) fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        check_key(key)?;
        if let Some(p) = parent {
            check_key(p)?;
        }
        check_labels(&labels)?;
        // Fail fast before any filesystem work; checked again when inserting.
        let parent_rec = {
            let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
            let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            Self::check_create(&table, key, parent)?
        };
        let id = self.alloc_id()?;
        let result = self.create_with_id(id, key, parent, parent_rec, kind, labels);
        self.inflight.lock().unwrap().remove(&id);
        if result.is_ok() {
            self.fail("prepare:done");
        }
        result
    }

    fn create_with_id(
        &self,
        id: u64,
        key: &str,
        parent: Option<&str>,
        parent_rec: Option<Record>,
        kind: Kind,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let new_dir = self.snapshots.join(format!("{NEW_PREFIX}{id}"));
        let dir = self.dir(id);
        let built = (|| {
            fs::create_dir(&new_dir).map_err(Error::io("create", &new_dir))?;
            let parent_dir = parent_rec.as_ref().map(|p| self.dir(p.id));
            self.driver
                .populate(&new_dir, kind, parent_dir.as_deref())
                .map_err(|e| match (&parent_dir, parent) {
                    // The parent was removed under us while we copied it.
                    (Some(pd), Some(p)) if !pd.exists() => Error::NotFound { key: p.into() },
                    _ => e,
                })?;
            let durable = !self.driver.recreatable(kind);
            if durable {
                self.driver.sync(&new_dir)?;
            }
            self.fail("prepare:populated");
            fs::rename(&new_dir, &dir).map_err(Error::io("rename", &new_dir))?;
            if durable {
                fsync_dir(&self.snapshots)?;
            }
            self.fail("prepare:renamed");
            Ok(())
        })();
        if let Err(e) = built {
            self.discard(&new_dir);
            self.discard(&dir);
            return Err(e);
        }
        let inserted = (|| {
            let txn = self.db.begin_write().map_err(self.db_err("begin"))?;
            let mounts = {
                let mut table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
                let p = Self::check_create(&table, key, parent)?;
                if p.as_ref().map(|p| p.id) != parent_rec.as_ref().map(|p| p.id) {
                    // Removed and re-created while we populated: our copy is stale.
                    return Err(Error::NotFound {
                        key: parent.unwrap_or_default().to_string(),
                    });
                }
                let now = now_nanos();
                let rec = Record {
                    id,
                    kind,
                    parent: parent.map(str::to_string),
                    labels,
                    created: now,
                    updated: now,
                    usage: None,
                };
                table
                    .insert(key, encode(&rec).as_slice())
                    .map_err(self.db_err(format!("insert {key:?}")))?;
                if let Some(p) = parent {
                    let mut children = txn.open_table(CHILDREN).map_err(self.db_err("open"))?;
                    children
                        .insert((p, key), ())
                        .map_err(self.db_err("index"))?;
                }
                self.mounts_of(&table, key, &rec)?
            };
            self.db
                .commit(txn)
                .map_err(self.db_err(format!("commit {key:?}")))?;
            Ok(mounts)
        })();
        if inserted.is_err() {
            self.discard(&dir);
        }
        inserted
    }

    /// Best-effort removal of a directory that no record names (cleanup retries).
    fn discard(&self, path: &Path) {
        let Some(name) = path.file_name() else { return };
        let removed = self
            .snapshots
            .join(format!("{REMOVED_PREFIX}{}", name.to_string_lossy()));
        if fs::rename(path, &removed).is_ok()
            && let Err(e) = remove_tree(&removed)
        {
            log::warn!(
                "snapshotter: leaving {} for cleanup: {e}",
                removed.display()
            );
        }
    }

    fn mounts_of(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
        rec: &Record,
    ) -> Result<Vec<Mount>> {
        if rec.kind == Kind::Committed {
            return Err(Error::NotMountable {
                key: key.to_string(),
            });
        }
        let parents = parent_ids(table, rec)?
            .into_iter()
            .map(|id| self.dir(id))
            .collect();
        Ok(self.driver.mounts(&Resolved {
            kind: rec.kind,
            dir: self.dir(rec.id),
            parents,
        }))
    }

    pub(crate) fn stat(&self, key: &str) -> Result<Info> {
        check_key(key)?;
        let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
        let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
        Ok(must_get(&table, key)?.info(key))
    }

    pub(crate) fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        check_key(key)?;
        let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
        let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
        let rec = must_get(&table, key)?;
        self.mounts_of(&table, key, &rec)
    }

    pub(crate) fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let key = info.name.as_str();
        check_key(key)?;
        let txn = self.db.begin_write().map_err(self.db_err("begin"))?;
        let out = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            let mut rec = must_get(&table, key)?;
            if fieldpaths.is_empty() {
                rec.labels = info.labels.clone();
            }
            for path in fieldpaths {
                if *path == "labels" {
                    rec.labels = info.labels.clone();
                } else if let Some(k) = path.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                        None => rec.labels.remove(k),
                    };
                } else {
                    return Err(Error::InvalidFieldpath {
                        key: key.to_string(),
                        path: path.to_string(),
                    });
                }
            }
            check_labels(&rec.labels)?;
            rec.updated = now_nanos();
            table
                .insert(key, encode(&rec).as_slice())
                .map_err(self.db_err(format!("update {key:?}")))?;
            rec.info(key)
        };
        self.db
            .commit(txn)
            .map_err(self.db_err(format!("commit {key:?}")))?;
        Ok(out)
    }

    pub(crate) fn usage(&self, key: &str) -> Result<Usage> {
        check_key(key)?;
        let rec = {
            let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
            let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            must_get(&table, key)?
        };
        if let Some((size, inodes)) = rec.usage {
            return Ok(Usage { size, inodes });
        }
        disk_usage(&self.driver.layer_dir(&self.dir(rec.id))).map_err(|e| match e {
            // Removed while we walked it.
            Error::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Error::NotFound {
                    key: key.to_string(),
                }
            }
            e => e,
        })
    }

    pub(crate) fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        check_key(name)?;
        check_key(key)?;
        check_labels(&labels)?;
        let check = |table: &dyn Fn(&str) -> Result<Option<Record>>| -> Result<Record> {
            let rec = table(key)?.ok_or_else(|| Error::NotFound { key: key.into() })?;
            if rec.kind != Kind::Active {
                return Err(Error::NotActive {
                    key: key.to_string(),
                    kind: rec.kind,
                });
            }
            if table(name)?.is_some() {
                return Err(Error::AlreadyExists {
                    key: name.to_string(),
                });
            }
            Ok(rec)
        };
        let id = {
            let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
            let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            check(&|k| get_record(&table, k))?.id
        };
        // Measured outside any lock: the walk can be long.
        let usage = disk_usage(&self.driver.layer_dir(&self.dir(id)))?;
        let txn = self.db.begin_write().map_err(self.db_err("begin"))?;
        {
            let mut table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            let rec = {
                let t = &table;
                check(&|k| get_record(t, k))?
            };
            if rec.id != id {
                // Removed and re-prepared meanwhile; our usage is for another directory.
                return Err(Error::NotFound { key: key.into() });
            }
            let now = now_nanos();
            let committed = Record {
                id,
                kind: Kind::Committed,
                parent: rec.parent.clone(),
                labels,
                created: now,
                updated: now,
                usage: Some((usage.size, usage.inodes)),
            };
            table
                .insert(name, encode(&committed).as_slice())
                .map_err(self.db_err(format!("insert {name:?}")))?;
            table
                .remove(key)
                .map_err(self.db_err(format!("remove {key:?}")))?;
            if let Some(p) = &rec.parent {
                let mut children = txn.open_table(CHILDREN).map_err(self.db_err("open"))?;
                children
                    .remove((p.as_str(), key))
                    .map_err(self.db_err("index"))?;
                children
                    .insert((p.as_str(), name), ())
                    .map_err(self.db_err("index"))?;
            }
        }
        self.db
            .commit(txn)
            .map_err(self.db_err(format!("commit {key:?} as {name:?}")))
    }

    pub(crate) fn remove(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let txn = self.db.begin_write().map_err(self.db_err("begin"))?;
        let id = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            let rec = must_get(&table, key)?;
            let mut children = txn.open_table(CHILDREN).map_err(self.db_err("open"))?;
            let mut kids = Vec::new();
            for item in children
                .range((key, "")..)
                .map_err(self.db_err("read index"))?
            {
                let (k, _) = item.map_err(self.db_err("read index"))?;
                let (p, c) = k.value();
                if p != key {
                    break;
                }
                kids.push(c.to_string());
            }
            if let Some(example) = kids.first() {
                return Err(Error::HasChildren {
                    key: key.to_string(),
                    children: kids.len(),
                    example: example.clone(),
                });
            }
            table
                .remove(key)
                .map_err(self.db_err(format!("remove {key:?}")))?;
            if let Some(p) = &rec.parent {
                children
                    .remove((p.as_str(), key))
                    .map_err(self.db_err("index"))?;
            }
            rec.id
        };
        self.db
            .commit(txn)
            .map_err(self.db_err(format!("commit removal of {key:?}")))?;
        self.fail("remove:unlinked");
        // The record is gone: from here on the directory is an orphan, and a crash leaves it
        // to reconcile. Rename first so a half-deleted tree never sits under a live id.
        let dir = self.dir(id);
        let removed = self.snapshots.join(format!("{REMOVED_PREFIX}{id}"));
        match fs::rename(&dir, &removed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                log::warn!(
                    "snapshotter: removed {key:?} but could not rename {}: {e}; cleanup will",
                    dir.display()
                );
                return Ok(());
            }
        }
        // Not synced: with the record gone, `<id>` and `removed-<id>` are both orphans that
        // reconcile deletes, whichever of them a power loss leaves.
        self.fail("remove:renamed");
        self.sweeper.sweep(removed);
        Ok(())
    }

    pub(crate) fn walk(
        &self,
        filters: &[&str],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()> {
        let filter = crate::Filter::parse(filters)?;
        // Collect first: `f` may call back into us, and must not run under a transaction.
        let infos = {
            let txn = self.db.begin_read().map_err(self.db_err("begin"))?;
            let table = txn.open_table(SNAPSHOTS).map_err(self.db_err("open"))?;
            let mut infos = Vec::new();
            for item in table.iter().map_err(self.db_err("iterate"))? {
                let (k, v) = item.map_err(self.db_err("iterate"))?;
                let info = decode(k.value(), v.value())?.info(k.value());
                if filter.matches(&info) {
                    infos.push(info);
                }
            }
            infos
        };
        infos.into_iter().try_for_each(f)
    }

    pub(crate) fn cleanup(&self) -> Result<()> {
        self.cleanup_dirs()
    }

    /// A new empty directory under `<root>/staging` (see [`crate::staging`]).
    pub(crate) fn stage_dir(&self) -> Result<StageDir> {
        loop {
            let n = self.next_stage.fetch_add(1, Ordering::Relaxed);
            let path = self.staging.join(n.to_string());
            // The same mode a snapshot's layer dir is created with; adopt copies the real
            // one over anyway.
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => return Ok(StageDir::new(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create", &path)(e)),
            }
        }
    }

    /// Swaps the staged layer in for the empty layer dir of the freshly prepared active
    /// snapshot `key` (see [`crate::staging::Staging::adopt`]).
    pub(crate) fn adopt(&self, key: &str, layer: StagedLayer) -> Result<()> {
        check_key(key)?;
        let (rec, parents) = {
            let txn = self.db.begin_read().map_err(Error::db("begin"))?;
            let table = txn.open_table(SNAPSHOTS).map_err(Error::db("open"))?;
            let rec = must_get(&table, key)?;
            let parents = parent_ids(&table, &rec)?;
            (rec, parents)
        };
        let refuse = |reason| {
            Err(Error::CannotAdopt {
                key: key.to_string(),
                reason,
            })
        };
        if rec.kind != Kind::Active {
            return Err(Error::NotActive {
                key: key.to_string(),
                kind: rec.kind,
            });
        }
        if layer.on_parent != rec.parent.is_some() {
            return refuse(if layer.on_parent {
                "the layer was staged for a snapshot with a parent (overlay whiteouts), this one has none"
            } else {
                "the layer was staged for a snapshot without a parent (whiteouts deleted), this one has one"
            });
        }
        let dir = self.dir(rec.id);
        let layer_dir = self.driver.layer_dir(&dir);
        // Whatever is in the layer dir would be thrown away by the swap.
        if fs::read_dir(&layer_dir)
            .map_err(Error::io("list", &layer_dir))?
            .next()
            .is_some()
        {
            return refuse("its layer is not empty");
        }
        let md = fs::symlink_metadata(&layer_dir).map_err(Error::io("stat", &layer_dir))?;
        let staged = layer.dir.path();
        std::os::unix::fs::lchown(staged, Some(md.uid()), Some(md.gid()))
            .map_err(Error::io("chown", staged))?;
        fs::set_permissions(staged, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(Error::io("chmod", staged))?;
        let lowers: Vec<PathBuf> = parents
            .iter()
            .map(|id| self.driver.layer_dir(&self.dir(*id)))
            .collect();
        crate::apply::inherit(staged, &lowers, &layer.implicit_dirs).map_err(|source| {
            Error::Layer {
                key: key.to_string(),
                source,
            }
        })?;
        // Fixed up before the swap: the snapshot never shows a half-adopted layer. After it
        // the staging path holds the empty dir, removed when `layer` drops.
        exchange(staged, &layer_dir)?;
        fsync_dir(&dir)
    }
}

/// Atomically swaps two directories on one filesystem (`renameat2(RENAME_EXCHANGE)`); where
/// the filesystem cannot, the empty `to` is removed and `from` renamed onto it.
fn exchange(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            Error::io("rename", p)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path contains NUL",
            ))
        })
    };
    let (cf, ct) = (c(from)?, c(to)?);
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(Error::io("swap in staged layer", from)(e));
    }
    fs::remove_dir(to).map_err(Error::io("remove", to))?;
    fs::rename(from, to).map_err(Error::io("rename", from))?;
    // Leave an empty dir behind for the StageDir to remove, as the exchange does.
    fs::create_dir(from).map_err(Error::io("create", from))
}

/// Recursively deletes `path`; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("fsync", path))
}

/// Space and inodes used under `path`, each inode counted once (hard links), not crossing
/// into other filesystems.
pub(crate) fn disk_usage(path: &Path) -> Result<Usage> {
    let root = fs::symlink_metadata(path).map_err(Error::io("stat", path))?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![(path.to_path_buf(), root)];
    while let Some((p, md)) = stack.pop() {
        if !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        usage.inodes += 1;
        usage.size += md.blocks() as i64 * 512;
        if md.is_dir() {
            for e in fs::read_dir(&p).map_err(Error::io("list", &p))? {
                let e = e.map_err(Error::io("list", &p))?;
                let child = e.path();
                let cmd = fs::symlink_metadata(&child).map_err(Error::io("stat", &child))?;
                if cmd.dev() == dev {
                    stack.push((child, cmd));
                }
            }
        }
    }
    Ok(usage)
}

/// Implements [`crate::Snapshotter`] for a backend struct holding `engine: Engine<_>`; with
/// `staging`, also [`crate::Staging`] (for backends whose layer dirs hold one layer each).
macro_rules! delegate_snapshotter {
    ($ty:ty, staging) => {
        $crate::metadata::delegate_snapshotter!($ty, fn staging(&self) -> Option<&dyn $crate::Staging> {
            Some(self)
        });
        impl $crate::Staging for $ty {
            fn stage_dir(&self) -> $crate::Result<$crate::StageDir> {
                self.engine.stage_dir()
            }
            fn adopt(&self, key: &str, layer: $crate::StagedLayer) -> $crate::Result<()> {
                self.engine.adopt(key, layer)
            }
        }
    };
    ($ty:ty $(, $extra:item)?) => {
        impl $crate::Snapshotter for $ty {
            fn stat(&self, key: &str) -> $crate::Result<$crate::Info> {
                self.engine.stat(key)
            }
            fn update(
                &self,
                info: &$crate::Info,
                fieldpaths: &[&str],
            ) -> $crate::Result<$crate::Info> {
                self.engine.update(info, fieldpaths)
            }
            fn usage(&self, key: &str) -> $crate::Result<$crate::Usage> {
                self.engine.usage(key)
            }
            fn mounts(&self, key: &str) -> $crate::Result<Vec<$crate::Mount>> {
                self.engine.mounts(key)
            }
            fn prepare(
                &self,
                key: &str,
                parent: Option<&str>,
                labels: $crate::Labels,
            ) -> $crate::Result<Vec<$crate::Mount>> {
                self.engine
                    .create(key, parent, $crate::Kind::Active, labels)
            }
            fn view(
                &self,
                key: &str,
                parent: Option<&str>,
                labels: $crate::Labels,
            ) -> $crate::Result<Vec<$crate::Mount>> {
                self.engine.create(key, parent, $crate::Kind::View, labels)
            }
            fn commit(&self, name: &str, key: &str, labels: $crate::Labels) -> $crate::Result<()> {
                self.engine.commit(name, key, labels)
            }
            fn remove(&self, key: &str) -> $crate::Result<()> {
                self.engine.remove(key)
            }
            fn walk(
                &self,
                filters: &[&str],
                f: &mut dyn FnMut($crate::Info) -> $crate::Result<()>,
            ) -> $crate::Result<()> {
                self.engine.walk(filters, f)
            }
            fn cleanup(&self) -> $crate::Result<()> {
                self.engine.cleanup()
            }
            fn settle(&self) {
                self.engine.settle()
            }
            $($extra)?
        }
    };
}
pub(crate) use delegate_snapshotter;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_hardlinks_once() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), vec![1u8; 10000]).unwrap();
        fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 3, "root dir, file a (=b), sub");
        let file_blocks = fs::metadata(d.path().join("a")).unwrap().blocks() as i64 * 512;
        assert!(u.size >= file_blocks && file_blocks > 0, "{u:?}");
    }
}
