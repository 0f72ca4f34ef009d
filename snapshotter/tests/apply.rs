//! Layer apply and diff against real filesystems: round trips, whiteouts (delete and overlay,
//! with a real overlay mount), a corpus of malicious layers, and diff → re-apply.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use snapshotter::Mount;
use snapshotter::apply::{self, ApplyError, Code, Compression, WhiteoutMode};
use snapshotter::diff;

// ---------- helpers ----------

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Root tests fail under CORRAL_REQUIRE_ROOT=1 when not root, else skip with a note.
fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test} needs root and CORRAL_REQUIRE_ROOT=1");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// Serialises the tests that check `/proc/self/mountinfo` for our temporary mounts.
static TEMP_MOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A tar built entry by entry with raw names (the tar crate's path setters refuse `..`, which
/// the malicious corpus needs).
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

#[derive(Clone, Copy)]
struct E {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const DEF: E = E {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_600_000_000,
};

impl Layer {
    fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        e: E,
        data: &[u8],
        link: Option<&[u8]>,
        pax: &[(&str, &[u8])],
        dev: (u32, u32),
    ) -> &mut Self {
        let mut pax: Vec<(&str, &[u8])> = pax.to_vec();
        if name.len() > 100 {
            pax.push(("path", name));
        }
        if !pax.is_empty() {
            self.b.append_pax_extensions(pax).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
        }
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    fn file(&mut self, name: &str, data: &[u8], e: E) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Regular,
            e,
            data,
            None,
            &[],
            (0, 0),
        )
    }
    fn dir(&mut self, name: &str, e: E) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Directory,
            e,
            b"",
            None,
            &[],
            (0, 0),
        )
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let e = E { mode: 0o777, ..DEF };
        self.raw(
            name.as_bytes(),
            tar::EntryType::Symlink,
            e,
            b"",
            Some(target.as_bytes()),
            &[],
            (0, 0),
        )
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Link,
            DEF,
            b"",
            Some(target.as_bytes()),
            &[],
            (0, 0),
        )
    }
    fn whiteout(&mut self, name: &str) -> &mut Self {
        self.file(name, b"", DEF)
    }
    fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zst(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

/// One node of a tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: String,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for k in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|k| !k.is_empty())
    {
        let ck = std::ffi::CString::new(k).unwrap();
        let mut v = vec![0u8; 4096];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), ck.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(r.max(0) as usize);
        out.push((k.to_vec(), v));
    }
    out.sort();
    out
}

/// Recursive listing of a tree (not following symlinks), keyed by relative path.
fn listing(root: &Path, with_dir_mtimes: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>, dm: bool) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, content) = if ft.is_dir() {
                ("dir", String::new())
            } else if ft.is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p).unwrap().display().to_string(),
                )
            } else if ft.is_file() {
                ("file", sha(&std::fs::read(&p).unwrap()))
            } else if ft.is_char_device() {
                ("char", format!("{}", m.rdev()))
            } else if ft.is_block_device() {
                ("block", format!("{}", m.rdev()))
            } else if ft.is_fifo() {
                ("fifo", String::new())
            } else {
                ("other", String::new())
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mtime = if ft.is_dir() && !dm {
                (0, 0)
            } else {
                (m.mtime(), m.mtime_nsec())
            };
            out.insert(
                rel,
                Node {
                    kind: kind.into(),
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime,
                    content,
                    xattrs: xattrs(&p),
                },
            );
            if ft.is_dir() {
                walk(root, &p, out, dm);
            }
        }
    }
    walk(root, root, &mut out, with_dir_mtimes);
    out
}

fn apply_bytes(
    layer: &[u8],
    mt: Option<&str>,
    root: &Path,
    mode: WhiteoutMode,
) -> apply::Result<apply::Applied> {
    apply::apply_layer(layer, mt, root, mode)
}

/// An overlay mount on a private dir, unmounted on drop.
struct OverlayMount {
    target: tempfile::TempDir,
}

impl OverlayMount {
    fn new(lower: &Path, upper: &Path, work: &Path) -> OverlayMount {
        let target = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(target.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount overlay");
        OverlayMount { target }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.target.path())
            .status();
    }
}

// ---------- round trips ----------

fn rich_layer() -> Vec<u8> {
    let mut l = Layer::new();
    let long = format!("d/{}", "n".repeat(150));
    l.dir(
        "d/",
        E {
            mode: 0o750,
            uid: 1000,
            gid: 1001,
            mtime: 1_500_000_000,
        },
    )
    .file(
        "d/f.txt",
        b"hello world",
        E {
            mode: 0o640,
            uid: 1000,
            gid: 1001,
            mtime: 1_400_000_000,
        },
    )
    .file(
        "d/suid",
        b"#!/bin/sh\n",
        E {
            mode: 0o4755,
            ..DEF
        },
    )
    .dir(
        "tmp/",
        E {
            mode: 0o1777,
            ..DEF
        },
    )
    .symlink("d/link", "f.txt")
    .symlink("abs", "/etc/passwd")
    .hardlink("d/hard", "d/f.txt")
    .raw(
        b"d/fifo",
        tar::EntryType::Fifo,
        E { mode: 0o600, ..DEF },
        b"",
        None,
        &[],
        (0, 0),
    )
    .raw(
        b"d/x",
        tar::EntryType::Regular,
        E { mode: 0o644, ..DEF },
        b"xattr",
        None,
        &[
            ("SCHILY.xattr.user.test", b"v1"),
            ("mtime", b"1600000000.123456789"),
        ],
        (0, 0),
    )
    .file(&long, b"long name", DEF)
    .file("/absolute_ok", b"stripped", DEF)
    .file("./dot/slash", b"dots", DEF);
    if is_root() {
        l.raw(
            b"d/null",
            tar::EntryType::Char,
            E { mode: 0o666, ..DEF },
            b"",
            None,
            &[],
            (1, 3),
        );
        l.raw(
            b"d/loop",
            tar::EntryType::Block,
            E { mode: 0o660, ..DEF },
            b"",
            None,
            &[],
            (7, 0),
        );
    }
    l.finish()
}

fn check_rich_tree(root: &Path) {
    let t = listing(root, true);
    let d = &t["d"];
    assert_eq!(
        (d.kind.as_str(), d.mode, d.uid, d.gid),
        (
            "dir",
            0o750,
            if is_root() { 1000 } else { d.uid },
            if is_root() { 1001 } else { d.gid }
        )
    );
    assert_eq!(
        d.mtime,
        (1_500_000_000, 0),
        "dir mtime is set after its contents"
    );
    let f = &t["d/f.txt"];
    assert_eq!(
        (f.kind.as_str(), f.mode, f.mtime),
        ("file", 0o640, (1_400_000_000, 0))
    );
    assert_eq!(std::fs::read(root.join("d/f.txt")).unwrap(), b"hello world");
    assert_eq!(t["d/suid"].mode, 0o4755, "setuid survives chown");
    assert_eq!(t["tmp"].mode, 0o1777);
    assert_eq!(t["d/link"].content, "f.txt");
    assert_eq!(t["abs"].content, "/etc/passwd");
    let (a, b) = (
        std::fs::metadata(root.join("d/f.txt")).unwrap(),
        std::fs::metadata(root.join("d/hard")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    assert_eq!(t["d/fifo"].kind, "fifo");
    assert_eq!(
        t["d/x"].mtime,
        (1_600_000_000, 123_456_789),
        "PAX mtime with nanoseconds"
    );
    assert_eq!(
        t["d/x"].xattrs,
        vec![(b"user.test".to_vec(), b"v1".to_vec())]
    );
    assert_eq!(
        std::fs::read(root.join("d").join("n".repeat(150))).unwrap(),
        b"long name"
    );
    assert_eq!(
        std::fs::read(root.join("absolute_ok")).unwrap(),
        b"stripped"
    );
    assert_eq!(std::fs::read(root.join("dot/slash")).unwrap(), b"dots");
    if is_root() {
        assert_eq!(t["d/f.txt"].uid, 1000);
        assert_eq!(t["d/f.txt"].gid, 1001);
        assert_eq!(t["d/null"].kind, "char");
        assert_eq!(t["d/null"].content, format!("{}", libc::makedev(1, 3)));
        assert_eq!(t["d/loop"].kind, "block");
    }
}

#[test]
fn round_trip_plain_gzip_zstd() {
    let raw = rich_layer();
    for (name, bytes, mt) in [
        (
            "plain",
            raw.clone(),
            Some("application/vnd.oci.image.layer.v1.tar"),
        ),
        (
            "gzip",
            gz(&raw),
            Some("application/vnd.oci.image.layer.v1.tar+gzip"),
        ),
        (
            "docker gzip",
            gz(&raw),
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ),
        (
            "zstd",
            zst(&raw),
            Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        ),
        ("gzip by magic", gz(&raw), None),
        ("zstd by magic", zst(&raw), Some("application/octet-stream")),
        ("plain by magic", raw.clone(), None),
    ] {
        let root = tempfile::tempdir().unwrap();
        let got = apply_bytes(&bytes, mt, root.path(), WhiteoutMode::Delete)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got.diff_id,
            sha(&raw),
            "{name}: diffID is sha256 of the uncompressed tar"
        );
        assert_eq!(got.size, raw.len() as u64, "{name}");
        check_rich_tree(root.path());
    }
}

#[test]
fn diff_id_covers_trailing_padding_and_multi_member_gzip() {
    let mut raw = Layer::new();
    raw.file("a", b"a", DEF);
    let mut raw = raw.finish();
    raw.extend_from_slice(&[0u8; 10 * 1024]);
    let root = tempfile::tempdir().unwrap();
    let got = apply_bytes(&raw, None, root.path(), WhiteoutMode::Delete).unwrap();
    assert_eq!(got.diff_id, sha(&raw));
    assert_eq!(got.size, raw.len() as u64);

    // pigz-style: two gzip members concatenated form one stream.
    let (a, b) = raw.split_at(700);
    let mut two = gz(a);
    two.extend_from_slice(&gz(b));
    let root = tempfile::tempdir().unwrap();
    let got = apply_bytes(&two, None, root.path(), WhiteoutMode::Delete).unwrap();
    assert_eq!(got.diff_id, sha(&raw));
    assert_eq!(std::fs::read(root.path().join("a")).unwrap(), b"a");
}

#[test]
fn media_type_errors_are_clear() {
    let mut l = Layer::new();
    l.file("a", b"a", DEF);
    let raw = l.finish();
    let root = tempfile::tempdir().unwrap();
    let e = apply_bytes(
        &gz(&raw),
        Some("application/vnd.oci.image.layer.v1.tar"),
        root.path(),
        WhiteoutMode::Delete,
    )
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("gzip"), "{e}");
    let e = apply_bytes(
        &raw,
        Some("application/vnd.oci.image.layer.v1.tar+bzip2"),
        root.path(),
        WhiteoutMode::Delete,
    )
    .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e}");
    let mut broken = gz(&raw);
    broken.truncate(broken.len() / 2);
    let e = apply_bytes(&broken, None, root.path(), WhiteoutMode::Delete).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert_eq!(
        Compression::from_media_type(Some(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ))
        .unwrap(),
        Some(Compression::Gzip)
    );
}

// ---------- whiteouts ----------

fn base_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("a/", E { mode: 0o755, ..DEF })
        .file("a/x", b"x", DEF)
        .file("a/y", b"y", DEF)
        .dir("a/sub/", E { mode: 0o755, ..DEF })
        .file("a/sub/z", b"z", DEF)
        .file("b", b"b", DEF)
        .dir("c/", E { mode: 0o700, ..DEF })
        .file("c/keep", b"keep", DEF)
        .file("c/gone", b"gone", DEF);
    l.finish()
}

fn whiteout_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.whiteout(".wh.b")
        .dir("a/", E { mode: 0o755, ..DEF })
        .whiteout("a/.wh..wh..opq")
        .file("a/new", b"new", DEF)
        .whiteout("c/.wh.gone")
        .file("c/same", b"same layer", DEF)
        // A whiteout never hides an entry of its own layer (OCI image spec).
        .whiteout("c/.wh.same")
        .whiteout(".wh..wh.plnk");
    l.finish()
}

#[test]
fn whiteouts_delete_mode() {
    let root = tempfile::tempdir().unwrap();
    apply_bytes(&base_layer(), None, root.path(), WhiteoutMode::Delete).unwrap();
    apply_bytes(&whiteout_layer(), None, root.path(), WhiteoutMode::Delete).unwrap();
    let t = listing(root.path(), false);
    let names: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, ["a", "a/new", "c", "c/keep", "c/same"]);
}

#[test]
fn whiteouts_overlay_mode_with_real_overlay_mount() {
    if !require_root("whiteouts_overlay_mode_with_real_overlay_mount") {
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    apply_bytes(&base_layer(), None, lower.path(), WhiteoutMode::Delete).unwrap();
    // The layer does not list `c/`: the upperdir's `c` must take lower's mode (0700).
    let got = apply::apply_to_mounts(
        &[Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("lowerdir={}", lower.path().display()),
                format!("upperdir={}", upper.path().display()),
                format!("workdir={}", work.path().display()),
            ],
        }],
        &whiteout_layer()[..],
        None,
    )
    .unwrap();
    assert_eq!(got.diff_id, sha(&whiteout_layer()));
    let u = listing(upper.path(), false);
    assert_eq!(u["b"].kind, "char");
    assert_eq!(u["b"].content, "0");
    assert_eq!(u["c/gone"].kind, "char");
    assert_eq!(
        u["c"].mode, 0o700,
        "implicit parent copies lower's attributes"
    );
    assert!(
        u["a"]
            .xattrs
            .contains(&(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())),
        "{:?}",
        u["a"]
    );
    assert!(!u.contains_key("c/same") || u["c/same"].kind == "file");

    let m = OverlayMount::new(lower.path(), upper.path(), work.path());
    let merged = listing(m.target.path(), false);
    let names: Vec<&str> = merged.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, ["a", "a/new", "c", "c/keep", "c/same"]);
    drop(m);

    // Diff of the overlay upper gives back overlay-free whiteouts.
    let mut out = Vec::new();
    let d = diff::diff_mounts(
        &[Mount {
            kind: "bind".into(),
            source: lower.path().display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "ro".into()],
        }],
        &[Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("lowerdir={}", lower.path().display()),
                format!("upperdir={}", upper.path().display()),
                format!("workdir={}", work.path().display()),
            ],
        }],
        &mut out,
        Compression::None,
    )
    .unwrap();
    assert_eq!(d.diff_id, sha(&out));
    assert_eq!(d.digest, d.diff_id);
    let names = tar_names(&out);
    for want in [
        ".wh.b",
        "a/",
        "a/.wh..wh..opq",
        "a/new",
        "c/",
        "c/.wh.gone",
        "c/same",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // Re-applying the diff onto a copy of lower yields the merged view.
    let copy = tempfile::tempdir().unwrap();
    apply_bytes(&base_layer(), None, copy.path(), WhiteoutMode::Delete).unwrap();
    apply_bytes(&out, None, copy.path(), WhiteoutMode::Delete).unwrap();
    let names: Vec<String> = listing(copy.path(), false).into_keys().collect();
    assert_eq!(names, ["a", "a/new", "c", "c/keep", "c/same"]);

    // Against an empty parent the upperdir alone is not enough: the overlay is mounted
    // read-only and walked against the empty tree, giving the whole merged view.
    let mut full = Vec::new();
    let _guard = TEMP_MOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    diff::diff_mounts(
        &[],
        &[Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("lowerdir={}", lower.path().display()),
                format!("upperdir={}", upper.path().display()),
                format!("workdir={}", work.path().display()),
            ],
        }],
        &mut full,
        Compression::Gzip,
    )
    .unwrap();
    let fresh = tempfile::tempdir().unwrap();
    apply_bytes(&full, None, fresh.path(), WhiteoutMode::Delete).unwrap();
    let names: Vec<String> = listing(fresh.path(), false).into_keys().collect();
    assert_eq!(names, ["a", "a/new", "c", "c/keep", "c/same"]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains("corral-mount-"),
        "diff left its view mounted"
    );
}

fn tar_names(t: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(t);
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

#[test]
fn apply_to_bind_mount_and_rejects_views() {
    let root = tempfile::tempdir().unwrap();
    let bind = Mount {
        kind: "bind".into(),
        source: root.path().display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    };
    apply::apply_to_mounts(std::slice::from_ref(&bind), &base_layer()[..], None).unwrap();
    assert_eq!(std::fs::read(root.path().join("a/sub/z")).unwrap(), b"z");
    let mut ro = bind.clone();
    ro.options = vec!["rbind".into(), "ro".into()];
    let e = apply::apply_to_mounts(&[ro], &base_layer()[..], None).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = apply::apply_to_mounts(&[], &base_layer()[..], None).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
}

#[test]
fn apply_to_other_mounts_mounts_and_unmounts() {
    if !require_root("apply_to_other_mounts_mounts_and_unmounts") {
        return;
    }
    let _guard = TEMP_MOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let tmpfs = Mount {
        kind: "tmpfs".into(),
        source: "tmpfs".into(),
        target: String::new(),
        options: vec!["size=16m".into()],
    };
    let got = apply::apply_to_mounts(&[tmpfs], &base_layer()[..], None).unwrap();
    assert_eq!(got.diff_id, sha(&base_layer()));
    let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !after.contains("corral-mount-"),
        "temporary mount left behind"
    );
}

// ---------- malicious layers ----------

struct Arena {
    _top: tempfile::TempDir,
    root: PathBuf,
    sentinel: PathBuf,
}

fn arena() -> Arena {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("root");
    let sentinel = top.path().join("sentinel");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("secret"), b"secret").unwrap();
    std::fs::write(root.join("existing"), b"existing").unwrap();
    // Planted by a "lower layer": a symlink pointing out of the root.
    std::os::unix::fs::symlink(&sentinel, root.join("planted")).unwrap();
    Arena {
        root,
        sentinel,
        _top: top,
    }
}

fn malicious_case(
    name: &str,
    build: impl Fn(&mut Layer, &Path),
    want: Code,
    want_msg: &str,
    may_appear: &[&str],
) {
    let a = arena();
    let mut l = Layer::new();
    build(&mut l, &a.sentinel);
    let layer = l.finish();
    let root_before = listing(&a.root, true);
    let sentinel_before = listing(&a.sentinel, true);
    for (label, bytes) in [("plain", layer.clone()), ("gzip", gz(&layer))] {
        let e = apply_bytes(&bytes, None, &a.root, WhiteoutMode::Delete)
            .expect_err(&format!("{name} ({label}) must be refused"));
        assert_eq!(e.code(), want, "{name}: {e}");
        assert!(
            e.to_string().contains(want_msg),
            "{name}: {e:?} should mention {want_msg:?}"
        );
        assert_eq!(
            listing(&a.sentinel, true),
            sentinel_before,
            "{name}: sentinel changed"
        );
        let mut after = listing(&a.root, true);
        for p in may_appear {
            after.remove(*p);
        }
        assert_eq!(
            after, root_before,
            "{name}: root changed beyond {may_appear:?}"
        );
    }
}

#[test]
fn malicious_layers_are_refused_without_writing_outside() {
    use tar::EntryType as T;
    let reg = |l: &mut Layer, n: &[u8]| {
        l.raw(n, T::Regular, DEF, b"pwned", None, &[], (0, 0));
    };
    malicious_case(
        "dotdot",
        |l, _| reg(l, b"../sentinel/pwned"),
        Code::InvalidArgument,
        "`..`",
        &[],
    );
    malicious_case(
        "inner dotdot",
        |l, _| reg(l, b"a/../../sentinel/pwned"),
        Code::InvalidArgument,
        "`..`",
        &[],
    );
    malicious_case(
        "absolute escape",
        |l, _| reg(l, b"/../sentinel/pwned"),
        Code::InvalidArgument,
        "`..`",
        &[],
    );
    malicious_case(
        "symlink then write through it (absolute)",
        |l, s| {
            l.symlink("a", &s.display().to_string());
            reg(l, b"a/pwned");
        },
        Code::InvalidArgument,
        "symlink",
        &["a"],
    );
    malicious_case(
        "symlink then write through it (relative ../..)",
        |l, _| {
            l.symlink("a", "../..");
            reg(l, b"a/tmp/pwned");
        },
        Code::InvalidArgument,
        "symlink",
        &["a"],
    );
    malicious_case(
        "write through a symlink planted by a lower layer",
        |l, _| reg(l, b"planted/pwned"),
        Code::InvalidArgument,
        "component \"planted\" is a symlink",
        &[],
    );
    malicious_case(
        "dir replaced by symlink then written through",
        |l, s| {
            l.dir("d/", DEF);
            l.symlink("d", &s.display().to_string());
            reg(l, b"d/pwned");
        },
        Code::InvalidArgument,
        "symlink",
        &["d"],
    );
    malicious_case(
        "hardlink to outside",
        |l, _| {
            l.hardlink("h", "../sentinel/secret");
        },
        Code::InvalidArgument,
        "hardlink",
        &[],
    );
    malicious_case(
        "hardlink to /etc/passwd",
        |l, _| {
            l.hardlink("h", "/etc/passwd");
        },
        Code::InvalidArgument,
        "does not exist inside the root",
        &[],
    );
    malicious_case(
        "hardlink through a symlink",
        |l, _| {
            l.hardlink("h", "planted/secret");
        },
        Code::InvalidArgument,
        "symlink",
        &[],
    );
    malicious_case(
        "whiteout with ..",
        |l, _| {
            l.whiteout(".wh...");
        },
        Code::InvalidArgument,
        "whiteout",
        &[],
    );
    malicious_case(
        "whiteout in a .. path",
        |l, _| {
            l.whiteout("../sentinel/.wh.secret");
        },
        Code::InvalidArgument,
        "`..`",
        &[],
    );
    malicious_case(
        "whiteout through a symlink",
        |l, _| {
            l.whiteout("planted/.wh.secret");
        },
        Code::InvalidArgument,
        "symlink",
        &[],
    );
    malicious_case(
        "opaque dir through a symlink",
        |l, _| {
            l.whiteout("planted/.wh..wh..opq");
        },
        Code::InvalidArgument,
        "symlink",
        &[],
    );
    let long = "x".repeat(300);
    malicious_case(
        "overlong name",
        |l, _| reg(l, long.as_bytes()),
        Code::InvalidArgument,
        "255",
        &[],
    );
    let deep = "d/".repeat(2100) + "f";
    malicious_case(
        "overlong path",
        |l, _| reg(l, deep.as_bytes()),
        Code::InvalidArgument,
        "4095",
        &[],
    );
}

/// xattrs the kernel refuses are the layer's fault (found by the `layer` fuzz target: a
/// malformed `security.capability` was answered Internal).
#[test]
fn xattrs_the_kernel_refuses_are_invalid_argument() {
    use tar::EntryType as T;
    let long_name = format!("SCHILY.xattr.user.{}", "k".repeat(300));
    let big_value = vec![b'v'; 65_537];
    type Pax<'a> = Vec<(&'a str, &'a [u8])>;
    let mut cases: Vec<(&str, Pax)> = vec![
        ("overlong xattr name", vec![(long_name.as_str(), b"v")]),
        (
            "xattr value over 64 KiB",
            vec![("SCHILY.xattr.user.big", &big_value)],
        ),
    ];
    if is_root() {
        // A capability set must be a vfs_cap_data of a known revision.
        cases.push((
            "malformed capability",
            vec![("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02")],
        ));
    }
    for (name, pax) in cases {
        malicious_case(
            name,
            |l, _| {
                l.raw(b"x", T::Regular, DEF, b"data", None, &pax, (0, 0));
            },
            Code::InvalidArgument,
            "xattr",
            &["x"],
        );
    }
}

#[test]
fn device_nodes_need_root() {
    let mut l = Layer::new();
    l.raw(b"null", tar::EntryType::Char, DEF, b"", None, &[], (1, 3));
    let layer = l.finish();
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = top.path().to_path_buf();
    // Drop privileges for one thread only: the raw syscall changes the calling thread's
    // credentials (glibc's wrapper would change the whole test process).
    let e = std::thread::spawn(move || {
        if is_root() {
            let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(r, 0, "setresuid");
        }
        apply_bytes(&layer, None, &root, WhiteoutMode::Delete).unwrap_err()
    })
    .join()
    .unwrap();
    assert!(matches!(e, ApplyError::NeedsRoot { .. }), "{e:?}");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.to_string().contains("requires running as root"), "{e}");
    assert!(!top.path().join("null").exists());
}

// ---------- diff ----------

fn change_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir(
        "a/",
        E {
            mode: 0o711,
            mtime: 1_650_000_000,
            ..DEF
        },
    )
    .file(
        "a/x",
        b"changed x",
        E {
            mtime: 1_650_000_001,
            ..DEF
        },
    )
    .whiteout("a/.wh.y")
    .dir(
        "a/sub/",
        E {
            mode: 0o755,
            mtime: 1_650_000_002,
            ..DEF
        },
    )
    .whiteout("a/sub/.wh.z")
    .file("b", b"b", E { mode: 0o600, ..DEF })
    .symlink("c", "a/x")
    .hardlink("a/x2", "a/x")
    .raw(
        b"a/pax",
        tar::EntryType::Regular,
        DEF,
        b"p",
        None,
        &[("SCHILY.xattr.user.k", b"v"), ("mtime", b"1650000003.5")],
        (0, 0),
    )
    .file(&format!("long/{}", "l".repeat(200)), b"long", DEF);
    l.finish()
}

fn cp_a(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn diff_then_reapply_gives_the_same_tree() {
    let base = tempfile::tempdir().unwrap();
    apply_bytes(&base_layer(), None, base.path(), WhiteoutMode::Delete).unwrap();
    let result = tempfile::tempdir().unwrap();
    cp_a(base.path(), result.path());
    apply_bytes(&change_layer(), None, result.path(), WhiteoutMode::Delete).unwrap();

    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut out = Vec::new();
        let d = diff::diff_mounts(
            &[Mount {
                kind: "bind".into(),
                source: base.path().display().to_string(),
                target: String::new(),
                options: vec!["rbind".into(), "ro".into()],
            }],
            &[Mount {
                kind: "bind".into(),
                source: result.path().display().to_string(),
                target: String::new(),
                options: vec!["rbind".into()],
            }],
            &mut out,
            compression,
        )
        .unwrap();
        assert_eq!(d.digest, sha(&out), "digest is of the written stream");
        assert_eq!(d.compressed_size, out.len() as u64);

        let copy = tempfile::tempdir().unwrap();
        cp_a(base.path(), copy.path());
        let applied = apply_bytes(&out, None, copy.path(), WhiteoutMode::Delete).unwrap();
        assert_eq!(applied.diff_id, d.diff_id, "{compression:?}");
        assert_eq!(applied.size, d.size);
        assert_eq!(
            listing(copy.path(), true),
            listing(result.path(), true),
            "{compression:?}"
        );

        if compression == Compression::None {
            let names = tar_names(&out);
            assert!(names.contains(&"a/.wh.y".to_string()), "{names:?}");
            assert!(names.contains(&"a/sub/.wh.z".to_string()), "{names:?}");
            assert!(
                !names.iter().any(|n| n == "c/keep" || n == "c/"),
                "unchanged entries left out: {names:?}"
            );
            let mut again = Vec::new();
            diff::diff_dirs(base.path(), result.path(), &mut again, Compression::None).unwrap();
            assert_eq!(again, out, "deterministic output");
        }
    }
}

#[test]
fn diff_against_empty_lower_is_the_whole_tree() {
    let root = tempfile::tempdir().unwrap();
    apply_bytes(&base_layer(), None, root.path(), WhiteoutMode::Delete).unwrap();
    let mut out = Vec::new();
    diff::diff_mounts(
        &[],
        &[Mount {
            kind: "bind".into(),
            source: root.path().display().to_string(),
            target: String::new(),
            options: vec!["rbind".into()],
        }],
        &mut out,
        Compression::Gzip,
    )
    .unwrap();
    let copy = tempfile::tempdir().unwrap();
    apply_bytes(
        &out,
        Some("application/vnd.oci.image.layer.v1.tar+gzip"),
        copy.path(),
        WhiteoutMode::Delete,
    )
    .unwrap();
    assert_eq!(listing(copy.path(), true), listing(root.path(), true));
}
