//! corrald on a small disk: its root on a size-limited tmpfs ([`SmallDisk`]), filled by the
//! test until a pull, an import or a metadata write runs out of space.
//!
//! What must hold when the disk fills: the call fails with ResourceExhausted and a message
//! naming the file on the full disk (and "No space left on device"); nothing half-made is
//! left (no image record, no active ingest, no `extract-*` snapshot, and the blobs of the
//! failed image are collected); once the test frees space the same call succeeds, on the same
//! daemon; and the metadata database survives ENOSPC: corrald, killed and restarted, still has
//! every image and container made before.

use std::collections::BTreeSet;
use std::time::Duration;

use integration::cli::Corral;
use integration::disk::SmallDisk;
use integration::image::{ImageBlobs, busybox_path, image_blobs, oci_layout_tar};
use integration::registry::Registry;
use integration::{Corrald, Ctr, require_root, wait_until};
use protocol::grpc::corral::services::transfer::v1::{PullRequest, PullResult};
use protocol::grpc::tonic;
use sha2::{Digest, Sha256};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: u64 = 1 << 20;
const DISK: u64 = 96 * MIB;
const T: Duration = Duration::from_secs(30);

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `n` bytes that gzip cannot shrink (xorshift), the same for every run.
fn incompressible(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Busybox plus a layer with one file `tmp/<name>`.
fn image_with(name: &str, data: Vec<u8>) -> ImageBlobs {
    image_blobs(&busybox_path(), &[vec![(format!("tmp/{name}"), data)]])
        .expect("cannot build a test image")
}

/// The three images of these tests: `small` (busybox alone, made before the disk fills),
/// `big` (two layers of 3 MiB that do not compress, downloaded side by side: the downloads
/// run out of space) and `zeros` (16 MiB of zeros, a few KiB compressed: its download fits,
/// its unpack does not).
struct Images {
    small: ImageBlobs,
    big: ImageBlobs,
    zeros: ImageBlobs,
}

fn images() -> Images {
    Images {
        small: image_blobs(&busybox_path(), &[]).expect("cannot build the busybox image"),
        big: {
            let half = incompressible(6 * MIB as usize);
            let (a, b) = half.split_at(3 * MIB as usize);
            image_blobs(
                &busybox_path(),
                &[
                    vec![("tmp/big1".to_string(), a.to_vec())],
                    vec![("tmp/big2".to_string(), b.to_vec())],
                ],
            )
            .expect("cannot build the big image")
        },
        zeros: image_with("zeros", vec![0; 16 * MIB as usize]),
    }
}

fn push(reg: &Registry, repo: &str, img: &ImageBlobs) -> String {
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push(repo, "v1", &blobs, &img.manifest, MEDIA_MANIFEST)
        .expect("push to the registry");
    format!("{}/{repo}:v1", reg.host())
}

/// corrald's own pull (Transfer/Pull, what `corral pull` uses), to its result or error.
fn pull(d: &Corrald, reference: &str) -> Result<PullResult, tonic::Status> {
    d.transfer_pull(PullRequest {
        reference: reference.to_string(),
        plain_http: true,
        ..Default::default()
    })
}

/// Asserts that `e` is ResourceExhausted and names a file on `disk`.
fn assert_out_of_space(e: &tonic::Status, disk: &SmallDisk) {
    eprintln!("out of space: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_names_disk(e.message(), disk);
}

fn assert_names_disk(msg: &str, disk: &SmallDisk) {
    assert!(
        msg.contains(disk.path().to_str().unwrap()) && msg.contains("No space left on device"),
        "the error does not name the full disk {}: {msg}",
        disk.path().display()
    );
}

/// What a failed pull or import must not leave: an image record `name`, an active ingest, an
/// unpack's `extract-*` snapshot; and (once garbage collection has run) none of `blobs`.
fn assert_nothing_half_made(ctr: &Ctr, name: &str, blobs: &[String]) {
    let images = ctr.ok(&["images", "ls", "-q"]);
    assert!(
        !images.lines().any(|l| l == name),
        "image {name} exists after its pull failed:\n{images}"
    );
    let active = ctr.ok(&["content", "active"]);
    assert!(
        active.lines().skip(1).all(|l| l.trim().is_empty()),
        "ingests left active:\n{active}"
    );
    let snapshots = ctr.ok(&["snapshots", "ls"]);
    assert!(
        !snapshots.contains("extract-"),
        "an unpack's snapshot is left:\n{snapshots}"
    );
    wait_until("the failed image's blobs to be collected", T, || {
        let content = ctr.ok(&["content", "ls", "-q"]);
        blobs
            .iter()
            .all(|b| !content.lines().any(|l| l == b))
            .then_some(())
    });
}

/// The blobs only `img` has (not the shared busybox layer).
fn own_blobs(img: &ImageBlobs) -> Vec<String> {
    let mut v: Vec<String> = img.layers[1..].iter().map(|l| sha256(l)).collect();
    v.push(sha256(&img.config));
    v.push(sha256(&img.manifest));
    v
}

fn assert_complete(ctr: &Ctr, name: &str, img: &ImageBlobs) {
    let row = ctr.images_check_row(name);
    assert!(
        row.contains("complete") && row.contains("true"),
        "{name} is not complete and unpacked: {row}"
    );
    ctr.assert_snapshot_chain(&img.chain_ids());
}

/// Images and containers as ctr lists them, to compare before and after a restart.
fn inventory(ctr: &Ctr) -> (BTreeSet<String>, BTreeSet<String>) {
    let set = |out: String| -> BTreeSet<String> {
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    (
        set(ctr.ok(&["images", "ls", "-q"])),
        set(ctr.ok(&["containers", "ls", "-q"])),
    )
}

/// A pull whose download, then one whose unpack, runs out of space; each succeeds once space
/// is freed; metadata writes on a full disk fail and work again after; and a restart finds
/// everything made before.
#[test]
fn pull_on_a_full_disk_fails_cleanly_and_succeeds_after_space_is_freed() {
    if !require_root() {
        return;
    }
    let disk = SmallDisk::mount(DISK);
    let mut d = Corrald::start_on(&disk.path().join("root"));
    let ctr = d.ctr().clone();
    let reg = Registry::start();
    let imgs = images();
    let small = push(&reg, "test/small", &imgs.small);
    let big = push(&reg, "test/big", &imgs.big);
    let zeros = push(&reg, "test/zeros", &imgs.zeros);

    // Made before the disk fills: they must survive everything below.
    pull(&d, &small).expect("pull of the small image");
    ctr.ok(&["containers", "create", &small, "before"]);

    // The download of a 6 MiB layer with 3 MiB free.
    disk.fill_leaving(3 * MIB);
    let e = pull(&d, &big).expect_err("a 6 MiB download fit in 3 MiB");
    assert_out_of_space(&e, &disk);
    assert_nothing_half_made(&ctr, &big, &own_blobs(&imgs.big));

    // ctr's own pull writes through the content service: the same.
    let out = ctr.run(&["images", "pull", "--plain-http", &big]);
    assert!(!out.success(), "ctr pull fit: {}", out.describe());
    assert_names_disk(&out.stderr, &disk);
    assert_nothing_half_made(&ctr, &big, &own_blobs(&imgs.big));

    // A 16 MiB unpack with 8 MiB free (its download, a few KiB, fits).
    disk.fill_leaving(8 * MIB);
    let e = pull(&d, &zeros).expect_err("a 16 MiB unpack fit in 8 MiB");
    assert_out_of_space(&e, &disk);
    assert_nothing_half_made(&ctr, &zeros, &own_blobs(&imgs.zeros));

    // Space back: the same daemon pulls both.
    disk.release();
    pull(&d, &big).expect("pull of the big image after freeing space");
    pull(&d, &zeros).expect("pull of the zeros image after freeing space");
    assert_complete(&ctr, &big, &imgs.big);
    assert_complete(&ctr, &zeros, &imgs.zeros);

    // Metadata writes on a full disk: label updates until one fails (redb reuses free pages
    // of its file for a while).
    disk.fill_leaving(0);
    let value = "x".repeat(3000);
    let failed = (0..200).find_map(|i| {
        let out = ctr.run(&["images", "label", &small, &format!("fill.{i}={value}")]);
        (!out.success()).then_some(out)
    });
    let failed = failed.expect("200 label updates of 3 kB each fit on a full disk");
    assert_names_disk(&failed.stderr, &disk);
    assert!(failed.stderr.contains("meta.redb"), "{}", failed.describe());
    disk.release();
    // The daemon works again without a restart: its database handle is reopened.
    ctr.ok(&["images", "label", &small, "after=space"]);
    ctr.ok(&["containers", "create", &small, "after"]);
    let before = inventory(&ctr);

    // ENOSPC never corrupted the database: a daemon killed and started again has it all.
    d.kill_9();
    d.restart();
    assert_eq!(inventory(&ctr), before);
    assert_complete(&ctr, &small, &imgs.small);
    assert_complete(&ctr, &big, &imgs.big);
    assert_complete(&ctr, &zeros, &imgs.zeros);
    let labels = ctr.ok(&["images", "ls"]);
    assert!(labels.contains("after=space"), "{labels}");
    for id in ["before", "after"] {
        ctr.ok(&["containers", "rm", id]);
    }
}

/// `corral images import` of an archive whose content, then one whose unpack, does not fit:
/// clear errors, nothing half-made, and both imports succeed once space is freed. `ctr images
/// import` writes its content the same way and leaves no ingest behind either.
#[test]
fn import_on_a_full_disk_fails_cleanly_and_succeeds_after_space_is_freed() {
    if !require_root() {
        return;
    }
    let disk = SmallDisk::mount(DISK);
    let d = Corrald::start_on(&disk.path().join("root"));
    let ctr = d.ctr().clone();
    let logs = tempfile::tempdir().unwrap();
    let corral = Corral::new(&d.address(), d.namespace(), logs.path());
    let imgs = images();
    let archives = tempfile::tempdir().unwrap();
    let archive = |img: &ImageBlobs, name: &str| {
        let p = archives
            .path()
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&p, oci_layout_tar(img, name).unwrap()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (small, big, zeros) = (
        "docker.io/test/small:v1",
        "docker.io/test/big:v1",
        "docker.io/test/zeros:v1",
    );
    let small_tar = archive(&imgs.small, small);
    let big_tar = archive(&imgs.big, big);
    let zeros_tar = archive(&imgs.zeros, zeros);
    corral.ok(&["images", "import", &small_tar]);

    disk.fill_leaving(3 * MIB);
    let out = corral.run(&["images", "import", &big_tar]);
    assert!(!out.success(), "a 6 MiB import fit in 3 MiB");
    assert_names_disk(&out.stderr(), &disk);
    assert_nothing_half_made(&ctr, big, &own_blobs(&imgs.big));
    let out = ctr.run(&["images", "import", &big_tar]);
    assert!(!out.success(), "ctr import fit: {}", out.describe());
    assert_names_disk(&out.stderr, &disk);
    assert_nothing_half_made(&ctr, big, &own_blobs(&imgs.big));

    disk.fill_leaving(8 * MIB);
    let out = corral.run(&["images", "import", &zeros_tar]);
    assert!(!out.success(), "a 16 MiB unpack fit in 8 MiB");
    assert_names_disk(&out.stderr(), &disk);
    assert_nothing_half_made(&ctr, zeros, &own_blobs(&imgs.zeros));

    disk.release();
    corral.ok(&["images", "import", &big_tar]);
    corral.ok(&["images", "import", &zeros_tar]);
    assert_complete(&ctr, small, &imgs.small);
    assert_complete(&ctr, big, &imgs.big);
    assert_complete(&ctr, zeros, &imgs.zeros);
}
