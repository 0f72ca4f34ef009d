//! corrald on damaged state: its databases cut short or overwritten while it was down, a blob
//! whose bytes changed on disk, a blob an image needs deleted.
//!
//! What must hold: a damaged database stops corrald at once with one message naming the file
//! and what to do — never a panic, never a start on an empty database in its place — and with
//! the file restored corrald starts with everything; the content store's label database is
//! set aside and replaced (the damage logged) since corrald keeps labels in its metadata; a
//! damaged blob is never served as good bytes: the read that reaches its end fails with
//! DataLoss naming the file, the blob is set aside, and a pull stores it again; a missing or
//! cut blob is reported at start-up with the images that need it, and a pull restores it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::image::{ImageBlobs, busybox_path, image_blobs};
use integration::registry::Registry;
use integration::{Corrald, cmd, require_root};
use protocol::grpc::corral::services::transfer::v1::PullRequest;
use protocol::grpc::tonic;
use sha2::{Digest, Sha256};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const T: Duration = Duration::from_secs(30);

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn test_image() -> ImageBlobs {
    let f = |p: &str, d: &[u8]| (p.to_string(), d.to_vec());
    image_blobs(
        &busybox_path(),
        &[vec![
            f("etc/damage-test", b"a file of the top layer\n"),
            f("tmp/filler", &[7u8; 200_000]),
        ]],
    )
    .expect("cannot build the test image")
}

/// A registry holding the test image, and its reference.
fn registry(img: &ImageBlobs) -> (Registry, String) {
    let reg = Registry::start();
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push("test/damage", "v1", &blobs, &img.manifest, MEDIA_MANIFEST)
        .expect("push to the registry");
    let reference = format!("{}/test/damage:v1", reg.host());
    (reg, reference)
}

fn pull(d: &Corrald, reference: &str, unpack: bool) -> Result<(), tonic::Status> {
    d.transfer_pull(PullRequest {
        reference: reference.to_string(),
        plain_http: true,
        unpack: Some(unpack),
        ..Default::default()
    })
    .map(drop)
}

fn blob_path(d: &Corrald, digest: &str) -> PathBuf {
    d.root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Overwrites a (read-only) blob file with `data`.
fn overwrite(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, data).unwrap();
}

/// `data` with one bit flipped in the middle: same size, another digest.
fn flipped(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let i = v.len() / 2;
    v[i] ^= 0x10;
    v
}

fn quarantined(d: &Corrald) -> usize {
    std::fs::read_dir(d.root().join("io.containerd.content.v1.content/quarantine"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Runs corrald on `d`'s paths (not through the harness, which expects it to come up) and
/// returns its exit status and stderr.
fn start_expecting_failure(d: &Corrald) -> (std::process::ExitStatus, String) {
    let mut c = d.command();
    let out = cmd::output_with_timeout(&mut c, T).expect("run corrald");
    assert!(!out.timed_out, "corrald neither started nor stopped");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that corrald refuses to start on the damaged `file`, saying so in one message that
/// names the file and what to do, without a panic.
fn assert_refuses(d: &Corrald, file: &Path, what_to_do: &str) {
    let (status, stderr) = start_expecting_failure(d);
    eprintln!("corrald said: {stderr}");
    assert!(!status.success(), "corrald started on a damaged {file:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "corrald panicked: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(file.to_str().unwrap())
            && last.contains("is damaged")
            && last.contains(what_to_do),
        "the error does not name {} and what to do: {last}",
        file.display()
    );
}

/// meta.redb and the overlayfs snapshotter's metadata.redb, cut short, emptied or overwritten
/// while corrald was down: it refuses to start, naming the file and what to do; with the
/// file restored it starts with the image and container it had.
#[test]
fn damaged_databases_stop_corrald_with_what_to_do() {
    if !require_root() {
        return;
    }
    let img = test_image();
    let (_reg, reference) = registry(&img);
    let mut d = Corrald::start();
    let ctr = d.ctr().clone();
    pull(&d, &reference, true).expect("pull");
    ctr.ok(&["containers", "create", &reference, "kept"]);
    d.kill_9();

    let meta = d.root().join("meta.redb");
    let snap = d
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/metadata.redb");
    for (file, what_to_do) in [(&meta, "mv "), (&snap, "mv ")] {
        let good = std::fs::read(file).unwrap();
        let mut garbage = good.clone();
        for (i, b) in garbage[4096..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151);
        }
        for (case, data) in [
            ("cut in half", &good[..good.len() / 2]),
            ("emptied", &good[..0]),
            ("cut to its header", &good[..300]),
            ("overwritten", &garbage[..]),
        ] {
            eprintln!("{}: {case}", file.display());
            std::fs::write(file, data).unwrap();
            assert_refuses(&d, file, what_to_do);
            assert_eq!(
                std::fs::read(file).unwrap(),
                data,
                "corrald changed the damaged {case} file"
            );
        }
        std::fs::write(file, &good).unwrap();
    }

    d.restart();
    let images = ctr.ok(&["images", "ls", "-q"]);
    assert!(images.lines().any(|l| l == reference), "{images}");
    let containers = ctr.ok(&["containers", "ls", "-q"]);
    assert!(containers.lines().any(|l| l == "kept"), "{containers}");
    ctr.assert_snapshot_chain(&img.chain_ids());
    ctr.ok(&["containers", "rm", "kept"]);
}

/// The content store's label database damaged: corrald sets it aside, says so, and starts
/// with its images, whose labels live in its own metadata.
#[test]
fn damaged_label_database_is_set_aside_and_reported() {
    if !require_root() {
        return;
    }
    let img = test_image();
    let (_reg, reference) = registry(&img);
    let mut d = Corrald::start();
    let ctr = d.ctr().clone();
    pull(&d, &reference, true).expect("pull");
    ctr.ok(&["images", "label", &reference, "kept=yes"]);
    d.kill_9();
    let labels = d
        .root()
        .join("io.containerd.content.v1.content/labels.redb");
    let good = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, &good[..good.len() / 3]).unwrap();

    d.restart();
    let log = d.log_tail(200);
    assert!(
        log.contains(labels.to_str().unwrap()) && log.contains("is damaged"),
        "the damage is not reported:\n{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(labels.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("labels.redb.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    let row = ctr.images_check_row(&reference);
    assert!(row.contains("complete"), "{row}");
    let ls = ctr.ok(&["images", "ls"]);
    assert!(ls.contains("kept=yes"), "{ls}");
    // Content reads back right.
    let got = ctr.run(&["content", "get", &sha256(&img.config)]);
    assert!(got.success(), "{}", got.describe());
    assert_eq!(got.stdout, img.config);
}

/// Blobs whose bytes changed on disk (same size) are caught by the read that reaches their
/// end: `ctr content get`, a pull's read of the config, an unpack of the layer. Each fails
/// with DataLoss naming the file, sets the blob aside, and a pull stores it again.
#[test]
fn damaged_blobs_are_caught_when_read_and_restored_by_a_pull() {
    if !require_root() {
        return;
    }
    let img = test_image();
    let (_reg, reference) = registry(&img);
    let d = Corrald::start();
    let ctr = d.ctr().clone();
    // Downloaded, not unpacked: the unpack below reads the layer from the store.
    pull(&d, &reference, false).expect("pull without unpack");
    let layer = sha256(&img.layers[1]);
    let config = sha256(&img.config);

    // ctr content get of a damaged layer: an error, not the wrong bytes as a complete blob.
    overwrite(&blob_path(&d, &layer), &flipped(&img.layers[1]));
    let out = ctr.run(&["content", "get", &layer]);
    assert!(!out.success(), "damaged bytes served: {}", out.describe());
    assert!(
        out.stderr.contains("is damaged on disk")
            && out.stderr.contains(blob_path(&d, &layer).to_str().unwrap()),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.len() < img.layers[1].len(),
        "the whole blob was sent"
    );
    assert_eq!(quarantined(&d), 1);
    assert!(
        !blob_path(&d, &layer).exists(),
        "the damaged blob is set aside"
    );
    // A pull stores it again.
    pull(&d, &reference, false).expect("pull after the damage");
    let got = ctr.run(&["content", "get", &layer]);
    assert!(got.success(), "{}", got.describe());
    assert_eq!(sha256(&got.stdout), layer);

    // A pull that reads a damaged config.
    overwrite(&blob_path(&d, &config), &flipped(&img.config));
    let e = pull(&d, &reference, true).expect_err("a damaged config was used");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(
        e.message().contains(&config) && e.message().contains("Pull the images"),
        "{e:?}"
    );

    // An unpack of a damaged layer (this pull downloads the config set aside above first).
    overwrite(&blob_path(&d, &layer), &flipped(&img.layers[1]));
    let e = pull(&d, &reference, true).expect_err("a damaged layer was unpacked");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(
        e.message().contains(&layer)
            && e.message()
                .contains(blob_path(&d, &layer).to_str().unwrap()),
        "{e:?}"
    );
    let snapshots = ctr.ok(&["snapshots", "ls"]);
    assert!(!snapshots.contains("extract-"), "{snapshots}");
    assert_eq!(quarantined(&d), 3);

    pull(&d, &reference, true).expect("pull after the damage");
    let row = ctr.images_check_row(&reference);
    assert!(row.contains("complete") && row.contains("true"), "{row}");
    ctr.assert_snapshot_chain(&img.chain_ids());
}

/// While corrald was down a blob an image needs was deleted and another cut short: at
/// start-up both are reported with the image that needs them (the cut one set aside), reads
/// say what is wrong, and a pull restores them.
#[test]
fn missing_and_cut_blobs_are_reported_at_start_up_and_restored_by_a_pull() {
    if !require_root() {
        return;
    }
    let img = test_image();
    let (_reg, reference) = registry(&img);
    let mut d = Corrald::start();
    let ctr = d.ctr().clone();
    pull(&d, &reference, true).expect("pull");
    let layer = sha256(&img.layers[1]);
    let config = sha256(&img.config);
    d.kill_9();
    std::fs::remove_file(blob_path(&d, &layer)).unwrap();
    overwrite(&blob_path(&d, &config), &img.config[..10]);

    d.restart();
    let log = d.log_tail(300);
    for (digest, why) in [(&layer, "is missing"), (&config, "holds 10 bytes")] {
        let line = log
            .lines()
            .find(|l| l.contains("needs content") && l.contains(digest.as_str()))
            .unwrap_or_else(|| panic!("no start-up report of {digest}:\n{log}"));
        assert!(
            line.contains(&format!("image {reference}"))
                && line.contains(why)
                && line.contains("pull"),
            "{line}"
        );
    }
    assert_eq!(quarantined(&d), 1, "the cut blob is set aside");
    let out = ctr.run(&["content", "get", &layer]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("missing from disk")
            && out.stderr.contains(blob_path(&d, &layer).to_str().unwrap()),
        "{}",
        out.describe()
    );
    // What was unpacked before still runs from its snapshots; a pull restores the blobs.
    pull(&d, &reference, true).expect("pull restores the blobs");
    for (digest, data) in [(&layer, &img.layers[1]), (&config, &img.config)] {
        let got = ctr.run(&["content", "get", digest]);
        assert!(got.success(), "{}", got.describe());
        assert_eq!(&got.stdout, data);
    }
}
