//! What corrald does about content damaged on disk: found, reported with what to do, and set
//! aside so that the next pull stores it again. Never served as good bytes.
//!
//! ```text
//! start-up   every content record ──stat──▶ blob missing, or of the wrong size?
//!              └─ wrong size: quarantined; either way one error per image that needs it:
//!                 "image X (namespace n) needs blob D (file …): missing; pull X again"
//! a read     Content.Read from 0 to the end, a pull's config, a layer applied (pull, Diff)
//!              └─ the bytes hash to something else: quarantined, DataLoss naming the file
//! ```
//!
//! A damaged blob is moved to `<content root>/quarantine/` by the content store (the evidence
//! is kept); its metadata records stay, so images still list and GC keeps what they hold, and
//! a pull of the image finds the blob absent and downloads it again (corrald's pull looks at
//! the disk, and the content service lets ctr write content whose file is gone). Only a size
//! check runs at start-up: re-hashing every blob would make a restart as slow as reading the
//! whole store; a same-size change is caught when the blob is next read whole.

use std::collections::{BTreeMap, BTreeSet};

use content::{ContentStore, Digest};
use protocol::Code;
use tonic::Status;

use crate::metadata::{Blob, CONTENT, IMAGES, Image, key};
use crate::services::Daemon;

/// A blob whose bytes hashed to `actual`: moves it aside and returns the error for the caller
/// (DataLoss, naming the file and what to do).
pub fn damaged(d: &Daemon, digest: &Digest, actual: Digest) -> Status {
    let path = d.content.blob_path(digest);
    let moved = match d.content.quarantine_blob(
        digest,
        Some(actual),
        format!("read back as {actual}, not {digest}"),
    ) {
        Ok(q) => format!("moved it to {}", q.moved_to.display()),
        Err(e) => format!("could not move it aside: {e}"),
    };
    let msg = format!(
        "content {digest} is damaged on disk ({}): its bytes hash to {actual}; {moved}. Pull \
         the images that use it again to restore it",
        path.display()
    );
    log::error!("{msg}");
    Code::DataLoss.grpc_status(msg)
}

/// The error for a blob `ns` has a record of but whose file is gone.
pub fn missing(d: &Daemon, ns: &str, digest: &Digest) -> Status {
    let msg = format!(
        "content {digest} (namespace {ns}) is missing from disk ({}): pull the images that \
         use it again to restore it",
        d.content.blob_path(digest).display()
    );
    log::error!("{msg}");
    Code::NotFound.grpc_status(msg)
}

/// What [`check_at_startup`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Blobs checked (distinct digests with a record).
    pub checked: usize,
    /// Digest → what is wrong with it.
    pub damaged: BTreeMap<String, String>,
    /// (namespace, image) that need a damaged blob.
    pub images: BTreeSet<(String, String)>,
}

/// Checks that every recorded blob is on disk with its recorded size; a blob of the wrong size
/// is quarantined. Logs one error per image that needs a damaged blob, naming the blob, its
/// file and what to do, and one per damaged blob no image needs. Blocking.
pub fn check_at_startup(d: &Daemon) -> Report {
    let mut report = Report::default();
    let records = match d.db.all::<Blob>(CONTENT) {
        Ok(r) => r,
        Err(e) => {
            log::error!("content check at start-up: {e}");
            return report;
        }
    };
    let mut sizes: BTreeMap<String, i64> = BTreeMap::new();
    for (k, b) in &records {
        if let Some((_, digest)) = k.split_once('\0') {
            sizes.insert(digest.to_string(), b.size);
        }
    }
    for (digest, size) in &sizes {
        report.checked += 1;
        let Ok(dg) = Digest::parse(digest) else {
            continue;
        };
        let path = d.content.blob_path(&dg);
        match d.content.info(&dg) {
            Ok(info) if info.size as i64 == *size => {}
            Ok(info) => {
                let reason = format!(
                    "its file {} holds {} bytes, not {size}",
                    path.display(),
                    info.size
                );
                let moved = match d.content.quarantine_blob(&dg, None, reason.clone()) {
                    Ok(q) => format!("moved to {}", q.moved_to.display()),
                    Err(e) => format!("could not be moved aside: {e}"),
                };
                report
                    .damaged
                    .insert(digest.clone(), format!("{reason} ({moved})"));
            }
            Err(e) if e.code() == Code::NotFound => {
                report.damaged.insert(
                    digest.clone(),
                    format!("its file {} is missing", path.display()),
                );
            }
            Err(e) => log::warn!("content check at start-up: {digest}: {e}"),
        }
    }
    if report.damaged.is_empty() {
        return report;
    }
    let by_key: BTreeMap<&str, &Blob> = records.iter().map(|(k, b)| (k.as_str(), b)).collect();
    let mut needed = BTreeSet::new();
    for (k, img) in d.db.all::<Image>(IMAGES).unwrap_or_default() {
        let Some((ns, name)) = k.split_once('\0') else {
            continue;
        };
        // The image's content: its target and what content labels reach from there.
        let mut todo = vec![img.target.digest.clone()];
        let mut seen = BTreeSet::new();
        while let Some(digest) = todo.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            if let Some(why) = report.damaged.get(&digest) {
                needed.insert(digest.clone());
                report.images.insert((ns.to_string(), name.to_string()));
                log::error!(
                    "image {name} (namespace {ns}) needs content {digest}, but {why}: pull \
                     {name} again to restore it (containers already made from it still run)"
                );
            }
            if let Some(b) = by_key.get(key(ns, &[&digest]).as_str()) {
                todo.extend(crate::gc::content_refs(&b.labels).map(str::to_string));
            }
        }
    }
    for (digest, why) in &report.damaged {
        if !needed.contains(digest) {
            log::error!("content {digest}: {why}; no image needs it");
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Descriptor, Labels, Time};
    use std::os::unix::fs::PermissionsExt;

    fn daemon(dir: &std::path::Path) -> Daemon {
        Daemon {
            db: crate::metadata::Db::open(&dir.join("meta.redb")).unwrap(),
            events: Default::default(),
            gc: Default::default(),
            root: dir.to_path_buf(),
            content: std::sync::Arc::new(content::LocalStore::open(dir.join("content")).unwrap()),
            snapshotters: Default::default(),
        }
    }

    fn put(d: &Daemon, ns: &str, data: &[u8], labels: Labels) -> String {
        let mut w = d
            .content
            .writer(content::WriterOpts::new(format!("t-{}", Digest::of(data))))
            .unwrap();
        w.write_all(data).unwrap();
        let digest = w.commit(None, None, Labels::new()).unwrap().to_string();
        let tx = d.db.write().unwrap();
        tx.record_blob(ns, &digest, data.len() as u64, labels, false)
            .unwrap();
        tx.commit().unwrap();
        digest
    }

    fn image(d: &Daemon, ns: &str, name: &str, target: &str) {
        let tx = d.db.write().unwrap();
        let now = Time::now();
        tx.put(
            IMAGES,
            &key(ns, &[name]),
            &Image {
                labels: Labels::new(),
                target: Descriptor {
                    media_type: "m".into(),
                    digest: target.into(),
                    size: 1,
                    annotations: Default::default(),
                },
                created_at: now,
                updated_at: now,
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn start_up_names_the_images_of_missing_and_cut_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let layer = put(&d, "ns", b"layer bytes", Labels::new());
        let other = put(&d, "ns", b"other layer", Labels::new());
        let manifest = put(
            &d,
            "ns",
            b"manifest",
            Labels::from([
                (
                    "containerd.io/gc.ref.content.l.0".to_string(),
                    layer.clone(),
                ),
                (
                    "containerd.io/gc.ref.content.l.1".to_string(),
                    other.clone(),
                ),
            ]),
        );
        image(&d, "ns", "img", &manifest);
        let clean = check_at_startup(&d);
        assert_eq!((clean.checked, clean.damaged.len()), (3, 0));

        let layer_path = d.content.blob_path(&Digest::parse(&layer).unwrap());
        std::fs::remove_file(&layer_path).unwrap();
        let other_path = d.content.blob_path(&Digest::parse(&other).unwrap());
        std::fs::set_permissions(&other_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&other_path, b"oth").unwrap();
        let r = check_at_startup(&d);
        assert_eq!(r.checked, 3);
        assert!(r.damaged[&layer].contains("missing"), "{r:?}");
        assert!(r.damaged[&other].contains("holds 3 bytes"), "{r:?}");
        assert!(!other_path.exists(), "the cut blob is set aside");
        assert!(
            dir.path()
                .join("content/quarantine")
                .read_dir()
                .unwrap()
                .count()
                == 1
        );
        assert_eq!(
            r.images,
            BTreeSet::from([("ns".to_string(), "img".to_string())])
        );
    }
}
