//! corrald's Images service (with Content, Leases, Snapshots and Diff underneath) driven by the
//! real ctr 1.6: import of the busybox test image with unpack, ls/check/label/tag/rm, and
//! namespace isolation of images.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration::{Corrald, Ctr, IMAGE_REF, require_root};

/// Writes the test image archive to a file in `dir`.
fn image_tar(dir: &Path) -> PathBuf {
    let p = dir.join("busybox.tar");
    std::fs::write(&p, integration::image::test_image_tar()).unwrap();
    p
}

/// Names listed by `ctr images ls -q`.
fn names(ctr: &Ctr) -> Vec<String> {
    ctr.ok(&["images", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `(key, parent, kind)` rows of `ctr snapshots ls`.
fn snapshots(ctr: &Ctr) -> Vec<(String, String, String)> {
    ctr.ok(&["snapshots", "ls"])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [k, kind] => (k.to_string(), String::new(), kind.to_string()),
                [k, p, kind] => (k.to_string(), p.to_string(), kind.to_string()),
                _ => panic!("unexpected `ctr snapshots ls` row {l:?}"),
            }
        })
        .collect()
}

/// Unmounts on drop, also when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn import_unpack_check_label_tag_and_rm() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    let tar = image_tar(tmp.path());
    let tar = tar.to_str().unwrap();

    let out = ctr.ok(&["images", "import", tar]);
    assert!(out.contains(IMAGE_REF), "{out}");
    assert_eq!(names(ctr), [IMAGE_REF]);
    let ls = ctr.ok(&["images", "ls"]);
    assert!(
        ls.contains("application/vnd.oci.image.manifest.v1+json") && ls.contains("linux/"),
        "{ls}"
    );

    // All blobs present, and the image unpacked into the default snapshotter.
    let check = ctr.ok(&["images", "check"]);
    let row = check
        .lines()
        .find(|l| l.starts_with(IMAGE_REF))
        .unwrap_or_else(|| panic!("no row for {IMAGE_REF}: {check}"));
    assert!(
        row.contains("complete") && row.contains("true"),
        "not complete and unpacked: {check}"
    );

    // The unpacked chain: one committed snapshot named by the layer's chain id, with the
    // layer's files in it (a view of it mounted for real).
    let snaps = snapshots(ctr);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let (chain, parent, kind) = &snaps[0];
    assert!(
        chain.starts_with("sha256:") && parent.is_empty(),
        "{snaps:?}"
    );
    assert_eq!(kind, "Committed");
    let target = d.root().join("view");
    std::fs::create_dir_all(&target).unwrap();
    let t = target.display().to_string();
    let line = ctr.ok(&["snapshots", "view", "--target", &t, "look", chain]);
    {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let st = Command::new("mount").args(&args).status().unwrap();
        assert!(st.success(), "`{line}` failed");
        let _m = Mounted(target.clone());
        let busybox = std::fs::metadata(target.join("bin/busybox")).unwrap();
        assert!(
            busybox.len() > 100_000,
            "busybox is {} bytes",
            busybox.len()
        );
        let passwd = std::fs::read_to_string(target.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:"), "{passwd}");
    }
    ctr.ok(&["snapshots", "rm", "look"]);

    // A second import of the same archive updates the image in place.
    ctr.ok(&["images", "import", tar]);
    assert_eq!(names(ctr), [IMAGE_REF]);
    assert_eq!(snapshots(ctr).len(), 1);

    // Labels and tags.
    ctr.ok(&["images", "label", IMAGE_REF, "team=a"]);
    assert!(ctr.ok(&["images", "ls"]).contains("team=a"));
    let tagged = "docker.io/library/busybox:other";
    ctr.ok(&["images", "tag", IMAGE_REF, tagged]);
    let again = ctr.run(&["images", "tag", IMAGE_REF, tagged]);
    assert!(
        !again.success() && again.stderr.contains("already exists"),
        "{}",
        again.describe()
    );
    let filtered = ctr.ok(&["images", "ls", "-q", &format!("name=={tagged}")]);
    assert_eq!(filtered.trim(), tagged);
    let missing = ctr.run(&["images", "label", "no/such:image", "a=b"]);
    assert!(
        !missing.success() && missing.stderr.contains("not found"),
        "{}",
        missing.describe()
    );

    // Another namespace sees none of it.
    let other = d.ctr_in(&format!("{}-b", d.namespace()));
    assert!(names(&other).is_empty());
    assert!(snapshots(&other).is_empty());

    // Removing one of two names keeps the blobs; removing the last one with --sync collects
    // them before the call returns.
    let blobs = ctr.ok(&["content", "ls", "-q"]).lines().count();
    assert!(blobs >= 3, "manifest, config and layer expected");
    ctr.ok(&["images", "rm", tagged]);
    assert_eq!(
        ctr.ok(&["content", "ls", "-q"]).lines().count(),
        blobs,
        "content of an image still named elsewhere was collected"
    );
    ctr.ok(&["images", "rm", "--sync", IMAGE_REF]);
    assert!(names(ctr).is_empty());
    let left = ctr.ok(&["content", "ls"]);
    assert_eq!(
        left.lines().count(),
        1,
        "blobs of the removed image were not collected:\n{left}\nleases:\n{}",
        ctr.ok(&["leases", "ls"])
    );
    // ctr treats NotFound on rm as a warning.
    let gone = ctr.run(&["images", "rm", IMAGE_REF]);
    assert!(
        gone.stderr.contains("image not found"),
        "{}",
        gone.describe()
    );
}
