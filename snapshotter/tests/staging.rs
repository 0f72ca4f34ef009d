//! Staged unpack (layers extracted concurrently, adopted in chain order) against the sequential
//! one (prepare, apply onto the mounts, commit): the same trees, attribute for attribute, on a
//! chain of layers with whiteouts, opaque dirs, implicit parents, hard links, xattrs and a
//! directory replaced by a file; and what is left behind when staging fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use snapshotter::apply::{self, overlay_dirs};
use snapshotter::{Code, Labels, Mount, MountGuard, Options, OverlaySnapshotter, Snapshotter};

fn require_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test} needs root and CORRAL_REQUIRE_ROOT=1");
    }
    eprintln!("skipping {test}: needs root");
    false
}

fn open(root: &Path) -> OverlaySnapshotter {
    let opts = Options {
        overlay_index_off: Some(true),
        ..Options::default()
    };
    OverlaySnapshotter::open_with(root, opts).unwrap()
}

const T0: u64 = 1_600_000_000;

/// A layer tar, entry by entry.
struct L(tar::Builder<Vec<u8>>);

impl L {
    fn new() -> L {
        L(tar::Builder::new(Vec::new()))
    }
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        data: &[u8],
        link: Option<&str>,
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        if !xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.0
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(T0 + uid);
        h.set_size(data.len() as u64);
        h.set_path(name).unwrap();
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn dir(&mut self, name: &str, mode: u32, uid: u64) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, mode, uid, b"", None, &[])
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, 0o644, 0, data, None, &[])
    }
    fn file_x(&mut self, name: &str, data: &[u8], uid: u64, x: &[(&str, &[u8])]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, 0o4755, uid, data, None, x)
    }
    fn link(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, 0o644, 0, b"", Some(target), &[])
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name,
            tar::EntryType::Symlink,
            0o777,
            0,
            b"",
            Some(target),
            &[],
        )
    }
    fn gz(&mut self) -> Vec<u8> {
        let raw = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    }
}

/// Four layers exercising everything a layer can ask of the one below it.
fn image() -> Vec<Vec<u8>> {
    let l0 = L::new()
        .dir("usr/", 0o755, 0)
        .dir("usr/lib/", 0o700, 1000)
        .file("usr/lib/a", b"a0")
        .dir("etc/", 0o750, 0)
        .file("etc/gone", b"bye")
        .dir("var/", 0o755, 0)
        .file("var/old", b"old")
        .dir("d/", 0o755, 0)
        .file("d/child", b"c")
        .file("f", b"plain file")
        .dir("opt/", 0o711, 7)
        // Layer 0 has no parent: whiteouts and opaque markers delete (nothing), as on a bind.
        .file("data/.wh..wh..opq", b"")
        .file(".wh.nothing", b"")
        .gz();
    let l1 = L::new()
        // Implicit: usr/ and usr/lib/ take layer 0's attributes, usr/lib/x/ has none.
        .file("usr/lib/x/y", b"y1")
        .file(".wh.etc-file", b"")
        .file("etc/.wh.gone", b"")
        .file("var/.wh..wh..opq", b"")
        .file("var/new", b"new")
        .file_x("bin/tool", b"#!tool", 33, &[("user.k", b"v1")])
        .link("bin/alias", "bin/tool")
        .symlink("bin/sh", "tool")
        .dir("opt/", 0o755, 8)
        .file("opt/p", b"p")
        .gz();
    let l2 = L::new()
        // A directory replaced by a file, a file by a directory.
        .file("d", b"now a file")
        .dir("f/", 0o700, 0)
        .file("f/inside", b"i")
        // usr/lib/x/ is implicit here and in layer 1: it inherits layer 1's.
        .file("usr/lib/x/z", b"z2")
        // opt/: the highest lower that has it is layer 1 (0755, uid 8), not layer 0.
        .file("opt/q", b"q")
        // Made implicitly for srv/a/f, then listed: the entry wins, mtime included.
        .file("srv/a/f", b"f")
        .dir("srv/a/", 0o701, 5)
        .file("bin/.wh.sh", b"")
        .gz();
    let l3 = L::new()
        // etc/x/ has no lower; etc/ is only in layer 0.
        .file("etc/x/deep", b"deep")
        .file("usr/.wh..wh..opq", b"")
        .file("usr/only", b"o")
        .link("usr/only-link", "usr/only")
        .gz();
    vec![l0, l1, l2, l3]
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn diff_ids(layers: &[Vec<u8>]) -> Vec<String> {
    layers
        .iter()
        .map(|l| {
            let mut d = flate2::read::GzDecoder::new(&l[..]);
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
            format!("sha256:{}", sha_hex(&raw))
        })
        .collect()
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = Vec::new();
    for k in names[..n.max(0) as usize]
        .split(|b| *b == 0)
        .filter(|k| !k.is_empty())
    {
        let ck = std::ffi::CString::new(k).unwrap();
        let mut v = vec![0u8; 4096];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), ck.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(r.max(0) as usize);
        out.push((String::from_utf8_lossy(k).into_owned(), v));
    }
    out.sort();
    out
}

/// Everything about a tree that a container could see, keyed by path: type, content (or link
/// target, or device number), mode, owner, xattrs, hard-link group and mtime. Times at or after
/// `fresh` (directories made during the test, which no tar entry dates) read as "fresh".
fn tree(root: &Path, fresh: i64) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("symlink {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_char_device() {
                format!("char {}", m.rdev())
            } else if ft.is_file() {
                format!("file {}", sha_hex(&std::fs::read(&p).unwrap()))
            } else {
                "other".to_string()
            };
            let link = if !ft.is_dir() && m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                format!(" link-group={first}")
            } else {
                String::new()
            };
            let mtime = if m.mtime() >= fresh {
                "fresh".to_string()
            } else {
                format!("{}.{}", m.mtime(), m.mtime_nsec())
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} owner={}:{} mtime={mtime} xattrs={:?}{link}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    xattrs(&p)
                ),
            );
        }
    }
    out
}

fn layer_dir(mounts: &[Mount]) -> PathBuf {
    match overlay_dirs(&mounts[0]) {
        Some((Some(upper), _)) => upper,
        _ => PathBuf::from(&mounts[0].source),
    }
}

/// Sequential: prepare on the parent, apply onto the mounts, commit. Returns the layer dirs.
fn unpack_sequential(sn: &OverlaySnapshotter, layers: &[Vec<u8>], ids: &[String]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let key = format!("extract-{i}");
        let parent = (i > 0).then(|| format!("chain-{}", i - 1));
        let mounts = sn.prepare(&key, parent.as_deref(), Labels::new()).unwrap();
        let applied = apply::apply_to_mounts(&mounts, &l[..], None).unwrap();
        assert_eq!(applied.diff_id, ids[i]);
        dirs.push(layer_dir(&mounts));
        sn.commit(&format!("chain-{i}"), &key, Labels::new())
            .unwrap();
    }
    dirs
}

/// Staged: every layer extracted at once on its own thread, then adopted in chain order.
fn unpack_staged(sn: &OverlaySnapshotter, layers: &[Vec<u8>], ids: &[String]) -> Vec<PathBuf> {
    let staging = sn.staging().expect("overlay stages");
    let staged: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                s.spawn(move || {
                    let dir = staging.stage_dir().unwrap();
                    apply::stage_layer(&l[..], None, dir, i > 0).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut dirs = Vec::new();
    for (i, layer) in staged.into_iter().enumerate() {
        assert_eq!(layer.applied.diff_id, ids[i]);
        let key = format!("extract-{i}");
        let parent = (i > 0).then(|| format!("chain-{}", i - 1));
        let mounts = sn.prepare(&key, parent.as_deref(), Labels::new()).unwrap();
        let staged_path = layer.path().to_path_buf();
        staging.adopt(&key, layer).unwrap();
        assert!(
            !staged_path.exists(),
            "the staging dir is gone once adopted"
        );
        dirs.push(layer_dir(&mounts));
        sn.commit(&format!("chain-{i}"), &key, Labels::new())
            .unwrap();
    }
    dirs
}

fn staging_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn merged(sn: &OverlaySnapshotter, key: &str, top: &str, fresh: i64) -> BTreeMap<String, String> {
    let mounts = sn.view(key, Some(top), Labels::new()).unwrap();
    let target = tempfile::tempdir().unwrap();
    let g = MountGuard::mount(&mounts, target.path()).unwrap();
    let t = tree(g.target(), fresh);
    drop(g);
    sn.remove(key).unwrap();
    t
}

#[test]
fn staged_and_sequential_unpacks_give_identical_snapshots() {
    if !require_root("staged_and_sequential_unpacks_give_identical_snapshots") {
        return;
    }
    let fresh = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let layers = image();
    let ids = diff_ids(&layers);
    let (ra, rb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(ra.path()), open(rb.path()));
    let seq = unpack_sequential(&a, &layers, &ids);
    let par = unpack_staged(&b, &layers, &ids);

    for i in 0..layers.len() {
        let (ta, tb) = (tree(&seq[i], fresh), tree(&par[i], fresh));
        assert_eq!(ta, tb, "layer {i} differs");
        let (ra, rb) = (
            std::fs::symlink_metadata(&seq[i]).unwrap(),
            std::fs::symlink_metadata(&par[i]).unwrap(),
        );
        assert_eq!(
            (ra.mode(), ra.uid(), ra.gid()),
            (rb.mode(), rb.uid(), rb.gid()),
            "layer {i}'s root"
        );
        assert_eq!(a.usage(&format!("chain-{i}")).unwrap().inodes, {
            b.usage(&format!("chain-{i}")).unwrap().inodes
        });
    }
    assert!(staging_entries(rb.path()).is_empty());

    // The uppers hold what overlayfs needs, so equal-but-wrong would not pass either.
    let l1 = tree(&par[1], fresh);
    assert!(l1["etc-file"].starts_with("char 0 "), "{}", l1["etc-file"]);
    assert!(
        l1["var"].contains("trusted.overlay.opaque"),
        "{}",
        l1["var"]
    );
    assert!(
        l1["usr/lib"].contains("mode=700 owner=1000:1000"),
        "{}",
        l1["usr/lib"]
    );
    assert!(l1["usr/lib/x"].contains("mode=755 owner=0:0 mtime=fresh"));
    let l2 = tree(&par[2], fresh);
    assert!(l2["opt"].contains("mode=755 owner=8:8"), "{}", l2["opt"]);
    assert!(l2["srv/a"].contains(&format!("mode=701 owner=5:5 mtime={}.0", T0 + 5)));
    let l0 = tree(&par[0], fresh);
    assert!(!l0.contains_key("nothing") && !l0.contains_key(".wh.nothing"));
    assert!(
        !l0.values()
            .any(|v| v.starts_with("char") || v.contains("trusted.overlay")),
        "layer 0 has no parent: its whiteouts delete: {l0:?}"
    );

    // And the merged views, as a container sees them.
    let (ma, mb) = (
        merged(&a, "view", "chain-3", fresh),
        merged(&b, "view", "chain-3", fresh),
    );
    assert_eq!(ma, mb);
    let names: Vec<&str> = mb.keys().map(|s| s.as_str()).collect();
    for gone in [
        "etc/gone",
        "var/old",
        "d/child",
        "bin/sh",
        "usr/lib/a",
        "usr/lib",
    ] {
        assert!(!names.contains(&gone), "{gone} shows through: {names:?}");
    }
    for here in [
        "d",
        "f/inside",
        "var/new",
        "etc/x/deep",
        "usr/only",
        "bin/alias",
        "opt/p",
        "opt/q",
    ] {
        assert!(names.contains(&here), "{here} missing: {names:?}");
    }
    assert!(mb["d"].starts_with("file "));
    assert!(
        mb["bin/alias"].contains("link-group=bin/alias")
            || mb["bin/alias"].contains("link-group=bin/tool")
    );
    assert!(mb["bin/tool"].contains("user.k"), "{}", mb["bin/tool"]);
    assert!(mb["etc"].contains("mode=750"), "{}", mb["etc"]);
}

#[test]
fn failed_staging_leaves_nothing_and_adopt_refuses_mismatches() {
    if !require_root("failed_staging_leaves_nothing_and_adopt_refuses_mismatches") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let sn = open(root.path());
    let staging = sn.staging().unwrap();
    let layers = image();

    // Corrupt gzip: the error names it, the staging dir is gone.
    let mut bad = layers[1].clone();
    let n = bad.len();
    bad.truncate(n / 2);
    bad.extend_from_slice(&[0xff; 64]);
    let dir = staging.stage_dir().unwrap();
    let e = apply::stage_layer(&bad[..], None, dir, true).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(staging_entries(root.path()).is_empty());

    // Staged for a parent, adopted by a snapshot without one (and the reverse): refused, and
    // the active snapshot is left as it was.
    let with_parent =
        apply::stage_layer(&layers[1][..], None, staging.stage_dir().unwrap(), true).unwrap();
    sn.prepare("k0", None, Labels::new()).unwrap();
    let e = staging.adopt("k0", with_parent).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        staging_entries(root.path()).is_empty(),
        "dropped on refusal"
    );
    let l0 = apply::stage_layer(&layers[0][..], None, staging.stage_dir().unwrap(), false).unwrap();
    staging.adopt("k0", l0).unwrap();
    // A second layer into the same (now full) snapshot would throw the first away.
    let again =
        apply::stage_layer(&layers[0][..], None, staging.stage_dir().unwrap(), false).unwrap();
    let e = staging.adopt("k0", again).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    sn.commit("c0", "k0", Labels::new()).unwrap();
    let not_active =
        apply::stage_layer(&layers[1][..], None, staging.stage_dir().unwrap(), true).unwrap();
    let e = staging.adopt("c0", not_active).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let missing =
        apply::stage_layer(&layers[1][..], None, staging.stage_dir().unwrap(), true).unwrap();
    assert_eq!(
        staging.adopt("nope", missing).unwrap_err().code(),
        Code::NotFound
    );
    assert!(staging_entries(root.path()).is_empty());

    // A crash with layers staged: the next open empties the staging area.
    let kept =
        apply::stage_layer(&layers[2][..], None, staging.stage_dir().unwrap(), true).unwrap();
    let path = kept.path().to_path_buf();
    std::mem::forget(kept);
    assert!(path.join("srv/a/f").exists());
    drop(sn);
    let sn = open(root.path());
    assert!(staging_entries(root.path()).is_empty());
    assert_eq!(sn.stat("c0").unwrap().name, "c0");
}

#[test]
fn native_snapshotter_does_not_stage() {
    let root = tempfile::tempdir().unwrap();
    let sn = snapshotter::NativeSnapshotter::open(root.path()).unwrap();
    assert!(sn.staging().is_none());
}
