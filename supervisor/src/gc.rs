//! Garbage collection: mark what is reachable, sweep the rest (content and snapshots).
//!
//! containerd's collector (core/metadata/gc.go) over our tables, per namespace. Nodes are
//! content records and snapshot records; one mark walks both:
//!
//! ```text
//! roots                                     edges
//!   images' targets                          content ──gc.ref.content*──────────────▶ content
//!   content and snapshots labelled gc.root   content ──gc.ref.snapshot.<sn>[/…]────▶ snapshot
//!   resources of unexpired leases            snapshot ─gc.ref.content*──────────────▶ content
//!     (content, snapshots/<sn>)              snapshot ─gc.ref.snapshot.<sn>[/…]────▶ snapshot
//!   containers' snapshot_key                 snapshot ─parent──────────────────────▶ snapshot
//!   snapshots created since the run began
//! ```
//!
//! A label's value is a digest (content) or a snapshot key in the same namespace and the
//! snapshotter named in the label key (`containerd.io/gc.ref.snapshot.overlayfs` or
//! `…overlayfs/<anything>`).
//!
//! Sweep, in this order:
//! 1. one transaction: expired leases (label `containerd.io/gc.expire`, RFC3339) are deleted
//!    with their resource rows, content records not marked are deleted;
//! 2. every blob on disk that no namespace has a record of is removed (with [`BLOB_LOCK`] held
//!    for writing, so no blob can become visible between the decision and the removal);
//! 3. [`snapshots::sweep`] with the marked snapshots: unmarked records in one transaction,
//!    then the backend snapshots, children first. No transaction is held across backend work.
//!
//! Data goes after metadata: a crash between steps leaves orphan blobs or backend snapshots
//! that the next run (or the snapshotter's cleanup) removes. A snapshot the mark did not see
//! (created, or re-created under the same key, after the mark's transaction) is kept; one that became
//! reachable only in that window through a new label is the race containerd accepts too (its
//! unpacker holds a lease while it labels). In-flight ingests are not touched.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use content::ContentStore;
#[cfg(test)]
use content::Digest;

use crate::metadata::{
    Blob, CONTAINERS, CONTENT, Container, IMAGES, Image, LEASES, Labels, Lease, SNAPSHOTS,
    Snapshot, Time, Tx, key,
};
use crate::services::content::BLOB_LOCK;
use crate::services::{Daemon, Shared};
use crate::snapshots::{self, key_of};

pub const LABEL_ROOT: &str = "containerd.io/gc.root";
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Followed by `<snapshotter>`, optionally `/<anything>`; the value is a snapshot key.
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub expired_leases: usize,
    pub content_records: usize,
    pub blobs: usize,
    /// Snapshot records removed (their backend snapshots go with them).
    pub snapshots: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gc: {0}")]
    Metadata(#[from] crate::metadata::Error),
    #[error("gc: content store: {0}")]
    Store(#[from] content::Error),
    #[error("gc: {0}")]
    Snapshots(#[from] snapshots::Error),
}

impl Error {
    pub fn code(&self) -> protocol::Code {
        match self {
            Error::Metadata(e) => e.code(),
            Error::Store(e) => e.code(),
            Error::Snapshots(e) => e.code(),
        }
    }
}

/// Splits `ns\0rest` into `(ns, rest)`.
fn split_ns(k: &str) -> Option<(&str, &str)> {
    k.split_once('\0')
}

/// Digests a set of labels points at with `containerd.io/gc.ref.content*`.
pub(crate) fn content_refs(labels: &Labels) -> impl Iterator<Item = &str> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(LABEL_REF_CONTENT))
        .map(|(_, v)| v.as_str())
}

/// Record keys of the snapshots a set of labels in namespace `ns` points at with
/// `containerd.io/gc.ref.snapshot.<snapshotter>[/…]`.
fn snapshot_refs<'a>(ns: &'a str, labels: &'a Labels) -> impl Iterator<Item = String> + 'a {
    labels.iter().filter_map(move |(k, v)| {
        let rest = k.strip_prefix(LABEL_REF_SNAPSHOT)?;
        let sn = rest.split('/').next().unwrap_or("");
        (!sn.is_empty() && !v.is_empty()).then(|| key_of(ns, sn, v))
    })
}

/// True if the lease carries a `gc.expire` time that has passed. An unparsable time never
/// expires (it is logged): dropping a lease by mistake loses data, keeping it only space.
fn expired(id: &str, lease: &Lease, now: SystemTime) -> bool {
    let Some(v) = lease.labels.get(LABEL_EXPIRE) else {
        return false;
    };
    match parse_rfc3339(v) {
        Some(t) => t < now,
        None => {
            log::warn!("gc: lease {id}: cannot parse {LABEL_EXPIRE}={v:?}; keeping it");
            false
        }
    }
}

/// Collects garbage once. Blocking: call it through `spawn_blocking`.
pub fn collect(d: &Daemon, now: SystemTime) -> Result<Report, Error> {
    // One collection at a time (the timer's, a trigger's, a synchronous delete's): a second
    // waits and finds what the first left, instead of racing it to the same directories. A
    // caller that collects after a trigger thus also waits for the trigger's collection.
    static COLLECTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = COLLECTING.lock().unwrap_or_else(|e| e.into_inner());
    // Before the mark: anything created from here on is kept by this run.
    let started = Time::now();
    let blob_guard = BLOB_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let mut report = Report::default();
    let tx = d.db.write()?;

    let mut ingests = Vec::new();
    for k in tx.keys_all(LEASES)? {
        let Some((ns, id)) = split_ns(&k) else {
            continue;
        };
        if let Some(lease) = tx.get::<Lease>(LEASES, &k)?
            && expired(id, &lease, now)
        {
            let held = tx.delete_lease(ns, id)?.unwrap_or_default();
            ingests.extend(held.into_iter().map(|r| (ns.to_string(), r)));
            report.expired_leases += 1;
        }
    }

    let blobs = all_blobs(&tx)?;
    let snaps = all_snapshots(&tx)?;
    let marked = mark(&tx, &blobs, &snaps, started)?;
    let mut referenced = BTreeSet::new();
    for (ns, digest) in blobs.keys() {
        if marked.content.contains(&(ns.clone(), digest.clone())) {
            referenced.insert(digest.clone());
        } else {
            tx.delete(CONTENT, &key(ns, &[digest]))?;
            report.content_records += 1;
            log::debug!("gc: removed content {digest} from namespace {ns}");
        }
    }
    // Most collections (one follows every deletion) find nothing: a commit would still sync
    // the database file, beside the syncs of the requests that go on meanwhile.
    if report.expired_leases == 0 && report.content_records == 0 {
        tx.abort()?;
    } else {
        tx.commit()?;
    }

    // Data after metadata: a crash here leaves orphan blobs, which the next run removes.
    let mut on_disk = Vec::new();
    d.content.walk(&[], &mut |info| {
        on_disk.push(info.digest);
        Ok(())
    })?;
    for digest in on_disk {
        if referenced.contains(&digest.to_string()) {
            continue;
        }
        match d.content.delete(&digest) {
            Ok(()) => report.blobs += 1,
            Err(e) if e.code() == protocol::Code::NotFound => {}
            Err(e) => log::warn!("gc: remove blob {digest}: {e}"),
        }
    }
    drop(blob_guard);
    // Ingests of the expired leases go with them (as in containerd).
    for (ns, r) in ingests {
        crate::services::content::abort_ingests(d, &ns, &[r]);
    }

    // Snapshots: records in one transaction of their own, then backend removals outside it.
    let seen: std::collections::HashMap<String, String> = snaps
        .iter()
        .map(|(k, s)| (k.clone(), s.backend_key.clone()))
        .collect();
    let removed = snapshots::sweep(&d.db, &d.snapshotters, &marked.snapshots, &seen)?;
    report.snapshots = removed.len();
    for k in &removed {
        log::debug!("gc: removed snapshot {}", k.replace('\0', "/"));
    }

    if report != Report::default() {
        log::info!(
            "gc: removed {} expired leases, {} content records, {} blobs, {} snapshots",
            report.expired_leases,
            report.content_records,
            report.blobs,
            report.snapshots
        );
    }
    Ok(report)
}

/// Every content record, by (namespace, digest).
fn all_blobs(tx: &Tx) -> Result<BTreeMap<(String, String), Blob>, Error> {
    let mut out = BTreeMap::new();
    for k in tx.keys_all(CONTENT)? {
        if let (Some((ns, digest)), Some(b)) = (split_ns(&k), tx.get::<Blob>(CONTENT, &k)?) {
            out.insert((ns.to_string(), digest.to_string()), b);
        }
    }
    Ok(out)
}

/// Every snapshot record, by record key (`<ns>\0<snapshotter>\0<key>`).
fn all_snapshots(tx: &Tx) -> Result<BTreeMap<String, Snapshot>, Error> {
    let mut out = BTreeMap::new();
    for k in tx.keys_all(SNAPSHOTS)? {
        if let Some(s) = tx.get::<Snapshot>(SNAPSHOTS, &k)? {
            out.insert(k, s);
        }
    }
    Ok(out)
}

/// A node of the reference graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    /// (namespace, digest)
    Content(String, String),
    /// A snapshot record key.
    Snapshot(String),
}

/// What the mark reached.
#[derive(Debug, Default)]
struct Marked {
    content: BTreeSet<(String, String)>,
    snapshots: HashSet<String>,
}

/// Everything reachable from the roots (see the module doc).
fn mark(
    tx: &Tx,
    blobs: &BTreeMap<(String, String), Blob>,
    snaps: &BTreeMap<String, Snapshot>,
    started: Time,
) -> Result<Marked, Error> {
    let mut todo: Vec<Node> = Vec::new();
    for k in tx.keys_all(IMAGES)? {
        if let (Some((ns, _)), Some(img)) = (split_ns(&k), tx.get::<Image>(IMAGES, &k)?) {
            todo.push(Node::Content(ns.to_string(), img.target.digest));
        }
    }
    for k in tx.keys_all(LEASES)? {
        let Some((ns, id)) = split_ns(&k) else {
            continue;
        };
        for (kind, rid) in tx.lease_resources(ns, id)? {
            if kind == "content" {
                todo.push(Node::Content(ns.to_string(), rid));
            } else if let Some(sn) = kind.strip_prefix("snapshots/") {
                todo.push(Node::Snapshot(key_of(ns, sn, &rid)));
            }
        }
    }
    for k in tx.keys_all(CONTAINERS)? {
        if let (Some((ns, _)), Some(c)) = (split_ns(&k), tx.get::<Container>(CONTAINERS, &k)?)
            && !c.snapshot_key.is_empty()
        {
            todo.push(Node::Snapshot(key_of(ns, &c.snapshotter, &c.snapshot_key)));
        }
    }
    for ((ns, digest), b) in blobs {
        if b.labels.contains_key(LABEL_ROOT) {
            todo.push(Node::Content(ns.clone(), digest.clone()));
        }
    }
    for (k, s) in snaps {
        if s.labels.contains_key(LABEL_ROOT) || s.created_at >= started {
            todo.push(Node::Snapshot(k.clone()));
        }
    }
    let mut marked = Marked::default();
    while let Some(node) = todo.pop() {
        match node {
            Node::Content(ns, digest) => {
                let node = (ns, digest);
                let Some(b) = blobs.get(&node) else {
                    continue;
                };
                if !marked.content.insert(node.clone()) {
                    continue;
                }
                let ns = &node.0;
                todo.extend(
                    content_refs(&b.labels).map(|dg| Node::Content(ns.clone(), dg.to_string())),
                );
                todo.extend(snapshot_refs(ns, &b.labels).map(Node::Snapshot));
            }
            Node::Snapshot(k) => {
                let Some(s) = snaps.get(&k) else {
                    continue;
                };
                if !marked.snapshots.insert(k.clone()) {
                    continue;
                }
                let mut parts = k.splitn(3, '\0');
                let (ns, sn) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                if !s.parent.is_empty() {
                    todo.push(Node::Snapshot(key_of(ns, sn, &s.parent)));
                }
                todo.extend(
                    content_refs(&s.labels).map(|dg| Node::Content(ns.to_string(), dg.to_string())),
                );
                todo.extend(snapshot_refs(ns, &s.labels).map(Node::Snapshot));
            }
        }
    }
    Ok(marked)
}

/// Whether a collection runs, and whether another was asked for meanwhile. One per daemon.
///
/// Collections run one at a time (each holds [`BLOB_LOCK`] and the metadata's write
/// transaction), and the asks that come while one runs make exactly one more run after it: a
/// burst of deletions (a wave of 50 containers removed is about 150 of them) costs two
/// collections, not one each with a blocked thread apiece waiting for its turn. containerd's
/// scheduler coalesces the same way.
#[derive(Debug, Default)]
pub struct Scheduler {
    state: Mutex<Run>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Run {
    #[default]
    Idle,
    /// `again`: asked for since this run's mark began.
    Running { again: bool },
}

impl Scheduler {
    /// Asks for a run: true if the caller is to start one, false if the running one will run
    /// again.
    fn ask(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            Run::Idle => {
                *s = Run::Running { again: false };
                true
            }
            Run::Running { .. } => {
                *s = Run::Running { again: true };
                false
            }
        }
    }

    /// After a run: true if it must run again (asked for meanwhile), else it is idle now.
    fn finished(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            Run::Running { again: true } => {
                *s = Run::Running { again: false };
                true
            }
            _ => {
                *s = Run::Idle;
                false
            }
        }
    }
}

/// Runs a collection in the background (after a deletion, or on the timer), or has the
/// running one run once more (see [`Scheduler`]); failures are logged.
pub fn trigger(d: Shared) {
    if !d.gc.ask() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        loop {
            if let Err(e) = collect(&d, SystemTime::now()) {
                log::error!("{e}");
            }
            if !d.gc.finished() {
                break;
            }
        }
        // Collections come after deletions, so a burst of work (a wave of containers removed)
        // is over: what it used can go back to the system. glibc returns free memory by itself
        // only from the top of its heaps, and bursts of 50 containers leave free holes below:
        // in the 1,000-container soak corrald's RSS ended 10.5 % above its start without a
        // trim here, 8.8 % with it.
        crate::trim::soon();
    });
}

/// Collects every `interval` until the runtime shuts down.
pub fn spawn_timer(d: Shared, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            trigger(d.clone());
        }
    });
}

/// Parses an RFC 3339 time (`2006-01-02T15:04:05Z`, optional fraction, `Z` or `±hh:mm`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let digits = &frac[..frac.len().min(9)];
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(&tz[..1], "+" | "-") && &tz[3..4] == ":" => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let sign = if &tz[..1] == "-" { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = protocol::logfmt::days_from_civil(y, mo as u32, day as u32);
    let secs = days * 86400 + h * 3600 + mi * 60 + sec - offset;
    let d = Duration::new(secs.unsigned_abs(), nanos);
    if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Exchange;
    use crate::metadata::{Db, Descriptor, Time};
    use content::WriterOpts;

    #[test]
    fn asks_during_a_run_make_exactly_one_more() {
        let s = Scheduler::default();
        assert!(s.ask(), "idle: the caller runs");
        assert!(!s.ask(), "running: no second runner");
        assert!(!s.ask());
        assert!(s.finished(), "asked meanwhile: once more");
        assert!(!s.finished(), "nothing asked since: idle");
        assert!(s.ask(), "idle again");
        assert!(!s.finished());
    }

    fn daemon(dir: &std::path::Path) -> Daemon {
        Daemon {
            db: Db::open(&dir.join("meta.redb")).unwrap(),
            events: Exchange::default(),
            root: dir.to_path_buf(),
            content: std::sync::Arc::new(content::LocalStore::open(dir.join("content")).unwrap()),
            snapshotters: [(
                "native".to_string(),
                std::sync::Arc::new(
                    snapshotter::NativeSnapshotter::open(dir.join("native")).unwrap(),
                ) as std::sync::Arc<dyn snapshotter::Snapshotter>,
            )]
            .into_iter()
            .collect(),
            gc: Default::default(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The native snapshotter of `d` as namespace `ns` sees it, creating under `lease`.
    fn snaps<'a>(
        d: &'a Daemon,
        busy: &'a snapshots::Busy,
        ns: &'a str,
        lease: Option<&'a str>,
    ) -> snapshots::Namespaced<'a> {
        snapshots::Namespaced {
            db: &d.db,
            busy,
            ns,
            name: "native",
            backend: d.snapshotters["native"].as_ref(),
            lease,
        }
    }

    /// Makes the committed snapshot `name` on `parent` (empty: none) with `labels`.
    fn committed(s: &snapshots::Namespaced, name: &str, parent: &str, l: &[(&str, &str)]) {
        let active = format!("{name}-active");
        s.prepare(&active, parent, Labels::new(), false).unwrap();
        s.commit(name, &active, labels(l)).unwrap();
    }

    /// Backend snapshot names on disk.
    fn backend_names(d: &Daemon) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        d.snapshotters["native"]
            .walk(&[], &mut |i| {
                out.insert(i.name);
                Ok(())
            })
            .unwrap();
        out
    }

    /// Stores `data` on disk and records it in `ns` with `labels`; returns the digest.
    fn blob(d: &Daemon, ns: &str, data: &[u8], labels: &[(&str, &str)]) -> String {
        let digest = Digest::of(data);
        if d.content.info(&digest).is_err() {
            let mut w = d
                .content
                .writer(WriterOpts::new(digest.to_string()))
                .unwrap();
            w.write_all(data).unwrap();
            w.commit(None, Some(&digest), Labels::new()).unwrap();
        }
        let tx = d.db.write().unwrap();
        tx.ensure_namespace(ns).unwrap();
        let rec = Blob {
            size: data.len() as i64,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: Time::now(),
            updated_at: Time::now(),
        };
        tx.put(CONTENT, &key(ns, &[&digest.to_string()]), &rec)
            .unwrap();
        tx.commit().unwrap();
        digest.to_string()
    }

    fn visible(d: &Daemon, ns: &str, digest: &str) -> bool {
        d.db.get::<Blob>(CONTENT, &key(ns, &[digest]))
            .unwrap()
            .is_some()
    }

    fn on_disk(d: &Daemon, digest: &str) -> bool {
        d.content.info(&Digest::parse(digest).unwrap()).is_ok()
    }

    fn lease(d: &Daemon, ns: &str, id: &str, expire: Option<&str>, content: &[&str]) {
        let tx = d.db.write().unwrap();
        let mut labels = Labels::new();
        if let Some(e) = expire {
            labels.insert(LABEL_EXPIRE.into(), e.into());
        }
        tx.put(
            LEASES,
            &key(ns, &[id]),
            &Lease {
                labels,
                created_at: Time::now(),
            },
        )
        .unwrap();
        for c in content {
            tx.add_lease_resource(ns, id, "content", c).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn marks_from_images_roots_and_leases_and_sweeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        // image → index → manifest → {config, layer}; an orphan; a gc.root; a leased blob.
        let layer = blob(&d, "a", b"layer", &[]);
        let config = blob(&d, "a", b"config", &[]);
        let manifest = blob(
            &d,
            "a",
            b"manifest",
            &[
                ("containerd.io/gc.ref.content.config", &config),
                ("containerd.io/gc.ref.content.l.0", &layer),
            ],
        );
        let index = blob(
            &d,
            "a",
            b"index",
            &[("containerd.io/gc.ref.content.m.0", &manifest)],
        );
        let orphan = blob(&d, "a", b"orphan", &[]);
        let rooted = blob(&d, "a", b"rooted", &[(LABEL_ROOT, "2024-01-01T00:00:00Z")]);
        let leased = blob(&d, "a", b"leased", &[]);
        let expired_lease = blob(&d, "a", b"in an expired lease", &[]);
        // The same orphan bytes are referenced from another namespace's lease: its record
        // in `a` goes, the bytes stay.
        let shared = blob(&d, "a", b"shared", &[]);
        blob(&d, "b", b"shared", &[]);
        lease(&d, "b", "keep", None, &[&shared]);
        lease(&d, "a", "live", Some("2999-01-01T00:00:00Z"), &[&leased]);
        lease(
            &d,
            "a",
            "old",
            Some("2001-01-01T00:00:00+02:00"),
            &[&expired_lease],
        );
        let tx = d.db.write().unwrap();
        let img = Image {
            labels: Labels::new(),
            target: Descriptor {
                digest: index.clone(),
                ..Default::default()
            },
            created_at: Time::now(),
            updated_at: Time::now(),
        };
        tx.put(IMAGES, &key("a", &["busybox"]), &img).unwrap();
        tx.commit().unwrap();

        let report = collect(&d, SystemTime::now()).unwrap();
        for kept in [&layer, &config, &manifest, &index, &rooted, &leased] {
            assert!(
                visible(&d, "a", kept) && on_disk(&d, kept),
                "{kept} collected"
            );
        }
        for gone in [&orphan, &expired_lease] {
            assert!(!visible(&d, "a", gone), "{gone} kept");
            assert!(!on_disk(&d, gone), "{gone} left on disk");
        }
        assert!(!visible(&d, "a", &shared) && visible(&d, "b", &shared));
        assert!(
            on_disk(&d, &shared),
            "bytes still referenced from b were removed"
        );
        assert!(
            d.db.get::<Lease>(LEASES, &key("a", &["old"]))
                .unwrap()
                .is_none()
        );
        assert!(
            d.db.get::<Lease>(LEASES, &key("a", &["live"]))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            report,
            Report {
                expired_leases: 1,
                content_records: 3,
                blobs: 2,
                snapshots: 0,
            }
        );
        // A second run finds nothing; dropping the image frees its whole chain.
        assert_eq!(collect(&d, SystemTime::now()).unwrap(), Report::default());
        let tx = d.db.write().unwrap();
        tx.delete(IMAGES, &key("a", &["busybox"])).unwrap();
        tx.commit().unwrap();
        let report = collect(&d, SystemTime::now()).unwrap();
        assert_eq!(report.content_records, 4);
        assert!(!on_disk(&d, &layer));
    }

    #[test]
    fn cycles_terminate_and_unknown_refs_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let a = Digest::of(b"a").to_string();
        let b = Digest::of(b"b").to_string();
        blob(&d, "n", b"a", &[(LABEL_ROOT, "x"), (LABEL_REF_CONTENT, &b)]);
        blob(
            &d,
            "n",
            b"b",
            &[
                ("containerd.io/gc.ref.content.x", &a),
                ("containerd.io/gc.ref.content.y", "sha256:missing"),
            ],
        );
        assert_eq!(collect(&d, SystemTime::now()).unwrap(), Report::default());
        assert!(visible(&d, "n", &b));
    }

    #[test]
    fn snapshots_are_marked_from_content_roots_leases_and_containers() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let busy = snapshots::Busy::default();
        let a = snaps(&d, &busy, "a", None);
        // The unpacked chain l1 ← l2, referenced by the image config.
        committed(&a, "l1", "", &[]);
        committed(&a, "l2", "l1", &[]);
        let config = blob(
            &d,
            "a",
            b"config",
            &[("containerd.io/gc.ref.snapshot.native", "l2")],
        );
        let manifest = blob(
            &d,
            "a",
            b"manifest",
            &[("containerd.io/gc.ref.content.config", &config)],
        );
        let tx = d.db.write().unwrap();
        let img = Image {
            labels: Labels::new(),
            target: Descriptor {
                digest: manifest.clone(),
                ..Default::default()
            },
            created_at: Time::now(),
            updated_at: Time::now(),
        };
        tx.put(IMAGES, &key("a", &["img"]), &img).unwrap();
        tx.commit().unwrap();
        // Unreferenced: a committed snapshot with an active child; its content ref does not
        // keep the blob it names.
        let dropped = blob(&d, "a", b"dropped", &[]);
        committed(&a, "o1", "", &[(LABEL_REF_CONTENT, &dropped)]);
        a.prepare("o2", "o1", Labels::new(), false).unwrap();
        // A gc.root on an ancestor-having snapshot; its content ref keeps a blob.
        let kept_by_snapshot = blob(&d, "a", b"kept by a snapshot", &[]);
        committed(&a, "base", "", &[]);
        a.prepare(
            "rooted",
            "base",
            labels(&[
                (LABEL_ROOT, "x"),
                ("containerd.io/gc.ref.content.x", &kept_by_snapshot),
            ]),
            false,
        )
        .unwrap();
        // Leased: one under a live lease, one under an expired one.
        lease(&d, "a", "live", None, &[]);
        lease(&d, "a", "old", Some("2001-01-01T00:00:00Z"), &[]);
        snaps(&d, &busy, "a", Some("live"))
            .prepare("leased", "", Labels::new(), false)
            .unwrap();
        snaps(&d, &busy, "a", Some("old"))
            .prepare("leased-expired", "", Labels::new(), false)
            .unwrap();
        // A container's rootfs.
        a.prepare("rootfs", "", Labels::new(), false).unwrap();
        let tx = d.db.write().unwrap();
        let c = Container {
            labels: Labels::new(),
            image: String::new(),
            runtime: crate::metadata::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: None,
            snapshotter: "native".into(),
            snapshot_key: "rootfs".into(),
            extensions: Default::default(),
            created_at: Time::now(),
            updated_at: Time::now(),
        };
        tx.put(CONTAINERS, &key("a", &["c1"]), &c).unwrap();
        tx.commit().unwrap();
        // The same key in another namespace is another snapshot, unreferenced there.
        committed(&snaps(&d, &busy, "b", None), "l2", "", &[]);
        assert_eq!(backend_names(&d).len(), 10);

        let report = collect(&d, SystemTime::now()).unwrap();
        let exists = |ns: &str, k: &str| snaps(&d, &busy, ns, None).stat(k).is_ok();
        for k in ["l1", "l2", "base", "rooted", "leased", "rootfs"] {
            assert!(exists("a", k), "snapshot {k} collected");
        }
        for k in ["o1", "o2", "leased-expired"] {
            assert!(!exists("a", k), "snapshot {k} kept");
        }
        assert!(!exists("b", "l2"));
        assert!(visible(&d, "a", &kept_by_snapshot) && on_disk(&d, &kept_by_snapshot));
        assert!(!visible(&d, "a", &dropped) && !on_disk(&d, &dropped));
        assert!(visible(&d, "a", &config));
        assert_eq!(report.snapshots, 4);
        assert_eq!(report.expired_leases, 1);
        // The backend snapshots went with the records.
        assert_eq!(backend_names(&d).len(), 6);

        // Without the image the unpacked chain goes (children first) and so does the config.
        let tx = d.db.write().unwrap();
        tx.delete(IMAGES, &key("a", &["img"])).unwrap();
        tx.commit().unwrap();
        let report = collect(&d, SystemTime::now()).unwrap();
        assert_eq!(report.snapshots, 2);
        assert!(!exists("a", "l1") && !exists("a", "l2"));
        assert!(!on_disk(&d, &config));
        assert_eq!(backend_names(&d).len(), 4);
        assert_eq!(collect(&d, SystemTime::now()).unwrap(), Report::default());
    }

    #[test]
    fn snapshot_ref_labels_name_the_snapshotter_and_key() {
        let l = labels(&[
            ("containerd.io/gc.ref.snapshot.overlayfs", "k1"),
            ("containerd.io/gc.ref.snapshot.native/2", "k2"),
            ("containerd.io/gc.ref.snapshot.", "nothing"),
            ("containerd.io/gc.ref.content", "sha256:x"),
        ]);
        let refs: BTreeSet<String> = snapshot_refs("ns", &l).collect();
        assert_eq!(
            refs,
            [
                key_of("ns", "overlayfs", "k1"),
                key_of("ns", "native", "k2")
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn rfc3339() {
        let t =
            |s: &str| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_nanos());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2000-03-01T00:00:00Z"), Some(951_868_800_000_000_000));
        assert_eq!(
            t("2000-03-01T01:00:00.5+01:00"),
            Some(951_868_800_500_000_000)
        );
        assert_eq!(
            t("2000-02-29T23:00:00-01:00"),
            Some(951_868_800_000_000_000)
        );
        for bad in [
            "",
            "2000-03-01",
            "2000-13-01T00:00:00Z",
            "2000-03-01T00:00:00",
            "x",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    /// A snapshot prepared under a lease while collections run is never swept: the sweep keeps
    /// what its mark did not see by creation time, which must therefore be stamped inside the
    /// record's write transaction (a time taken before it, while a collection held the write
    /// lock, once let a lease-held snapshot go — seen as `ctr run` failing with "snapshot …
    /// does not exist" when 50 started at once).
    #[test]
    fn snapshots_prepared_during_collections_survive() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        lease(&d, "a", "l1", None, &[]);
        let busy = snapshots::Busy::default();
        let stop = AtomicBool::new(false);
        let n = 400;
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    collect(&d, SystemTime::now()).unwrap();
                }
            });
            let sn = snaps(&d, &busy, "a", Some("l1"));
            for i in 0..n {
                sn.prepare(&format!("k{i}"), "", Labels::new(), false)
                    .unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        collect(&d, SystemTime::now()).unwrap();
        let sn = snaps(&d, &busy, "a", Some("l1"));
        let lost: Vec<usize> = (0..n)
            .filter(|i| sn.stat(&format!("k{i}")).is_err())
            .collect();
        assert!(lost.is_empty(), "swept while held by a lease: {lost:?}");
    }
}
