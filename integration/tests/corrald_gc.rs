//! corrald's garbage collection driven by the real ctr 1.6: `images rm --sync` collects the
//! image's blobs and its unpacked snapshots, so the disk is back where it was; snapshots
//! labelled `containerd.io/gc.root` survive, with their ancestors.

use std::path::Path;

use integration::{Corrald, Ctr, IMAGE_REF, require_root};

/// Bytes in the files under corrald's root, without the redb metadata files (they only grow).
fn disk_use(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", dir.display()),
        };
        for e in entries {
            let e = e.unwrap();
            let md = match std::fs::symlink_metadata(e.path()) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => panic!("stat {}: {err}", e.path().display()),
            };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() && e.path().extension().is_none_or(|x| x != "redb") {
                total += md.len();
            }
        }
    }
    total
}

/// `(key, parent)` of every row of `ctr snapshots ls`.
fn snapshots(ctr: &Ctr) -> Vec<(String, String)> {
    ctr.ok(&["snapshots", "ls"])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [k, _kind] => (k.to_string(), String::new()),
                [k, p, _kind] => (k.to_string(), p.to_string()),
                _ => panic!("unexpected `ctr snapshots ls` row {l:?}"),
            }
        })
        .collect()
}

fn blobs(ctr: &Ctr) -> Vec<String> {
    ctr.ok(&["content", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn import(ctr: &Ctr, tar: &Path) {
    let out = ctr.ok(&["images", "import", tar.to_str().unwrap()]);
    assert!(out.contains(IMAGE_REF), "{out}");
}

/// A synchronous collection: create a lease and remove it with `--sync`.
fn collect_garbage(ctr: &Ctr) {
    ctr.ok(&["leases", "create", "--id", "gc-now"]);
    ctr.ok(&["leases", "rm", "--sync", "gc-now"]);
}

/// Slack for small bookkeeping files that may appear (a few KiB).
const SLACK: u64 = 8 * 1024;

fn assert_back_to(root: &Path, baseline: u64, what: &str) {
    let now = disk_use(root);
    eprintln!("{what}: {now} bytes on disk, {baseline} before the import");
    assert!(
        now <= baseline + SLACK,
        "{what}: disk use under {} is {now} bytes, {baseline} before the import",
        root.display()
    );
}

#[test]
fn images_rm_sync_returns_the_disk_and_keeps_gc_roots() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("busybox.tar");
    std::fs::write(&tar, integration::image::test_image_tar()).unwrap();

    // A snapshot of the client's own, kept by its gc.root label.
    ctr.ok(&["snapshots", "prepare", "mine"]);
    ctr.ok(&["snapshots", "label", "mine", "containerd.io/gc.root=x"]);
    let baseline = disk_use(&d.root());

    import(ctr, &tar);
    let unpacked = snapshots(ctr);
    assert!(unpacked.len() >= 2, "import did not unpack: {unpacked:?}");
    assert!(disk_use(&d.root()) > baseline + 100_000, "nothing written");

    ctr.ok(&["images", "rm", "--sync", IMAGE_REF]);
    assert_eq!(
        snapshots(ctr),
        [("mine".to_string(), String::new())],
        "unpacked snapshots left after images rm --sync"
    );
    assert!(blobs(ctr).is_empty(), "blobs left: {:?}", blobs(ctr));
    assert_back_to(&d.root(), baseline, "after images rm --sync");

    // Again, now with a container-like rootfs on the image's top layer, labelled gc.root:
    // it and every layer below it survive the removal of the image; without the label they go.
    import(ctr, &tar);
    let rows = snapshots(ctr);
    let layers: Vec<&(String, String)> = rows.iter().filter(|(k, _)| k != "mine").collect();
    let top = layers
        .iter()
        .find(|(k, _)| !rows.iter().any(|(_, p)| p == k))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| panic!("no top layer in {rows:?}"));
    ctr.ok(&["snapshots", "prepare", "rootfs", &top]);
    ctr.ok(&["snapshots", "label", "rootfs", "containerd.io/gc.root=x"]);
    ctr.ok(&["images", "rm", "--sync", IMAGE_REF]);
    let kept = snapshots(ctr);
    assert_eq!(
        kept.len(),
        rows.len() + 1,
        "rootfs or an ancestor collected: {kept:?} (before: {rows:?})"
    );
    assert!(blobs(ctr).is_empty(), "blobs left: {:?}", blobs(ctr));

    ctr.ok(&["snapshots", "label", "rootfs", "containerd.io/gc.root="]);
    collect_garbage(ctr);
    assert_eq!(
        snapshots(ctr),
        [("mine".to_string(), String::new())],
        "unlabelled rootfs or its layers kept"
    );
    assert_back_to(&d.root(), baseline, "after the rootfs lost its label");
}
