//! Garbage collection of content: mark what is reachable, sweep the rest.
//!
//! containerd's collector (core/metadata/gc.go) over our tables, per namespace:
//!
//! ```text
//! roots                                         edges (content labels)
//!   images' targets                  ──┐          containerd.io/gc.ref.content*  = <digest> ─▶ content
//!   content labelled gc.root           ├─▶ content ─┘
//!   resources of unexpired leases      │     (gc.ref.snapshot.<snapshotter>* point at snapshots,
//!   content refs of snapshots        ──┘      which this collector does not sweep)
//! ```
//!
//! Sweep: expired leases (label `containerd.io/gc.expire`, RFC3339) are deleted with their
//! resource rows; content records not marked are deleted; then every blob on disk that no
//! namespace has a record of is removed. Snapshots are not collected here (their removal needs the
//! snapshotter backends); every existing snapshot counts as live, so the content it references
//! stays. In-flight ingests are not touched.
//!
//! Runs with [`BLOB_LOCK`] held for writing, so no blob can become visible between the
//! decision to remove it and its removal; all record changes are one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use content::ContentStore;
#[cfg(test)]
use content::Digest;

use crate::metadata::{
    Blob, CONTENT, IMAGES, Image, LEASES, Labels, Lease, SNAPSHOTS, Snapshot, Tx, key,
};
use crate::services::content::BLOB_LOCK;
use crate::services::{Daemon, Shared};

pub const LABEL_ROOT: &str = "containerd.io/gc.root";
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub expired_leases: usize,
    pub content_records: usize,
    pub blobs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gc: {0}")]
    Metadata(#[from] crate::metadata::Error),
    #[error("gc: content store: {0}")]
    Store(#[from] content::Error),
}

impl Error {
    pub fn code(&self) -> protocol::Code {
        match self {
            Error::Metadata(e) => e.code(),
            Error::Store(e) => e.code(),
        }
    }
}

/// Splits `ns\0rest` into `(ns, rest)`.
fn split_ns(k: &str) -> Option<(&str, &str)> {
    k.split_once('\0')
}

/// Digests a set of labels points at with `containerd.io/gc.ref.content*`.
fn content_refs(labels: &Labels) -> impl Iterator<Item = &str> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(LABEL_REF_CONTENT))
        .map(|(_, v)| v.as_str())
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
    let _g = BLOB_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let mut report = Report::default();
    let tx = d.db.write()?;

    for k in tx.keys_all(LEASES)? {
        let Some((ns, id)) = split_ns(&k) else {
            continue;
        };
        if let Some(lease) = tx.get::<Lease>(LEASES, &k)?
            && expired(id, &lease, now)
        {
            tx.delete_lease(ns, id)?;
            report.expired_leases += 1;
        }
    }

    let blobs = all_blobs(&tx)?;
    let marked = mark(&tx, &blobs)?;
    let mut referenced = BTreeSet::new();
    for (ns, digest) in blobs.keys() {
        if marked.contains(&(ns.clone(), digest.clone())) {
            referenced.insert(digest.clone());
        } else {
            tx.delete(CONTENT, &key(ns, &[digest]))?;
            report.content_records += 1;
            log::debug!("gc: removed content {digest} from namespace {ns}");
        }
    }
    tx.commit()?;

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
    if report != Report::default() {
        log::info!(
            "gc: removed {} expired leases, {} content records, {} blobs",
            report.expired_leases,
            report.content_records,
            report.blobs
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

/// The (namespace, digest) pairs reachable from the roots.
fn mark(
    tx: &Tx,
    blobs: &BTreeMap<(String, String), Blob>,
) -> Result<BTreeSet<(String, String)>, Error> {
    let mut todo: Vec<(String, String)> = Vec::new();
    for k in tx.keys_all(IMAGES)? {
        if let (Some((ns, _)), Some(img)) = (split_ns(&k), tx.get::<Image>(IMAGES, &k)?) {
            todo.push((ns.to_string(), img.target.digest));
        }
    }
    for k in tx.keys_all(LEASES)? {
        let Some((ns, id)) = split_ns(&k) else {
            continue;
        };
        for (kind, rid) in tx.lease_resources(ns, id)? {
            if kind == "content" {
                todo.push((ns.to_string(), rid));
            }
        }
    }
    for k in tx.keys_all(SNAPSHOTS)? {
        if let (Some((ns, _)), Some(s)) = (split_ns(&k), tx.get::<Snapshot>(SNAPSHOTS, &k)?) {
            todo.extend(content_refs(&s.labels).map(|dg| (ns.to_string(), dg.to_string())));
        }
    }
    for ((ns, digest), b) in blobs {
        if b.labels.contains_key(LABEL_ROOT) {
            todo.push((ns.clone(), digest.clone()));
        }
    }
    let mut marked = BTreeSet::new();
    while let Some(node) = todo.pop() {
        let Some(b) = blobs.get(&node) else {
            continue;
        };
        if !marked.insert(node.clone()) {
            continue;
        }
        todo.extend(content_refs(&b.labels).map(|dg| (node.0.clone(), dg.to_string())));
    }
    Ok(marked)
}

/// Runs a collection in the background (after a deletion); failures are logged.
pub fn trigger(d: Shared) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = collect(&d, SystemTime::now()) {
            log::error!("{e}");
        }
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
            let d = d.clone();
            let done = tokio::task::spawn_blocking(move || collect(&d, SystemTime::now())).await;
            match done {
                Ok(Err(e)) => log::error!("{e}"),
                Err(e) => log::error!("gc worker: {e}"),
                Ok(Ok(_)) => {}
            }
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
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
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

    fn daemon(dir: &std::path::Path) -> Daemon {
        Daemon {
            db: Db::open(&dir.join("meta.redb")).unwrap(),
            events: Exchange::default(),
            root: dir.to_path_buf(),
            content: std::sync::Arc::new(content::LocalStore::open(dir.join("content")).unwrap()),
            snapshotters: Default::default(),
        }
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
                blobs: 2
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
}
