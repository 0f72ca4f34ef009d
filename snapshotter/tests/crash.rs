//! Crash tests: a child process (this test binary re-executed, running `crash_child`) is
//! killed with SIGKILL in the middle of prepare or remove, at a failpoint cue or during a
//! copy; reopening the root must then reconcile to a consistent state: no orphan
//! directories, no records without directories, committed parents intact and usable.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use snapshotter::testsuite::{expect_code, labels, layer, upper_dir};
use snapshotter::{
    Code, Failpoint, Kind, Labels, NativeSnapshotter, Options, OverlaySnapshotter, Snapshotter,
};

const ENV_ROOT: &str = "CORRAL_SNAP_CRASH_ROOT";
const ENV_BACKEND: &str = "CORRAL_SNAP_CRASH_BACKEND";
const ENV_OP: &str = "CORRAL_SNAP_CRASH_OP";
const ENV_POINT: &str = "CORRAL_SNAP_CRASH_POINT";
const DEADLINE: Duration = Duration::from_secs(60);

fn open(backend: &str, root: &Path, failpoint: Option<Failpoint>) -> Box<dyn Snapshotter> {
    let opts = Options {
        failpoint,
        ..Options::default()
    };
    match backend {
        "overlay" => Box::new(OverlaySnapshotter::open_with(root, opts).unwrap()),
        "native" => Box::new(NativeSnapshotter::open_with(root, opts).unwrap()),
        b => panic!("unknown backend {b}"),
    }
}

/// The child side: runs one operation and stops dead at the failpoint, announcing it.
#[test]
#[ignore = "child process of the crash tests; runs only when they re-execute this binary"]
fn crash_child() {
    let Ok(root) = std::env::var(ENV_ROOT) else {
        return;
    };
    let backend = std::env::var(ENV_BACKEND).unwrap();
    let op = std::env::var(ENV_OP).unwrap();
    let point = std::env::var(ENV_POINT).unwrap_or_default();
    let snapshots = Path::new(&root).join("snapshots");
    let fp: Failpoint = Arc::new(move |p: &str| {
        if p != point {
            return;
        }
        if p == "remove:renamed" {
            // Simulate dying halfway through the recursive delete.
            for e in fs::read_dir(&snapshots).unwrap() {
                let path = e.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("removed-")
                {
                    let files = walk_files(&path);
                    for f in files.iter().take(files.len() / 2) {
                        fs::remove_file(f).unwrap();
                    }
                }
            }
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "CUE {p}").unwrap();
        out.flush().unwrap();
        // Wait here for SIGKILL.
        loop {
            std::thread::park();
        }
    });
    let sn = open(&backend, Path::new(&root), Some(fp));
    match op.as_str() {
        "prepare" => drop(sn.prepare("victim", Some("base"), Labels::new()).unwrap()),
        "remove" => sn.remove("doomed").unwrap(),
        op => panic!("unknown op {op}"),
    }
    println!("DONE");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Kills and reaps the child when dropped, also when the test fails.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(
    backend: &str,
    root: &Path,
    op: &str,
    point: &str,
) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--include-ignored", "--nocapture"])
        .env(ENV_ROOT, root)
        .env(ENV_BACKEND, backend)
        .env(ENV_OP, op)
        .env(ENV_POINT, point)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), rx)
}

/// Waits for a line starting with `prefix`; panics at the deadline or when the child's
/// output ends first.
fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(e) => panic!("child never printed {prefix:?}: {e:?}"),
        }
    }
}

/// A root holding `base` (committed, two files) and `doomed` (committed on base).
fn setup(backend: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("snapcrash")
        .tempdir()
        .unwrap();
    let sn = open(backend, dir.path(), None);
    layer(&*sn, "base", None, &[("etc/base", "B"), ("bin/tool", "T")]);
    layer(
        &*sn,
        "doomed",
        Some("base"),
        &[("doomed-file", "D"), ("d/x", "x"), ("d/y", "y")],
    );
    sn.update(
        &snapshotter::Info {
            labels: labels(&[("keep", "me")]),
            ..sn.stat("base").unwrap()
        },
        &[],
    )
    .unwrap();
    dir
}

/// What must hold after any crash and reopen.
fn assert_consistent(sn: &dyn Snapshotter, root: &Path) {
    let base = sn.stat("base").expect("committed parent survives");
    assert_eq!(base.kind, Kind::Committed);
    assert_eq!(base.labels, labels(&[("keep", "me")]));
    // The parent's files are intact (read through a view's mount source, or its upper dir).
    let v = sn.view("check-view", Some("base"), Labels::new()).unwrap();
    let dir = PathBuf::from(&v[0].source);
    assert_eq!(fs::read_to_string(dir.join("etc/base")).unwrap(), "B");
    assert_eq!(fs::read_to_string(dir.join("bin/tool")).unwrap(), "T");
    sn.remove("check-view").unwrap();
    sn.settle();

    // Every record has its directory and every directory its record.
    let snaps = root.join("snapshots");
    let mut records = 0;
    sn.walk(&[], &mut |_| {
        records += 1;
        Ok(())
    })
    .unwrap();
    let on_disk: Vec<String> = fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        on_disk.len(),
        records,
        "dirs {on_disk:?}, {records} records"
    );
    assert!(
        on_disk.iter().all(|n| n.parse::<u64>().is_ok()),
        "leftovers: {on_disk:?}"
    );

    // A new child of base works, and writes land in it.
    let m = sn.prepare("after", Some("base"), Labels::new()).unwrap();
    fs::write(upper_dir(&m).join("new"), "n").unwrap();
    sn.commit("after-c", "after", Labels::new()).unwrap();
    sn.remove("after-c").unwrap();
}

/// Removes everything, proving the children index was left right (base is removable only
/// once its children are gone).
fn assert_teardown(sn: &dyn Snapshotter) {
    for k in ["victim", "doomed"] {
        match sn.remove(k) {
            Ok(()) => {}
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e}"),
        }
    }
    sn.remove("base").unwrap();
}

fn crash_at(op: &str, point: &str, check: impl Fn(&dyn Snapshotter)) {
    for backend in ["overlay", "native"] {
        let dir = setup(backend);
        {
            let (mut child, rx) = spawn_child(backend, dir.path(), op, point);
            let cue = wait_line(&rx, "CUE ");
            assert_eq!(cue, format!("CUE {point}"));
            child.0.kill().unwrap(); // SIGKILL
            let status = child.0.wait().unwrap();
            assert!(!status.success(), "{backend}: child was killed: {status:?}");
        }
        let sn = open(backend, dir.path(), None);
        check(&*sn);
        assert_consistent(&*sn, dir.path());
        assert_teardown(&*sn);
    }
}

#[test]
fn killed_after_populate_before_rename() {
    crash_at("prepare", "prepare:populated", |sn| {
        expect_code(sn.stat("victim"), Code::NotFound);
    });
}

#[test]
fn killed_after_rename_before_record() {
    crash_at("prepare", "prepare:renamed", |sn| {
        expect_code(sn.stat("victim"), Code::NotFound);
        // The key is free again.
        sn.prepare("victim", Some("base"), Labels::new()).unwrap();
    });
}

#[test]
fn killed_after_prepare_returned() {
    crash_at("prepare", "prepare:done", |sn| {
        let v = sn.stat("victim").expect("completed prepare is durable");
        assert_eq!((v.kind, v.parent.as_deref()), (Kind::Active, Some("base")));
        assert_eq!(sn.mounts("victim").unwrap().len(), 1);
        expect_code(sn.remove("base"), Code::FailedPrecondition);
    });
}

#[test]
fn killed_after_unlink_before_rename() {
    crash_at("remove", "remove:unlinked", |sn| {
        expect_code(sn.stat("doomed"), Code::NotFound);
    });
}

#[test]
fn killed_halfway_through_delete() {
    crash_at("remove", "remove:renamed", |sn| {
        expect_code(sn.stat("doomed"), Code::NotFound);
    });
}

/// No failpoint: SIGKILL lands wherever the native copy happens to be.
#[test]
fn killed_during_native_copy() {
    let dir = tempfile::Builder::new()
        .prefix("snapcrash")
        .tempdir()
        .unwrap();
    {
        let sn = open("native", dir.path(), None);
        let mut files: Vec<(String, String)> = vec![
            ("etc/base".into(), "B".into()),
            ("bin/tool".into(), "T".into()),
        ];
        for i in 0..500 {
            files.push((format!("many/{}/{i}", i % 10), "x".repeat(i % 200)));
        }
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        layer(&*sn, "base", None, &refs);
        sn.update(
            &snapshotter::Info {
                labels: labels(&[("keep", "me")]),
                ..sn.stat("base").unwrap()
            },
            &[],
        )
        .unwrap();
    }
    let snaps = dir.path().join("snapshots");
    let (mut child, rx) = spawn_child("native", dir.path(), "prepare", "none");
    // Poll until the copy is under way (or the child is done), then kill.
    let end = Instant::now() + DEADLINE;
    let mut copying = false;
    while Instant::now() < end {
        if let Ok(line) = rx.try_recv()
            && line == "DONE"
        {
            break;
        }
        let in_progress = fs::read_dir(&snaps).unwrap().any(|e| {
            let p = e.unwrap().path();
            p.file_name().unwrap().to_string_lossy().starts_with("new-")
                && fs::read_dir(&p)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
        });
        if in_progress {
            copying = true;
            break;
        }
        std::thread::yield_now();
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    drop(child);
    eprintln!(
        "killed {} the copy",
        if copying { "during" } else { "after" }
    );
    let sn = open("native", dir.path(), None);
    match sn.stat("victim") {
        // Finished before the kill: the whole tree is there.
        Ok(_) => {
            let m = sn.mounts("victim").unwrap();
            assert_eq!(walk_files(&upper_dir(&m)).len(), 502);
        }
        Err(e) => assert_eq!(e.code(), Code::NotFound, "{e}"),
    }
    assert_consistent(&*sn, dir.path());
    assert_teardown(&*sn);
}
