//! The conformance suite every [`ContentStore`] backend runs (as containerd's
//! `core/content/testsuite`). Each case gets a fresh store in a private temporary root.
//!
//! ```ignore
//! content::content_store_suite!(|root: &std::path::Path| content::LocalStore::open(root).unwrap());
//! ```
//! expands to one `#[test]` per case in the calling module.

use std::path::Path;

use crate::{Code, ContentStore, Digest, Error, Info, Labels, WriterOpts};

/// Expands to one `#[test]` per conformance case, each building its store with `$ctor`
/// (`Fn(&Path) -> impl ContentStore`).
#[macro_export]
macro_rules! content_store_suite {
    ($ctor:expr) => {
        $crate::content_store_suite!(@cases $ctor;
            info_reports_size_times_and_labels, info_of_missing_blob_is_not_found,
            update_labels, update_rejects_bad_input, walk_with_filters, walk_rejects_bad_filters,
            walk_stops_on_callback_error, delete_removes_blob_and_labels, read_at_offsets,
            writer_resumes_at_offset, one_writer_per_ref, status_and_list_statuses, abort_ingest,
            commit_wrong_size_stores_nothing, commit_wrong_digest_stores_nothing,
            commit_existing_content_is_already_exists, write_at_wrong_offset_is_out_of_range,
            truncate_restarts_ingest, refs_are_free_form, writer_is_closed_after_commit,
            writer_records_total_and_expected, empty_blob, verify_clean_store,
        );
    };
    (@cases $ctor:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testsuite::run($ctor, $crate::testsuite::$case);
            }
        )*
    };
}

/// Runs one case against a store built by `ctor` in a fresh temporary directory.
pub fn run<S: ContentStore + 'static>(ctor: impl Fn(&Path) -> S, case: fn(&dyn ContentStore)) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let store = ctor(dir.path());
    case(&store);
}

/// Deterministic pseudo-random bytes (xorshift), so that digests differ per seed and offset.
pub fn generate(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Commits `data` under `reference` and returns its digest.
pub fn put(store: &dyn ContentStore, reference: &str, data: &[u8], l: Labels) -> Digest {
    let mut w = store
        .writer(WriterOpts::new(reference))
        .expect("open writer");
    for chunk in data.chunks(7 * 1024) {
        w.write_all(chunk).expect("write");
    }
    w.commit(Some(data.len() as u64), Some(&Digest::of(data)), l)
        .expect("commit")
}

fn read_all(store: &dyn ContentStore, d: &Digest) -> Vec<u8> {
    let r = store.reader_at(d).expect("reader");
    let mut out = vec![0u8; r.size() as usize];
    let n = r.read_at(&mut out, 0).expect("read");
    assert_eq!(n, out.len(), "short read of {d}");
    out
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    r.expect_err("expected an error").code()
}

fn walk_digests(store: &dyn ContentStore, filters: &[&str]) -> Vec<Digest> {
    let mut out = Vec::new();
    store
        .walk(filters, &mut |i: &Info| {
            out.push(i.digest);
            Ok(())
        })
        .expect("walk");
    out.sort();
    out
}

fn assert_nothing_stored(store: &dyn ContentStore, d: &Digest) {
    assert_eq!(
        code(store.info(d)),
        Code::NotFound,
        "{d} must not be stored"
    );
    assert!(
        walk_digests(store, &[]).is_empty(),
        "nothing must be stored"
    );
}

pub fn info_reports_size_times_and_labels(store: &dyn ContentStore) {
    let data = generate(1, 10_000);
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
    let d = put(store, "r", &data, labels(&[("a", "1")]));
    let info = store.info(&d).unwrap();
    assert_eq!(info.digest, d);
    assert_eq!(info.size, 10_000);
    assert_eq!(info.labels, labels(&[("a", "1")]));
    assert!(
        info.created_at >= before,
        "created_at {:?} before the commit",
        info.created_at
    );
    assert!(info.updated_at >= info.created_at);
    assert_eq!(read_all(store, &d), data);
}

pub fn info_of_missing_blob_is_not_found(store: &dyn ContentStore) {
    let d = Digest::of(b"never stored");
    let err = store.info(&d).unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.to_string().contains(&d.to_string()),
        "{err} names the digest"
    );
    assert_eq!(code(store.reader_at(&d).map(|_| ())), Code::NotFound);
    assert_eq!(code(store.delete(&d)), Code::NotFound);
}

pub fn update_labels(store: &dyn ContentStore) {
    let d = put(store, "r", b"labelled", labels(&[("a", "1"), ("b", "2")]));
    let mut info = store.info(&d).unwrap();
    info.labels = labels(&[("b", "20"), ("c", "3")]);
    // labels.<k>: only the named keys change; a key absent from info.labels is removed.
    let got = store.update(&info, &["labels.b", "labels.a"]).unwrap();
    assert_eq!(got.labels, labels(&[("b", "20")]));
    assert_eq!(store.info(&d).unwrap().labels, labels(&[("b", "20")]));
    assert!(got.updated_at >= got.created_at);
    // "labels" (or no path): replace all.
    let got = store.update(&info, &["labels"]).unwrap();
    assert_eq!(got.labels, labels(&[("b", "20"), ("c", "3")]));
    info.labels = labels(&[("z", "26")]);
    store.update(&info, &[]).unwrap();
    assert_eq!(store.info(&d).unwrap().labels, labels(&[("z", "26")]));
    info.labels.clear();
    store.update(&info, &[]).unwrap();
    assert!(store.info(&d).unwrap().labels.is_empty());
}

pub fn update_rejects_bad_input(store: &dyn ContentStore) {
    let d = put(store, "r", b"x", labels(&[("a", "1")]));
    let mut info = store.info(&d).unwrap();
    for path in ["size", "digest", "labelsx", "labels.", "created_at"] {
        let err = store.update(&info, &[path]).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path}");
        assert!(err.to_string().contains(path), "{err} names {path}");
    }
    info.labels = labels(&[("big", &"v".repeat(crate::MAX_LABEL_SIZE))]);
    assert_eq!(code(store.update(&info, &[])), Code::InvalidArgument);
    assert_eq!(
        store.info(&d).unwrap().labels,
        labels(&[("a", "1")]),
        "a rejected update changes nothing"
    );
    info.digest = Digest::of(b"missing");
    info.labels.clear();
    assert_eq!(code(store.update(&info, &[])), Code::NotFound);
}

pub fn walk_with_filters(store: &dyn ContentStore) {
    let a = put(
        store,
        "a",
        b"aaaa",
        labels(&[("kind", "layer"), ("containerd.io/gc.root", "1")]),
    );
    let b = put(store, "b", b"bb", labels(&[("kind", "config")]));
    let c = put(store, "c", b"c", Labels::new());
    let mut all = vec![a, b, c];
    all.sort();
    let sorted = |mut v: Vec<Digest>| {
        v.sort();
        v
    };
    assert_eq!(walk_digests(store, &[]), all);
    assert_eq!(walk_digests(store, &[&format!("digest=={a}")]), vec![a]);
    assert_eq!(
        walk_digests(store, &[&format!("digest!={a}")]),
        sorted(vec![b, c])
    );
    assert_eq!(walk_digests(store, &["size==2"]), vec![b]);
    assert_eq!(walk_digests(store, &["labels.kind==layer"]), vec![a]);
    assert_eq!(
        walk_digests(store, &["labels.kind!=layer"]),
        sorted(vec![b, c])
    );
    assert_eq!(walk_digests(store, &["labels.kind"]), sorted(vec![a, b]));
    assert_eq!(
        walk_digests(store, &[r#"labels."containerd.io/gc.root""#]),
        vec![a]
    );
    assert_eq!(
        walk_digests(store, &["labels.kind==layer,size==2"]),
        Vec::<Digest>::new()
    );
    assert_eq!(
        walk_digests(store, &["labels.kind==config,size==2"]),
        vec![b]
    );
    assert_eq!(
        walk_digests(store, &["labels.kind==layer", "size==1"]),
        sorted(vec![a, c])
    );
}

pub fn walk_rejects_bad_filters(store: &dyn ContentStore) {
    put(store, "a", b"a", Labels::new());
    for f in [
        "labels.kind~=(unclosed",
        "==x",
        "labels.a==\"unterminated",
        "a b",
    ] {
        let err = store.walk(&[f], &mut |_| Ok(())).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{f}");
        assert!(
            err.to_string().contains(&format!("{f:?}")),
            "{err} names {f:?}"
        );
    }
}

pub fn walk_stops_on_callback_error(store: &dyn ContentStore) {
    put(store, "a", b"a", Labels::new());
    put(store, "b", b"b", Labels::new());
    let mut calls = 0;
    let err = store
        .walk(&[], &mut |_| {
            calls += 1;
            Err(Error::InvalidArgument("stop".into()))
        })
        .unwrap_err();
    assert_eq!(calls, 1);
    assert!(err.to_string().contains("stop"));
}

pub fn delete_removes_blob_and_labels(store: &dyn ContentStore) {
    let d = put(store, "r", b"to delete", labels(&[("a", "1")]));
    let keep = put(store, "k", b"to keep", Labels::new());
    let reader = store.reader_at(&d).unwrap();
    store.delete(&d).unwrap();
    assert_eq!(code(store.info(&d)), Code::NotFound);
    assert_eq!(code(store.delete(&d)), Code::NotFound);
    assert_eq!(walk_digests(store, &[]), vec![keep]);
    // An open reader still sees the bytes it opened.
    let mut buf = [0u8; 9];
    assert_eq!(reader.read_at(&mut buf, 0).unwrap(), 9);
    assert_eq!(&buf, b"to delete");
    // Labels went with the blob: the same bytes committed again start unlabelled.
    put(store, "r2", b"to delete", Labels::new());
    assert!(store.info(&d).unwrap().labels.is_empty());
}

pub fn read_at_offsets(store: &dyn ContentStore) {
    let data = generate(2, 300_000);
    let d = put(store, "r", &data, Labels::new());
    let r = store.reader_at(&d).unwrap();
    assert_eq!(r.size(), 300_000);
    let mut buf = vec![0u8; 4096];
    for off in [0u64, 1, 4095, 123_456, 299_000] {
        let n = r.read_at(&mut buf, off).unwrap();
        let want = 4096.min(300_000 - off as usize);
        assert_eq!(n, want, "at {off}");
        assert_eq!(&buf[..n], &data[off as usize..off as usize + n], "at {off}");
    }
    assert_eq!(
        r.read_at(&mut buf, 300_000).unwrap(),
        0,
        "reading at the end gives 0 bytes"
    );
    let err = r.read_at(&mut buf, 300_001).unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.to_string().contains("300001") && err.to_string().contains("300000"),
        "{err}"
    );
    assert_eq!(code(r.read_at(&mut buf, u64::MAX)), Code::OutOfRange);
    // Streaming from an offset.
    let mut rest = Vec::new();
    let mut s = crate::BlobReader::new(store.reader_at(&d).unwrap(), 250_000).unwrap();
    std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
    assert_eq!(rest, &data[250_000..]);
    let past = crate::BlobReader::new(store.reader_at(&d).unwrap(), 300_001);
    assert_eq!(code(past.map(|_| ())), Code::OutOfRange);
}

pub fn writer_resumes_at_offset(store: &dyn ContentStore) {
    let data = generate(3, 100_000);
    let mut w = store
        .writer(WriterOpts::new("resume").total(100_000))
        .unwrap();
    assert_eq!(w.offset(), 0);
    w.write_at(0, &data[..40_000]).unwrap();
    let digest_so_far = w.digest();
    assert_eq!(digest_so_far, Digest::of(&data[..40_000]));
    drop(w);
    assert_eq!(store.status("resume").unwrap().offset, 40_000);
    let mut w = store.writer(WriterOpts::new("resume")).unwrap();
    assert_eq!(w.offset(), 40_000);
    assert_eq!(
        w.digest(),
        digest_so_far,
        "resume re-hashes the data already there"
    );
    assert_eq!(w.write_at(40_000, &data[40_000..]).unwrap(), 100_000);
    let d = w
        .commit(None, Some(&Digest::of(&data)), Labels::new())
        .unwrap();
    assert_eq!(read_all(store, &d), data);
    assert_eq!(
        code(store.status("resume")),
        Code::NotFound,
        "commit ends the ingest"
    );
}

pub fn one_writer_per_ref(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("busy")).unwrap();
    w.write_all(b"first").unwrap();
    let err = store
        .writer(WriterOpts::new("busy"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains("\"busy\""), "{err} names the ref");
    // Other refs are independent.
    let other = store.writer(WriterOpts::new("other")).unwrap();
    drop(other);
    assert_eq!(
        code(store.abort("busy")),
        Code::Unavailable,
        "abort must not pull data from under a writer"
    );
    drop(w);
    let w = store.writer(WriterOpts::new("busy")).unwrap();
    assert_eq!(w.offset(), 5);
}

pub fn status_and_list_statuses(store: &dyn ContentStore) {
    let expected = Digest::of(b"status data");
    let mut w = store
        .writer(WriterOpts::new("s1").total(11).expected(expected))
        .unwrap();
    w.write_all(b"status").unwrap();
    let st = w.status().unwrap();
    assert_eq!(
        (st.reference.as_str(), st.offset, st.total, st.expected),
        ("s1", 6, Some(11), Some(expected))
    );
    assert!(st.updated_at >= st.started_at);
    drop(w);
    let st2 = store.status("s1").unwrap();
    assert_eq!(
        (st2.offset, st2.total, st2.expected, st2.started_at),
        (6, Some(11), Some(expected), st.started_at)
    );
    let w2 = store.writer(WriterOpts::new("s2")).unwrap();
    let st = w2.status().unwrap();
    assert_eq!((st.offset, st.total, st.expected), (0, None, None));
    let mut refs: Vec<String> = store
        .list_statuses(&[])
        .unwrap()
        .into_iter()
        .map(|s| s.reference)
        .collect();
    refs.sort();
    assert_eq!(refs, ["s1", "s2"]);
    let only: Vec<String> = store
        .list_statuses(&["ref==s2"])
        .unwrap()
        .into_iter()
        .map(|s| s.reference)
        .collect();
    assert_eq!(only, ["s2"]);
    assert!(store.list_statuses(&["ref==nope"]).unwrap().is_empty());
    assert_eq!(store.list_statuses(&["ref~=^s2$"]).unwrap().len(), 1);
    assert_eq!(
        code(store.list_statuses(&["ref~=(unclosed"])),
        Code::InvalidArgument
    );
    assert_eq!(code(store.status("nope")), Code::NotFound);
    assert_eq!(code(store.status("")), Code::InvalidArgument);
}

pub fn abort_ingest(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("ab")).unwrap();
    w.write_all(b"discard me").unwrap();
    drop(w);
    store.abort("ab").unwrap();
    assert_eq!(code(store.status("ab")), Code::NotFound);
    assert_eq!(code(store.abort("ab")), Code::NotFound);
    assert!(store.list_statuses(&[]).unwrap().is_empty());
    let w = store.writer(WriterOpts::new("ab")).unwrap();
    assert_eq!(w.offset(), 0, "an aborted ref starts over");
}

pub fn commit_wrong_size_stores_nothing(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("size")).unwrap();
    w.write_all(b"12345").unwrap();
    let err = w.commit(Some(6), None, Labels::new()).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let msg = err.to_string();
    assert!(msg.contains("expected 6") && msg.contains("got 5"), "{msg}");
    assert_nothing_stored(store, &Digest::of(b"12345"));
    // The ingest is kept: it can be completed.
    assert_eq!(store.status("size").unwrap().offset, 5);
    w.write_all(b"6").unwrap();
    assert_eq!(
        w.commit(Some(6), None, Labels::new()).unwrap(),
        Digest::of(b"123456")
    );
}

pub fn commit_wrong_digest_stores_nothing(store: &dyn ContentStore) {
    let wrong = Digest::of(b"something else");
    let mut w = store.writer(WriterOpts::new("dg")).unwrap();
    w.write_all(b"actual bytes").unwrap();
    let err = w.commit(None, Some(&wrong), Labels::new()).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let msg = err.to_string();
    let actual = Digest::of(b"actual bytes");
    assert!(
        msg.contains(&wrong.to_string()) && msg.contains(&actual.to_string()),
        "{msg}"
    );
    assert_nothing_stored(store, &actual);
    assert_nothing_stored(store, &wrong);
    drop(w);
    store.abort("dg").unwrap();
    assert_nothing_stored(store, &actual);
}

pub fn commit_existing_content_is_already_exists(store: &dyn ContentStore) {
    let d = put(store, "first", b"same bytes", labels(&[("keep", "me")]));
    let created = store.info(&d).unwrap().created_at;
    let mut w = store.writer(WriterOpts::new("second")).unwrap();
    w.write_all(b"same bytes").unwrap();
    let err = w.commit(None, None, labels(&[("new", "x")])).unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.to_string().contains(&d.to_string()));
    let info = store.info(&d).unwrap();
    assert_eq!(
        (info.labels, info.created_at),
        (labels(&[("keep", "me")]), created),
        "the old blob is kept"
    );
    assert_eq!(
        code(store.status("second")),
        Code::NotFound,
        "the ingest is removed"
    );
    // Opening a writer for content already present answers AlreadyExists at once.
    let err = store
        .writer(WriterOpts::new("third").expected(d))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(read_all(store, &d), b"same bytes");
}

pub fn write_at_wrong_offset_is_out_of_range(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("off")).unwrap();
    w.write_at(0, b"abc").unwrap();
    for off in [0u64, 2, 4, u64::MAX] {
        let err = w.write_at(off, b"zzz").unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "at {off}");
        assert!(err.to_string().contains(&off.to_string()), "{err}");
    }
    assert_eq!(w.offset(), 3, "rejected writes change nothing");
    w.write_at(3, b"d").unwrap();
    assert_eq!(
        w.commit(None, None, Labels::new()).unwrap(),
        Digest::of(b"abcd")
    );
}

pub fn truncate_restarts_ingest(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("tr")).unwrap();
    w.write_all(b"garbage").unwrap();
    assert_eq!(code(w.truncate(3)), Code::Unimplemented);
    assert_eq!(w.offset(), 7);
    w.truncate(0).unwrap();
    assert_eq!((w.offset(), w.digest()), (0, Digest::of(b"")));
    assert_eq!(store.status("tr").unwrap().offset, 0);
    w.write_all(b"good").unwrap();
    assert_eq!(
        w.commit(Some(4), Some(&Digest::of(b"good")), Labels::new())
            .unwrap(),
        Digest::of(b"good")
    );
}

pub fn refs_are_free_form(store: &dyn ContentStore) {
    let long = "x".repeat(5000);
    let refs = [
        "tar-blobs/sha256/0123",
        "../../etc/passwd",
        "with space and\nnewline",
        "ünïcødé ✓",
        ".",
        "..",
        "/",
        long.as_str(),
    ];
    for (i, r) in refs.iter().enumerate() {
        let mut w = store.writer(WriterOpts::new(*r)).unwrap();
        w.write_all(&generate(i as u64 + 100, i + 1)).unwrap();
    }
    for (i, r) in refs.iter().enumerate() {
        let st = store.status(r).unwrap();
        assert_eq!((st.reference.as_str(), st.offset), (*r, i as u64 + 1));
    }
    assert_eq!(store.list_statuses(&[]).unwrap().len(), refs.len());
    for (i, r) in refs.iter().enumerate() {
        let mut w = store.writer(WriterOpts::new(*r)).unwrap();
        let data = generate(i as u64 + 100, i + 1);
        assert_eq!(
            w.commit(None, Some(&Digest::of(&data)), Labels::new())
                .unwrap(),
            Digest::of(&data)
        );
    }
    assert_eq!(walk_digests(store, &[]).len(), refs.len());
    assert_eq!(
        code(store.writer(WriterOpts::new("")).map(|_| ())),
        Code::InvalidArgument
    );
}

pub fn writer_is_closed_after_commit(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("c")).unwrap();
    w.write_all(b"x").unwrap();
    w.commit(None, None, Labels::new()).unwrap();
    assert_eq!(code(w.write_all(b"y")), Code::FailedPrecondition);
    assert_eq!(
        code(w.commit(None, None, Labels::new())),
        Code::FailedPrecondition
    );
    assert_eq!(code(w.truncate(0)), Code::FailedPrecondition);
}

pub fn writer_records_total_and_expected(store: &dyn ContentStore) {
    let data = b"recorded";
    let d = Digest::of(data);
    let w = store
        .writer(WriterOpts::new("rec").total(8).expected(d))
        .unwrap();
    drop(w);
    assert_eq!(
        code(store.writer(WriterOpts::new("rec").total(9)).map(|_| ())),
        Code::FailedPrecondition
    );
    let other = Digest::of(b"other");
    assert_eq!(
        code(
            store
                .writer(WriterOpts::new("rec").expected(other))
                .map(|_| ())
        ),
        Code::FailedPrecondition
    );
    let mut w = store.writer(WriterOpts::new("rec")).unwrap();
    w.write_all(b"recorde").unwrap();
    // Commit without arguments checks what the ingest was opened with.
    assert_eq!(
        code(w.commit(None, None, Labels::new())),
        Code::FailedPrecondition
    );
    w.write_all(b"X").unwrap();
    assert_eq!(
        code(w.commit(None, None, Labels::new())),
        Code::FailedPrecondition
    );
    w.truncate(0).unwrap();
    w.write_all(data).unwrap();
    assert_eq!(w.commit(None, None, Labels::new()).unwrap(), d);
}

pub fn empty_blob(store: &dyn ContentStore) {
    let mut w = store.writer(WriterOpts::new("empty")).unwrap();
    let d = w
        .commit(Some(0), Some(&Digest::of(b"")), Labels::new())
        .unwrap();
    assert_eq!(d, Digest::of(b""));
    let info = store.info(&d).unwrap();
    assert_eq!(info.size, 0);
    let mut buf = [0u8; 1];
    assert_eq!(
        store.reader_at(&d).unwrap().read_at(&mut buf, 0).unwrap(),
        0
    );
}

pub fn verify_clean_store(store: &dyn ContentStore) {
    put(store, "a", &generate(5, 50_000), Labels::new());
    put(store, "b", b"b", Labels::new());
    let report = store.verify().unwrap();
    assert_eq!(
        (report.ok, report.bytes, report.quarantined.len()),
        (2, 50_001, 0)
    );
    assert_eq!(walk_digests(store, &[]).len(), 2);
}
