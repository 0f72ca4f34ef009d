//! Local-store tests: the conformance suite, the on-disk layout, verify, and crash safety.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LocalStore;
use crate::testsuite::{generate, put};
use crate::{Code, ContentStore, Digest, Labels, WriterOpts};

crate::content_store_suite!(|root: &Path| LocalStore::open(root).unwrap());

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn layout_and_read_only_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let d = put(&store, "a/b", b"layout", Labels::new());
    let blob = dir.path().join("blobs/sha256").join(d.hex());
    assert_eq!(store.blob_path(&d), blob);
    assert_eq!(fs::read(&blob).unwrap(), b"layout");
    assert_eq!(
        fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert_eq!(
        fs::read_dir(dir.path().join("ingest")).unwrap().count(),
        0,
        "commit removes the ingest"
    );

    let mut w = store.writer(WriterOpts::new("a/b").total(3)).unwrap();
    w.write_all(b"abc").unwrap();
    let ingest = dir.path().join("ingest").join(Digest::of(b"a/b").hex());
    assert_eq!(fs::read(ingest.join("ref")).unwrap(), b"a/b");
    assert_eq!(fs::read(ingest.join("total")).unwrap(), b"3");
    assert_eq!(fs::read(ingest.join("data")).unwrap(), b"abc");
    assert!(ingest.join("startedat").exists());
}

#[test]
fn labels_and_ingests_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let d = {
        let store = LocalStore::open(dir.path()).unwrap();
        let d = put(&store, "r", b"durable", labels(&[("a", "1")]));
        let mut info = store.info(&d).unwrap();
        info.labels.insert("b".into(), "2".into());
        store.update(&info, &["labels.b"]).unwrap();
        let mut w = store.writer(WriterOpts::new("pending").total(10)).unwrap();
        w.write_all(b"12345").unwrap();
        d
    };
    let store = LocalStore::open(dir.path()).unwrap();
    assert_eq!(
        store.info(&d).unwrap().labels,
        labels(&[("a", "1"), ("b", "2")])
    );
    let st = store.status("pending").unwrap();
    assert_eq!((st.offset, st.total), (5, Some(10)));
}

#[test]
fn open_drops_labels_of_missing_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = {
        let store = LocalStore::open(dir.path()).unwrap();
        put(&store, "r", b"gone", labels(&[("a", "1")]))
    };
    // As if a blob vanished behind our back (or a delete crashed halfway in an older order).
    fs::remove_file(dir.path().join("blobs/sha256").join(d.hex())).unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    assert_eq!(store.inner.labels.all().unwrap().len(), 0);
    put(&store, "r", b"gone", Labels::new());
    assert!(
        store.info(&d).unwrap().labels.is_empty(),
        "stale labels must not come back"
    );
}

#[test]
fn verify_quarantines_corrupt_and_stray_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let good = put(&store, "good", &generate(7, 70_000), labels(&[("a", "1")]));
    let bad_data = generate(8, 60_000);
    let bad = put(&store, "bad", &bad_data, labels(&[("b", "2")]));
    // Power loss after a rename but before the data reached the disk: right name, wrong bytes.
    let bad_path = store.blob_path(&bad);
    fs::set_permissions(&bad_path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut torn = bad_data.clone();
    torn[30_000..].fill(0);
    fs::write(&bad_path, &torn).unwrap();
    fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"stray").unwrap();

    let report = store.verify().unwrap();
    assert_eq!(report.ok, 1);
    assert_eq!(report.quarantined.len(), 2);
    let q = report
        .quarantined
        .iter()
        .find(|q| q.name == bad.hex())
        .expect("bad blob reported");
    assert_eq!(q.actual, Some(Digest::of(&torn)));
    assert!(q.reason.contains(&bad.to_string()), "{}", q.reason);
    assert!(q.moved_to.starts_with(dir.path().join("quarantine")));
    assert_eq!(fs::read(&q.moved_to).unwrap(), torn, "the evidence is kept");
    assert!(
        report
            .quarantined
            .iter()
            .any(|q| q.name == "not-a-digest" && q.actual.is_none())
    );

    assert_eq!(store.info(&bad).unwrap_err().code(), Code::NotFound);
    assert_eq!(store.info(&good).unwrap().labels, labels(&[("a", "1")]));
    assert!(
        store.inner.labels.get(&bad.hex()).unwrap().0.is_empty(),
        "labels of the bad blob are dropped"
    );
    // The content can be stored again (a re-pull), and verify is then clean.
    put(&store, "again", &bad_data, Labels::new());
    let report = store.verify().unwrap();
    assert_eq!((report.ok, report.quarantined.len()), (2, 0));
}

/// A blob damaged on disk is not served as good: read from its start to its end, the last
/// read fails (InvalidData, the damage named) and the probe says what it hashed to; a read
/// from elsewhere cannot tell. `quarantine_blob` then takes it out of the store.
#[test]
fn reading_a_damaged_blob_to_its_end_fails_and_it_can_be_quarantined() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let data = generate(9, 300_000);
    let d = put(&store, "b", &data, Labels::new());
    let all = |store: &LocalStore| {
        let mut r = crate::BlobReader::new(store.reader_at(&d).unwrap(), 0).unwrap();
        let probe = r.probe();
        let mut out = Vec::new();
        (r.read_to_end(&mut out), probe)
    };
    let (ok, probe) = all(&store);
    assert_eq!(ok.unwrap(), data.len());
    assert_eq!(probe.damaged(), None);

    let path = store.blob_path(&d);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bad = data.clone();
    bad[123_456] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    let (err, probe) = all(&store);
    let err = err.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    assert_eq!(probe.damaged(), Some(Digest::of(&bad)));
    // Not from the start: nothing to compare with.
    let mut tail = crate::BlobReader::new(store.reader_at(&d).unwrap(), 1000).unwrap();
    let mut out = Vec::new();
    assert_eq!(tail.read_to_end(&mut out).unwrap(), bad.len() - 1000);

    let q = store
        .quarantine_blob(&d, Some(Digest::of(&bad)), "read back wrong".into())
        .unwrap();
    assert_eq!(fs::read(&q.moved_to).unwrap(), bad);
    assert_eq!(store.info(&d).unwrap_err().code(), Code::NotFound);
    put(&store, "again", &data, Labels::new());
    let (ok, probe) = all(&store);
    assert_eq!((ok.unwrap(), probe.damaged()), (data.len(), None));
}

#[test]
fn resume_does_not_write_into_a_committed_blob() {
    // A commit that fell back to link()+unlink() and crashed between them leaves the ingest's
    // data hard-linked to the blob. Resuming must not append to the blob.
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut w = store.writer(WriterOpts::new("linked")).unwrap();
    w.write_all(b"committed bytes").unwrap();
    drop(w);
    let data = dir
        .path()
        .join("ingest")
        .join(Digest::of(b"linked").hex())
        .join("data");
    let d = Digest::of(b"committed bytes");
    fs::hard_link(&data, store.blob_path(&d)).unwrap();

    let mut w = store.writer(WriterOpts::new("linked")).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(b"new").unwrap();
    assert_eq!(fs::read(store.blob_path(&d)).unwrap(), b"committed bytes");
    assert_eq!(store.verify().unwrap().quarantined.len(), 0);
}

/// What a power loss can leave of an ingest's unsynced files (see the module doc): each is
/// damage, the ingest reads as not there, and the next writer of its ref starts it over.
#[test]
fn an_ingest_damaged_by_a_power_loss_is_started_over() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 6] = [
        ("empty ref", |d| fs::write(d.join("ref"), b"").unwrap()),
        ("torn ref", |d| fs::write(d.join("ref"), b"dam").unwrap()),
        ("empty startedat", |d| {
            fs::write(d.join("startedat"), b"").unwrap()
        }),
        ("no startedat", |d| {
            fs::remove_file(d.join("startedat")).unwrap()
        }),
        ("empty total", |d| fs::write(d.join("total"), b"").unwrap()),
        ("torn expected", |d| {
            fs::write(d.join("expected"), b"sha256:12").unwrap()
        }),
    ];
    let data = b"bytes of a damaged ingest";
    let digest = Digest::of(data);
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let opts = || {
            WriterOpts::new("damaged")
                .total(data.len() as u64)
                .expected(digest)
        };
        let mut w = store.writer(opts()).unwrap();
        w.write_all(&data[..5]).unwrap();
        drop(w);
        damage(&dir.path().join("ingest").join(Digest::of(b"damaged").hex()));

        let e = store.status("damaged").unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{what}: status answers {e}");
        assert!(
            store.list_statuses(&[]).unwrap().is_empty(),
            "{what}: listed"
        );
        let mut w = store.writer(opts()).unwrap();
        assert_eq!(w.offset(), 0, "{what}: not started over");
        w.write_all(data).unwrap();
        assert_eq!(
            w.commit(None, None, Labels::new()).unwrap(),
            digest,
            "{what}"
        );
        assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), data, "{what}");
    }
}

#[test]
fn concurrent_writers_of_one_ref_get_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let results: Vec<Code> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                s.spawn(move || match store.writer(WriterOpts::new("race")) {
                    // Hold it until every thread has tried.
                    Ok(w) => (Some(w), None),
                    Err(e) => (None, Some(e.code())),
                })
            })
            .collect();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = outcomes.iter().filter(|(w, _)| w.is_some()).count();
        assert!(winners >= 1);
        outcomes.into_iter().filter_map(|(_, c)| c).collect()
    });
    assert!(
        results.iter().all(|c| *c == Code::Unavailable),
        "{results:?}"
    );
}

/// A client closes a writer and at once opens the same ref again, while the previous writer is
/// still being dropped (here: on another thread, racing the open). The open must wait for the
/// release instead of answering Unavailable, every time.
#[test]
fn reopening_a_ref_being_released_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut w = store.writer(WriterOpts::new("reopen")).unwrap();
    w.write_all(b"abc").unwrap();
    for round in 0..200 {
        let dropper = std::thread::spawn(move || drop(w));
        w = store
            .writer(WriterOpts::new("reopen"))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        dropper.join().unwrap();
        assert_eq!(w.offset(), 3, "round {round}: the ingest resumes");
    }
}

/// A ref that stays held is still refused, after the retries (1 + 2 + … + 256 ms).
#[test]
fn a_held_ref_is_refused_after_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let _held = store.writer(WriterOpts::new("held")).unwrap();
    let t0 = Instant::now();
    let e = store.writer(WriterOpts::new("held")).err().unwrap();
    let waited = t0.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(
        waited >= Duration::from_millis(500),
        "gave up after {waited:?}, before retrying"
    );
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    let e = store.abort("held").unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
}

// ---- crash tests: a child process (this test binary, re-executed) is killed mid-operation ----

const CHILD_ROOT: &str = "CONTENT_CRASH_CHILD_ROOT";
const CHILD_MODE: &str = "CONTENT_CRASH_CHILD_MODE";
const CRASH_REF: &str = "crash/ref";
// Not multiples of the chunk size, so the resume offset is an arbitrary byte position.
const CRASH_LEN: usize = (2 << 20) + 12_345;
const CRASH_PART: usize = (1 << 20) + 777;

/// Kills and reaps the child on drop, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(root: &Path, mode: &str, failpoint: Option<&str>) -> ChildGuard {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "local::tests::crash_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ROOT, root)
    .env(CHILD_MODE, mode)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    match failpoint {
        Some(f) => cmd.env("CORRAL_CONTENT_FAILPOINT", f),
        None => cmd.env_remove("CORRAL_CONTENT_FAILPOINT"),
    };
    ChildGuard(cmd.spawn().expect("spawn child"))
}

/// Waits (polling, with a deadline) until `ready` exists or the child exits.
fn wait_ready(child: &mut ChildGuard, ready: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("child exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "child not ready within 60s");
        std::thread::yield_now();
    }
}

fn wait_killed(mut child: ChildGuard) {
    use std::os::unix::process::ExitStatusExt;
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child must die by SIGKILL, got {status}"
    );
}

/// The child side of the crash tests; does nothing unless started by one of them.
#[test]
#[ignore = "helper process for the crash tests"]
fn crash_child() {
    let (Some(root), Some(mode)) = (std::env::var_os(CHILD_ROOT), std::env::var(CHILD_MODE).ok())
    else {
        return;
    };
    let root = Path::new(&root);
    let store = LocalStore::open(root).unwrap();
    let data = generate(42, CRASH_LEN);
    let mut w = store
        .writer(WriterOpts::new(CRASH_REF).total(CRASH_LEN as u64))
        .unwrap();
    match mode.as_str() {
        "partial" => {
            for chunk in data[..CRASH_PART].chunks(1 << 20) {
                w.write_all(chunk).unwrap();
            }
            fs::write(root.join("ready"), b"").unwrap();
            // Hold the writer (and the ref's lock) until the parent kills us.
            loop {
                std::thread::park();
            }
        }
        "commit" => {
            w.write_all(&data).unwrap();
            // The failpoint SIGKILLs us inside commit.
            let r = w.commit(None, Some(&Digest::of(&data)), labels(&[("a", "1")]));
            panic!("commit returned {r:?} instead of being killed");
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn crash_mid_ingest_resumes_from_durable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(dir.path(), "partial", None);
    wait_ready(&mut child, &dir.path().join("ready"));
    child.0.kill().unwrap();
    wait_killed(child);

    let store = LocalStore::open(dir.path()).unwrap();
    let data = generate(42, CRASH_LEN);
    let st = store.status(CRASH_REF).unwrap();
    assert_eq!(
        (st.offset, st.total),
        (CRASH_PART as u64, Some(CRASH_LEN as u64))
    );
    // The dead writer's lock is gone with it.
    let mut w = store.writer(WriterOpts::new(CRASH_REF)).unwrap();
    assert_eq!(w.offset(), CRASH_PART as u64);
    assert_eq!(w.digest(), Digest::of(&data[..CRASH_PART]));
    w.write_at(CRASH_PART as u64, &data[CRASH_PART..]).unwrap();
    let d = w
        .commit(None, Some(&Digest::of(&data)), Labels::new())
        .unwrap();
    assert_eq!(fs::read(store.blob_path(&d)).unwrap(), data);
    assert_eq!(store.verify().unwrap().quarantined.len(), 0);
}

#[test]
fn crash_before_commit_rename_leaves_no_blob_and_a_resumable_ingest() {
    let dir = tempfile::tempdir().unwrap();
    wait_killed(spawn_child(
        dir.path(),
        "commit",
        Some("commit-before-rename"),
    ));

    let store = LocalStore::open(dir.path()).unwrap();
    let data = generate(42, CRASH_LEN);
    let d = Digest::of(&data);
    assert_eq!(
        store.info(&d).unwrap_err().code(),
        Code::NotFound,
        "no blob before the rename"
    );
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let st = store.status(CRASH_REF).unwrap();
    assert_eq!(st.offset, CRASH_LEN as u64);
    // Resumable: the data is all there, so commit straight away (the file was already 0444).
    let mut w = store.writer(WriterOpts::new(CRASH_REF)).unwrap();
    assert_eq!(w.digest(), d);
    w.commit(None, None, labels(&[("b", "2")])).unwrap();
    assert_eq!(fs::read(store.blob_path(&d)).unwrap(), data);
    assert_eq!(store.info(&d).unwrap().labels, labels(&[("b", "2")]));
}

#[test]
fn crash_before_commit_rename_is_abortable() {
    let dir = tempfile::tempdir().unwrap();
    wait_killed(spawn_child(
        dir.path(),
        "commit",
        Some("commit-before-rename"),
    ));
    let store = LocalStore::open(dir.path()).unwrap();
    store.abort(CRASH_REF).unwrap();
    assert_eq!(store.status(CRASH_REF).unwrap_err().code(), Code::NotFound);
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn crash_after_commit_rename_leaves_a_correct_blob() {
    let dir = tempfile::tempdir().unwrap();
    wait_killed(spawn_child(
        dir.path(),
        "commit",
        Some("commit-after-rename"),
    ));

    let store = LocalStore::open(dir.path()).unwrap();
    let data = generate(42, CRASH_LEN);
    let d = Digest::of(&data);
    assert_eq!(store.info(&d).unwrap().size, CRASH_LEN as u64);
    assert_eq!(fs::read(store.blob_path(&d)).unwrap(), data);
    assert_eq!(store.verify().unwrap().quarantined.len(), 0);
    // The ingest outlived the commit but holds no data: a client retrying gets AlreadyExists,
    // and the leftover can be aborted.
    assert_eq!(store.status(CRASH_REF).unwrap().offset, 0);
    let err = store
        .writer(WriterOpts::new(CRASH_REF).expected(d))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    store.abort(CRASH_REF).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
}
