//! The conformance suite every [`Snapshotter`] backend must pass (containerd's
//! `core/snapshots/testsuite`).
//!
//! Each check takes an opener (root directory → snapshotter) and works in its own temporary
//! root, so checks run in parallel. A backend runs them all with one line:
//!
//! ```ignore
//! snapshotter::conformance_tests!(|root: &std::path::Path| -> Box<dyn snapshotter::Snapshotter> {
//!     Box::new(snapshotter::NativeSnapshotter::open(root).unwrap())
//! });
//! ```
//!
//! Checks that mount need root; they follow `CORRAL_REQUIRE_ROOT` (see [`require_root`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::{Code, Info, Kind, Labels, Mount, MountGuard, Result, Snapshotter};

/// Makes a snapshotter rooted at the given (empty or previously used) directory.
pub type Opener = dyn Fn(&Path) -> Box<dyn Snapshotter>;

/// Whether mount tests can run: true as root. Otherwise panics when `CORRAL_REQUIRE_ROOT=1`,
/// else prints a note (naming `what`) and returns false.
pub fn require_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{what} needs root and CORRAL_REQUIRE_ROOT=1 is set");
    }
    eprintln!("note: skipping {what}: not root");
    false
}

/// A fresh root with an open snapshotter.
pub struct Env {
    pub dir: TempDir,
    pub sn: Box<dyn Snapshotter>,
}

impl Env {
    pub fn new(open: &Opener) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("snap")
            .tempdir()
            .expect("tempdir");
        let sn = open(dir.path());
        Env { dir, sn }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Closes and reopens the snapshotter on the same root.
    pub fn reopen(&mut self, open: &Opener) {
        // Close first: the metadata DB admits one instance.
        self.sn = Box::new(Closed);
        self.sn = open(self.dir.path());
    }

    pub fn names(&self, filters: &[&str]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.sn
            .walk(filters, &mut |i| {
                out.insert(i.name);
                Ok(())
            })
            .unwrap();
        out
    }
}

/// A placeholder while reopening.
struct Closed;

impl Snapshotter for Closed {
    fn stat(&self, _: &str) -> Result<Info> {
        Err(closed())
    }
    fn update(&self, _: &Info, _: &[&str]) -> Result<Info> {
        Err(closed())
    }
    fn usage(&self, _: &str) -> Result<crate::Usage> {
        Err(closed())
    }
    fn mounts(&self, _: &str) -> Result<Vec<Mount>> {
        Err(closed())
    }
    fn prepare(&self, _: &str, _: Option<&str>, _: Labels) -> Result<Vec<Mount>> {
        Err(closed())
    }
    fn view(&self, _: &str, _: Option<&str>, _: Labels) -> Result<Vec<Mount>> {
        Err(closed())
    }
    fn commit(&self, _: &str, _: &str, _: Labels) -> Result<()> {
        Err(closed())
    }
    fn remove(&self, _: &str) -> Result<()> {
        Err(closed())
    }
    fn walk(&self, _: &[&str], _: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        Err(closed())
    }
    fn cleanup(&self) -> Result<()> {
        Err(closed())
    }
}

fn closed() -> crate::Error {
    crate::Error::Unsupported {
        what: "snapshotter is closed".into(),
    }
}

pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Asserts that `r` failed with `code`; returns the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T>, code: Code) -> String {
    match r {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code(), code, "wrong code for error: {e}");
            e.to_string()
        }
    }
}

/// The directory an active snapshot's writes land in, read from its mounts alone: a bind
/// mount's source, or an overlay's `upperdir`.
pub fn upper_dir(mounts: &[Mount]) -> PathBuf {
    let m = mounts.last().expect("at least one mount");
    match m.kind.as_str() {
        "bind" => PathBuf::from(&m.source),
        "overlay" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
            .expect("active overlay mount has upperdir"),
        k => panic!("unexpected mount kind {k}"),
    }
}

/// Makes a committed layer `name` on `parent` holding `files` (path, content).
pub fn layer(sn: &dyn Snapshotter, name: &str, parent: Option<&str>, files: &[(&str, &str)]) {
    let key = format!("extract-{name}");
    let mounts = sn.prepare(&key, parent, Labels::new()).unwrap();
    let upper = upper_dir(&mounts);
    for (path, content) in files {
        let p = upper.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    sn.commit(name, &key, Labels::new()).unwrap();
}

/// Every directory under `<root>/snapshots` belongs to a snapshot (no leaks), once the trees
/// of removed snapshots, deleted after their removal answered, are gone.
pub fn assert_no_orphans(env: &Env) {
    env.sn.settle();
    let dir = env.root().join("snapshots");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let on_disk: BTreeSet<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut records = 0;
    env.sn
        .walk(&[], &mut |_| {
            records += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        on_disk.len(),
        records,
        "snapshot dirs {on_disk:?} vs {records} records"
    );
    assert!(
        on_disk.iter().all(|n| n.parse::<u64>().is_ok()),
        "leftover dirs: {on_disk:?}"
    );
}

/// prepare → commit → prepare on it: kinds, parents, and that commit removes the active key.
pub fn prepare_commit_chain(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    let m = sn
        .prepare("a", None, labels(&[("l", "1")]))
        .expect("prepare a");
    assert_eq!(m.len(), 1);
    let a = sn.stat("a").unwrap();
    assert_eq!((a.kind, a.parent.as_deref()), (Kind::Active, None));
    assert_eq!(a.labels, labels(&[("l", "1")]));
    fs::write(upper_dir(&m).join("file-a"), "A").unwrap();
    sn.commit("L1", "a", labels(&[("c", "x")])).unwrap();
    expect_code(sn.stat("a"), Code::NotFound);
    let l1 = sn.stat("L1").unwrap();
    assert_eq!((l1.kind, l1.parent.as_deref()), (Kind::Committed, None));
    assert_eq!(
        l1.labels,
        labels(&[("c", "x")]),
        "commit takes the new labels"
    );

    sn.prepare("b", Some("L1"), Labels::new()).unwrap();
    sn.commit("L2", "b", Labels::new()).unwrap();
    sn.prepare("c", Some("L2"), Labels::new()).unwrap();
    let c = sn.stat("c").unwrap();
    assert_eq!((c.kind, c.parent.as_deref()), (Kind::Active, Some("L2")));
    assert_eq!(sn.stat("L2").unwrap().parent.as_deref(), Some("L1"));
    assert_eq!(env.names(&[]), ["L1", "L2", "c"].map(String::from).into());
    assert_no_orphans(&env);
}

/// Shape of mounts for each kind; committed snapshots are not mountable.
pub fn mount_shapes(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    let has = |m: &Mount, o: &str| m.options.iter().any(|x| x == o);
    let m = sn.prepare("a", None, Labels::new()).unwrap();
    assert_eq!((m.len(), m[0].kind.as_str()), (1, "bind"));
    assert!(has(&m[0], "rw") && has(&m[0], "rbind"), "{m:?}");
    assert!(Path::new(&m[0].source).is_absolute());
    assert_eq!(
        sn.mounts("a").unwrap(),
        m,
        "mounts() repeats prepare's answer"
    );
    sn.commit("L1", "a", Labels::new()).unwrap();
    expect_code(sn.mounts("L1"), Code::FailedPrecondition);

    let v = sn.view("v", Some("L1"), Labels::new()).unwrap();
    assert_eq!(v.len(), 1);
    assert!(has(&v[0], "ro") && !has(&v[0], "rw"), "{v:?}");

    let m = sn.prepare("b", Some("L1"), Labels::new()).unwrap();
    assert_eq!(m.len(), 1);
    match m[0].kind.as_str() {
        "overlay" => {
            let lower: Vec<_> = m[0]
                .options
                .iter()
                .filter_map(|o| o.strip_prefix("lowerdir="))
                .collect();
            assert_eq!(lower.len(), 1, "{m:?}");
            assert_eq!(lower[0].split(':').count(), 1);
            assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
            assert!(m[0].options.iter().any(|o| o.starts_with("workdir=")));
        }
        "bind" => assert!(has(&m[0], "rw")),
        k => panic!("unexpected kind {k}"),
    }
    expect_code(sn.mounts("nope"), Code::NotFound);
}

/// Labels set at creation, updated by field path; times; immutables refused.
pub fn stat_update(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    sn.prepare("a", None, labels(&[("x", "1"), ("y", "2")]))
        .unwrap();
    let before = sn.stat("a").unwrap();
    assert!(before.updated_at >= before.created_at);

    let mut want = before.clone();
    want.labels = labels(&[("x", "9"), ("z", "3")]);
    let got = sn.update(&want, &["labels.x", "labels.y"]).unwrap();
    assert_eq!(
        got.labels,
        labels(&[("x", "9")]),
        "x set, y deleted (absent from info), z untouched"
    );
    assert_eq!(got.created_at, before.created_at);
    assert!(got.updated_at >= before.updated_at);
    assert_eq!(sn.stat("a").unwrap().labels, got.labels);

    let got = sn.update(&want, &[]).unwrap();
    assert_eq!(got.labels, want.labels, "no paths: replace all labels");
    let got = sn
        .update(
            &Info {
                labels: Labels::new(),
                ..want.clone()
            },
            &["labels"],
        )
        .unwrap();
    assert!(got.labels.is_empty());

    let msg = expect_code(sn.update(&want, &["parent"]), Code::InvalidArgument);
    assert!(msg.contains("parent"), "{msg}");
    let mut big = want.clone();
    big.labels = labels(&[("k", &"v".repeat(crate::MAX_LABEL_SIZE))]);
    expect_code(sn.update(&big, &[]), Code::InvalidArgument);
    assert!(
        sn.stat("a").unwrap().labels.is_empty(),
        "failed updates change nothing"
    );
    let missing = Info {
        name: "missing".into(),
        ..want
    };
    expect_code(sn.update(&missing, &[]), Code::NotFound);
}

/// walk with containerd-style filters.
pub fn walk_filters(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    layer(sn, "base", None, &[]);
    sn.update(
        &Info {
            labels: labels(&[("containerd.io/gc.root", "1")]),
            ..sn.stat("base").unwrap()
        },
        &[],
    )
    .unwrap();
    sn.prepare("act", Some("base"), labels(&[("team", "a")]))
        .unwrap();
    sn.view("vw", Some("base"), labels(&[("team", "b")]))
        .unwrap();
    sn.prepare("lone", None, Labels::new()).unwrap();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(env.names(&[]), set(&["act", "base", "lone", "vw"]));
    assert_eq!(env.names(&["kind==committed"]), set(&["base"]));
    assert_eq!(env.names(&["kind==view"]), set(&["vw"]));
    assert_eq!(env.names(&["parent==base"]), set(&["act", "vw"]));
    assert_eq!(env.names(&["parent==base,labels.team==b"]), set(&["vw"]));
    // As in containerd, `!=` holds when the label is absent.
    assert_eq!(env.names(&["labels.team!=a"]), set(&["base", "lone", "vw"]));
    assert_eq!(env.names(&["labels.team~=^[ab]$"]), set(&["act", "vw"]));
    assert_eq!(
        env.names(&["name==lone", "kind==view"]),
        set(&["lone", "vw"])
    );
    assert_eq!(
        env.names(&["labels.\"containerd.io/gc.root\""]),
        set(&["base"])
    );
    assert_eq!(env.names(&["name==nothing"]), set(&[]));
    // Unknown fields are absent (containerd does not reject them); bad syntax is refused.
    assert_eq!(env.names(&["color==red"]), set(&[]));
    expect_code(
        sn.walk(&["name==\"open"], &mut |_| Ok(())),
        Code::InvalidArgument,
    );

    // The callback's error stops the walk and comes back.
    let mut seen = 0;
    let r = sn.walk(&[], &mut |_| {
        seen += 1;
        Err(crate::Error::NotFound { key: "stop".into() })
    });
    expect_code(r, Code::NotFound);
    assert_eq!(seen, 1);
    // The callback may call back in.
    sn.walk(&["kind==active"], &mut |i| sn.remove(&i.name))
        .unwrap();
    assert_eq!(env.names(&[]), set(&["base", "vw"]));
}

/// remove: children protect parents; unknown keys; directories go away.
pub fn remove_rules(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    layer(sn, "L1", None, &[("f", "1")]);
    layer(sn, "L2", Some("L1"), &[]);
    sn.prepare("c", Some("L2"), Labels::new()).unwrap();
    let msg = expect_code(sn.remove("L1"), Code::FailedPrecondition);
    assert!(msg.contains("\"L1\""), "{msg}");
    expect_code(sn.remove("L2"), Code::FailedPrecondition);
    assert_eq!(
        sn.stat("L1").unwrap().kind,
        Kind::Committed,
        "refused remove kept it"
    );
    sn.remove("c").unwrap();
    expect_code(sn.remove("c"), Code::NotFound);
    sn.remove("L2").unwrap();
    sn.remove("L1").unwrap();
    assert!(env.names(&[]).is_empty());
    assert_no_orphans(&env);
    // Keys are reusable after removal.
    sn.prepare("c", None, Labels::new()).unwrap();
}

/// A removal answers before its tree may be deleted: `settle` waits for the deletion, and
/// closing the snapshotter finishes every deletion still queued.
pub fn removed_trees_are_deleted(open: &Opener) {
    let mut env = Env::new(open);
    let files: Vec<(String, &str)> = (0..500).map(|i| (format!("d/f{i}"), "x")).collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    layer(&*env.sn, "big1", None, &files);
    layer(&*env.sn, "big2", None, &files);
    let entries = |env: &Env| -> Vec<String> {
        fs::read_dir(env.root().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    env.sn.remove("big1").unwrap();
    env.sn.settle();
    assert_eq!(entries(&env).len(), 1, "after settle: {:?}", entries(&env));
    env.sn.remove("big2").unwrap();
    env.sn = Box::new(Closed);
    assert!(entries(&env).is_empty(), "after close: {:?}", entries(&env));
}

/// commit refuses views, committed snapshots, unknown keys and taken names.
pub fn commit_rules(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    layer(sn, "L1", None, &[]);
    sn.view("v", Some("L1"), Labels::new()).unwrap();
    let msg = expect_code(sn.commit("C", "v", Labels::new()), Code::FailedPrecondition);
    assert!(msg.contains("\"v\""), "{msg}");
    assert_eq!(sn.stat("v").unwrap().kind, Kind::View);
    expect_code(
        sn.commit("C", "L1", Labels::new()),
        Code::FailedPrecondition,
    );
    expect_code(sn.commit("C", "missing", Labels::new()), Code::NotFound);
    sn.prepare("a", Some("L1"), Labels::new()).unwrap();
    expect_code(sn.commit("L1", "a", Labels::new()), Code::AlreadyExists);
    expect_code(sn.commit("v", "a", Labels::new()), Code::AlreadyExists);
    assert_eq!(
        sn.stat("a").unwrap().kind,
        Kind::Active,
        "failed commit kept the key"
    );
    expect_code(sn.commit("", "a", Labels::new()), Code::InvalidArgument);
    sn.commit("L2", "a", Labels::new()).unwrap();
    assert_eq!(sn.stat("L2").unwrap().parent.as_deref(), Some("L1"));
    // The committed snapshot is a parent like any other.
    expect_code(sn.remove("L1"), Code::FailedPrecondition);
}

/// Key namespace, parents that are missing or not committed, invalid keys.
pub fn key_and_parent_rules(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    layer(sn, "L1", None, &[]);
    sn.prepare("a", None, Labels::new()).unwrap();
    sn.view("v", Some("L1"), Labels::new()).unwrap();
    for key in ["a", "v", "L1"] {
        let msg = expect_code(sn.prepare(key, None, Labels::new()), Code::AlreadyExists);
        assert!(msg.contains(&format!("{key:?}")), "{msg}");
        expect_code(sn.view(key, Some("L1"), Labels::new()), Code::AlreadyExists);
    }
    let msg = expect_code(
        sn.prepare("x", Some("ghost"), Labels::new()),
        Code::NotFound,
    );
    assert!(msg.contains("ghost"), "{msg}");
    expect_code(sn.view("x", Some("ghost"), Labels::new()), Code::NotFound);
    expect_code(
        sn.prepare("x", Some("a"), Labels::new()),
        Code::FailedPrecondition,
    );
    expect_code(
        sn.prepare("x", Some("v"), Labels::new()),
        Code::FailedPrecondition,
    );
    for bad in ["", "nul\0key"] {
        let msg = expect_code(sn.prepare(bad, None, Labels::new()), Code::InvalidArgument);
        assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        expect_code(sn.stat(bad), Code::InvalidArgument);
        expect_code(sn.remove(bad), Code::InvalidArgument);
    }
    expect_code(
        sn.prepare("x", None, labels(&[("", "v")])),
        Code::InvalidArgument,
    );
    expect_code(sn.stat("x"), Code::NotFound);
    assert_eq!(env.names(&[]).len(), 3, "failed calls created nothing");
    assert_no_orphans(&env);
}

/// usage counts the snapshot's own layer; committed usage is stable.
pub fn usage_numbers(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    let m = sn.prepare("a", None, Labels::new()).unwrap();
    let empty = sn.usage("a").unwrap();
    assert!(empty.inodes >= 1, "{empty:?}");
    let up = upper_dir(&m);
    fs::write(up.join("big"), vec![7u8; 1 << 20]).unwrap();
    fs::create_dir(up.join("d")).unwrap();
    fs::write(up.join("d/small"), b"x").unwrap();
    fs::hard_link(up.join("big"), up.join("big-link")).unwrap();
    let u = sn.usage("a").unwrap();
    assert_eq!(
        u.inodes,
        empty.inodes + 3,
        "big (linked twice), d, d/small: {u:?}"
    );
    assert!(u.size >= empty.size + (1 << 20), "{u:?} vs {empty:?}");
    sn.commit("L1", "a", Labels::new()).unwrap();
    assert_eq!(
        sn.usage("L1").unwrap(),
        u,
        "committed usage equals the active's"
    );

    // A child's usage counts only its own layer, not the parent's megabyte... for layered
    // backends; a copying backend's child holds the full copy.
    let m = sn.prepare("b", Some("L1"), Labels::new()).unwrap();
    let b = sn.usage("b").unwrap();
    if m[0].kind == "overlay" {
        assert!(b.size < 1 << 20, "{b:?}");
    }
    expect_code(sn.usage("missing"), Code::NotFound);
}

/// State survives closing and reopening.
pub fn reopen_keeps_state(open: &Opener) {
    let mut env = Env::new(open);
    layer(&*env.sn, "L1", None, &[("f", "data")]);
    let m = env
        .sn
        .prepare("a", Some("L1"), labels(&[("k", "v")]))
        .unwrap();
    let before: Vec<Info> = {
        let mut v = Vec::new();
        env.sn
            .walk(&[], &mut |i| {
                v.push(i);
                Ok(())
            })
            .unwrap();
        v
    };
    env.reopen(open);
    let mut after = Vec::new();
    env.sn
        .walk(&[], &mut |i| {
            after.push(i);
            Ok(())
        })
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(env.sn.mounts("a").unwrap(), m);
    // New ids do not collide with old ones.
    let m2 = env.sn.prepare("b", Some("L1"), Labels::new()).unwrap();
    assert_ne!(upper_dir(&m2), upper_dir(&m));
    assert_no_orphans(&env);
}

/// Removed snapshots leave nothing behind once cleanup ran.
pub fn cleanup_reclaims(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    for i in 0..5 {
        layer(sn, &format!("L{i}"), None, &[("f", "x")]);
    }
    for i in 0..5 {
        sn.remove(&format!("L{i}")).unwrap();
    }
    sn.cleanup().unwrap();
    assert_no_orphans(&env);
    assert!(env.names(&[]).is_empty());
}

/// Many threads preparing, committing and removing at once end in a consistent state.
pub fn concurrent_use(open: &Opener) {
    let env = Env::new(open);
    let sn = &*env.sn;
    layer(sn, "base", None, &[("f", "x")]);
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..10 {
                    let key = format!("t{t}-{i}");
                    sn.prepare(&key, Some("base"), Labels::new()).unwrap();
                    if i % 2 == 0 {
                        sn.commit(&format!("{key}-c"), &key, Labels::new()).unwrap();
                        sn.remove(&format!("{key}-c")).unwrap();
                    } else {
                        sn.remove(&key).unwrap();
                    }
                    // Racing duplicate creation: exactly one wins.
                    let a = sn.prepare("shared", None, Labels::new());
                    if a.is_ok() {
                        sn.remove("shared").unwrap();
                    } else {
                        expect_code(a, Code::AlreadyExists);
                    }
                }
            });
        }
        s.spawn(|| {
            for _ in 0..10 {
                sn.cleanup().unwrap();
            }
        });
    });
    assert_eq!(env.names(&[]), ["base".to_string()].into());
    sn.cleanup().unwrap();
    assert_no_orphans(&env);
}

/// As root: mount a chain, see lower files, write into the upper layer, views are read-only.
pub fn mount_and_use(open: &Opener) {
    if !require_root("snapshot mount test") {
        return;
    }
    let env = Env::new(open);
    let sn = &*env.sn;
    layer(sn, "L1", None, &[("etc/one", "1"), ("shadowed", "old")]);
    layer(
        sn,
        "L2",
        Some("L1"),
        &[("etc/two", "2"), ("shadowed", "new")],
    );
    let mounts = sn.prepare("ctr", Some("L2"), Labels::new()).unwrap();
    let target = tempfile::tempdir().unwrap();
    {
        let g = MountGuard::mount(&mounts, target.path()).expect("mount active");
        let t = g.target();
        assert_eq!(fs::read_to_string(t.join("etc/one")).unwrap(), "1");
        assert_eq!(fs::read_to_string(t.join("etc/two")).unwrap(), "2");
        assert_eq!(fs::read_to_string(t.join("shadowed")).unwrap(), "new");
        fs::write(t.join("written"), "w").unwrap();
        fs::remove_file(t.join("etc/one")).unwrap();
    }
    assert!(
        fs::read_dir(target.path()).unwrap().next().is_none(),
        "unmounted: target empty again"
    );
    let upper = upper_dir(&mounts);
    assert_eq!(fs::read_to_string(upper.join("written")).unwrap(), "w");
    sn.commit("L3", "ctr", Labels::new()).unwrap();

    // A view of the committed chain shows the write and the deletion, and is read-only.
    let v = sn.view("v", Some("L3"), Labels::new()).unwrap();
    {
        let g = MountGuard::mount(&v, target.path()).expect("mount view");
        let t = g.target();
        assert_eq!(fs::read_to_string(t.join("written")).unwrap(), "w");
        assert_eq!(fs::read_to_string(t.join("etc/two")).unwrap(), "2");
        assert_eq!(
            fs::metadata(t.join("etc/one")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let e = fs::write(t.join("nope"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    // The lower layers were not touched.
    let l1 = sn.view("v1", Some("L1"), Labels::new()).unwrap();
    let g = MountGuard::mount(&l1, target.path()).unwrap();
    assert_eq!(fs::read_to_string(g.target().join("etc/one")).unwrap(), "1");
    assert!(!g.target().join("written").exists());
}

/// Runs one check per test function for a backend: `conformance_tests!(opener_expr);`
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@each $open;
            prepare_commit_chain, mount_shapes, stat_update, walk_filters, remove_rules,
            removed_trees_are_deleted, commit_rules, key_and_parent_rules, usage_numbers, reopen_keeps_state,
            cleanup_reclaims, concurrent_use, mount_and_use);
    };
    (@each $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let open = $open;
                $crate::testsuite::$name(&open);
            }
        )*
    };
}
