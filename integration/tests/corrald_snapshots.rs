//! corrald's Snapshots service driven by the real ctr 1.6: layer chains on overlayfs (mounted for
//! real) and native, views, usage, labels, removal rules, bad input and namespace isolation.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration::{Corrald, Ctr, require_root};

/// `(key, parent, kind)` rows of `ctr snapshots ls`.
fn ls(ctr: &Ctr, snapshotter: &str) -> Vec<(String, String, String)> {
    let out = ctr.ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    out.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [k, kind] => (k.to_string(), String::new(), kind.to_string()),
                [k, p, kind] => (k.to_string(), p.to_string(), kind.to_string()),
                _ => panic!("unexpected `ctr snapshots ls` row {l:?} in\n{out}"),
            }
        })
        .collect()
}

fn row(k: &str, p: &str, kind: &str) -> (String, String, String) {
    (k.into(), p.into(), kind.into())
}

/// The source directory of the single bind mount `ctr snapshots mounts` printed.
fn bind_source(mounts: &str) -> PathBuf {
    // mount -t bind <source> <target> -o rw,rbind
    let f: Vec<&str> = mounts.split_whitespace().collect();
    assert!(
        f.len() >= 4 && f[0] == "mount" && f[2] == "bind",
        "not one bind mount: {mounts}"
    );
    PathBuf::from(f[3])
}

/// Unmounts on drop, also when the test fails.
struct Mounted(PathBuf);

impl Mounted {
    /// Runs the `mount …` line ctr printed for `--target`.
    fn run(line: &str, target: &Path) -> Mounted {
        assert!(
            line.starts_with("mount ") && line.contains(&target.display().to_string()),
            "unexpected mount line {line:?}"
        );
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let st = Command::new("mount").args(&args).status().unwrap();
        assert!(st.success(), "`{line}` failed: {st}");
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn overlayfs_chain_view_usage_labels_and_removal() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();

    // Layer 1: an empty active snapshot is one writable bind mount.
    ctr.ok(&["snapshots", "prepare", "layer1-active"]);
    let src = bind_source(&ctr.ok(&["snapshots", "mounts", "/unused", "layer1-active"]));
    std::fs::write(src.join("hello"), b"from layer 1").unwrap();
    ctr.ok(&["snapshots", "commit", "layer1", "layer1-active"]);
    assert_eq!(ls(ctr, "overlayfs"), [row("layer1", "", "Committed")]);

    // A rootfs on top of it, mounted for real: layer 1's file shows, writes go to the upper.
    let target = d.root().join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    let t = target.display().to_string();
    let line = ctr.ok(&["snapshots", "prepare", "--target", &t, "rootfs", "layer1"]);
    assert!(
        line.contains("-t overlay") && line.contains("lowerdir="),
        "{line}"
    );
    {
        let _m = Mounted::run(line.trim(), &target);
        assert_eq!(
            std::fs::read(target.join("hello")).unwrap(),
            b"from layer 1"
        );
        std::fs::write(target.join("new"), vec![7u8; 64 << 10]).unwrap();
    }
    let usage = ctr.ok(&["snapshots", "usage", "rootfs"]);
    let inodes: u64 = usage
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no usage row: {usage}"));
    assert!(inodes >= 2, "the written file is not counted: {usage}");
    // The lower layer is untouched by the write.
    assert!(!src.join("new").exists());

    ctr.ok(&["snapshots", "view", "v", "layer1"]);
    let mut rows = ls(ctr, "overlayfs");
    rows.sort();
    assert_eq!(
        rows,
        [
            row("layer1", "", "Committed"),
            row("rootfs", "layer1", "Active"),
            row("v", "layer1", "View"),
        ]
    );

    // Info carries ctr's gc.root label; label changes stick.
    let info = ctr.ok(&["snapshots", "info", "layer1"]);
    assert!(
        info.contains("\"Kind\": \"Committed\"") && info.contains("containerd.io/gc.root"),
        "{info}"
    );
    ctr.ok(&["snapshots", "label", "rootfs", "team=a"]);
    assert!(
        ctr.ok(&["snapshots", "info", "rootfs"])
            .contains("\"team\": \"a\"")
    );

    // A parent cannot go before its children; a view cannot be committed.
    let rm = ctr.run(&["snapshots", "rm", "layer1"]);
    assert!(
        !rm.success() && rm.stderr.contains("failed precondition"),
        "{}",
        rm.describe()
    );
    let c = ctr.run(&["snapshots", "commit", "x", "v"]);
    assert!(
        !c.success() && c.stderr.contains("failed precondition"),
        "{}",
        c.describe()
    );

    // Everything survives a restart of the daemon.
    let mut d = d;
    d.restart();
    let ctr = d.ctr();
    assert_eq!(ls(ctr, "overlayfs").len(), 3);
    ctr.ok(&["snapshots", "rm", "rootfs", "v"]);
    ctr.ok(&["snapshots", "rm", "layer1"]);
    assert!(ls(ctr, "overlayfs").is_empty());
    assert!(
        !src.exists(),
        "the removed layer's directory is still there"
    );
}

#[test]
fn native_snapshotter_copies_the_parent() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let sn = |args: &[&str]| {
        let mut a = vec!["snapshots", "--snapshotter", "native"];
        a.extend_from_slice(args);
        ctr.ok(&a)
    };
    sn(&["prepare", "base-active"]);
    let base = bind_source(&sn(&["mounts", "/unused", "base-active"]));
    std::fs::write(base.join("f"), b"base").unwrap();
    sn(&["commit", "base", "base-active"]);
    sn(&["prepare", "child", "base"]);
    let child = bind_source(&sn(&["mounts", "/unused", "child"]));
    assert_eq!(std::fs::read(child.join("f")).unwrap(), b"base");
    let mut rows = ls(ctr, "native");
    rows.sort();
    assert_eq!(
        rows,
        [row("base", "", "Committed"), row("child", "base", "Active")]
    );
    // Keys are per snapshotter: overlayfs has none of them.
    assert!(ls(ctr, "overlayfs").is_empty());
    let st = ctr.run(&["snapshots", "info", "child"]);
    assert!(
        !st.success() && st.stderr.contains("not found"),
        "{}",
        st.describe()
    );
    sn(&["rm", "child"]);
    sn(&["rm", "base"]);
    assert!(ls(ctr, "native").is_empty());
}

#[test]
fn bad_input_is_refused_and_namespaces_are_isolated() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let fails = |ctr: &Ctr, args: &[&str], want: &[&str]| {
        let out = ctr.run(args);
        assert!(!out.success(), "{}", out.describe());
        for w in want {
            assert!(out.stderr.contains(w), "missing {w:?}: {}", out.describe());
        }
    };
    fails(
        ctr,
        &["snapshots", "prepare", "k", "no-such-parent"],
        &["parent snapshot no-such-parent does not exist", "not found"],
    );
    fails(
        ctr,
        &["snapshots", "--snapshotter", "zfs9", "ls"],
        &["snapshotter not loaded: zfs9", "invalid argument"],
    );
    fails(
        ctr,
        &["snapshots", "info", "missing"],
        &["missing", "not found"],
    );
    fails(
        ctr,
        &["snapshots", "rm", "missing"],
        &["missing", "not found"],
    );
    // Nothing was created by the failures.
    assert!(ls(ctr, "overlayfs").is_empty());

    ctr.ok(&["snapshots", "prepare", "shared-key"]);
    fails(
        ctr,
        &["snapshots", "prepare", "shared-key"],
        &["shared-key", "already exists"],
    );
    ctr.ok(&["snapshots", "commit", "base", "shared-key"]);

    // Another namespace: none of the first one's keys, the same key is free, parents do not
    // cross.
    let other = d.ctr_in(&format!("{}-b", d.namespace()));
    assert!(ls(&other, "overlayfs").is_empty());
    fails(&other, &["snapshots", "info", "base"], &["not found"]);
    fails(&other, &["snapshots", "rm", "base"], &["not found"]);
    fails(
        &other,
        &["snapshots", "prepare", "x", "base"],
        &["parent snapshot base does not exist"],
    );
    other.ok(&["snapshots", "prepare", "shared-key"]);
    other.ok(&["snapshots", "rm", "shared-key"]);
    // The first namespace's snapshot is untouched by the other's removal.
    assert_eq!(ls(ctr, "overlayfs"), [row("base", "", "Committed")]);
}

/// `ctr snapshots diff` goes through Diff.Diff (the layer is written into the content store)
/// and reads the blob back: the layer holds exactly what the snapshot added.
#[test]
fn diff_of_a_snapshot_is_a_layer_in_the_content_store() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    ctr.ok(&["snapshots", "prepare", "base-active"]);
    let base = bind_source(&ctr.ok(&["snapshots", "mounts", "/unused", "base-active"]));
    std::fs::write(base.join("base-file"), b"in base").unwrap();
    ctr.ok(&["snapshots", "commit", "base", "base-active"]);
    ctr.ok(&["snapshots", "prepare", "top-active", "base"]);
    let top = ctr.ok(&["snapshots", "mounts", "/unused", "top-active"]);
    let upper = top
        .split([' ', ','])
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {top}"));
    std::fs::create_dir_all(Path::new(upper).join("etc")).unwrap();
    std::fs::write(Path::new(upper).join("etc/added"), b"added on top").unwrap();
    ctr.ok(&["snapshots", "commit", "top", "top-active"]);

    for media_type in [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    ] {
        // gc.root keeps the blob after ctr's lease is gone (GC would collect it otherwise).
        let out = ctr.run(&[
            "snapshots",
            "diff",
            "--media-type",
            media_type,
            "--label",
            "containerd.io/gc.root=test",
            "top",
        ]);
        assert!(out.success(), "{}", out.describe());
        let raw: Box<dyn std::io::Read> = if media_type.ends_with("+gzip") {
            Box::new(flate2::read::GzDecoder::new(&out.stdout[..]))
        } else {
            Box::new(&out.stdout[..])
        };
        let mut entries = Vec::new();
        let mut archive = tar::Archive::new(raw);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            entries.push((path.trim_end_matches('/').to_string(), data));
        }
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/added"], "{media_type}");
        assert_eq!(entries[1].1, b"added on top");
    }
    // The layers are in the content store with the requested label and their diffID.
    let content = ctr.ok(&["content", "ls"]);
    let rows: Vec<&str> = content.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{content}");
    for r in rows {
        assert!(
            r.contains("containerd.io/uncompressed=sha256:")
                && r.contains("containerd.io/gc.root=test"),
            "{content}"
        );
    }
    // ctr's temporary views are gone again.
    let mut rows = ls(ctr, "overlayfs");
    rows.sort();
    assert_eq!(
        rows,
        [
            row("base", "", "Committed"),
            row("top", "base", "Committed")
        ]
    );
}
