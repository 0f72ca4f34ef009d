//! Hostile registry answers to a pull (target `registry`).
//!
//! A registry of the harness's own, on 127.0.0.1, answers whatever the input says, and
//! corrald pulls `127.0.0.1:<port>/fuzz:latest` from it into a private root, unpacking onto
//! the native snapshotter. The input is parts separated by [`PART`]:
//!
//! ```text
//! part 0    control lines `key: value` (below)
//! part 1    what the tag resolves to (a manifest or an index)
//! part 2..  documents and blobs, served by their digest
//! ```
//!
//! In parts, `{{dN}}` becomes the digest of part N and `{{sN}}` its size (parts are rewritten
//! from the last to the first, so a part may name any later one), `{{host}}` the registry's
//! `host:port`: a mutated layer stays the blob its manifest names.
//!
//! Control keys: `content-type` (of the tag's manifest); `auth` (`bearer`: a token service
//! guards the registry; `basic`: a basic challenge no credentials answer); `token` (the token
//! service's answer) or `token-size` (that many bytes of answer); `status-<manifests|blobs|
//! token>` (answer that status, with `error-body` bytes of body); `truncate` (cut blob bodies
//! after that many bytes); `range` (`ignore`: answer a Range request with the whole blob;
//! `wrong`: with a 206 from another offset); `pulls` (pull that many times: a later pull
//! resumes what an earlier one cut short).
//!
//! Property: a pull succeeds and leaves an image, or fails with a code that says what went
//! wrong (never Internal, Unknown only for an HTTP status the distribution API does not
//! define) and leaves no image record, no lease and no active snapshot (a failed unpack
//! removes its snapshot); partial downloads stay as ingests only; memory stays bounded (a
//! registry streaming a 4 GiB error page or token answer is not read whole).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use content::ContentStore;
use protocol::Code;
use protocol::fuzzing::{TempDir, split, tree};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::events::Exchange;
use crate::metadata::{self, Db};
use crate::pull::{self, Settings};
use crate::services::{Daemon, Shared};

pub const PART: &[u8] = b"\n--part--\n";
const NS: &str = "fuzz";
const PULL_DEADLINE: Duration = Duration::from_secs(60);

/// What the fake registry answers, rebuilt for every case.
#[derive(Default, Clone)]
struct Script {
    control: BTreeMap<String, String>,
    /// Part 1 (the tag) and every part by digest.
    tag: Vec<u8>,
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Script {
    fn parse(data: &[u8], host: &str) -> Script {
        let mut parts: Vec<Vec<u8>> = split(data, PART).into_iter().map(<[u8]>::to_vec).collect();
        let control = parts.remove(0);
        let control = String::from_utf8_lossy(&control)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        // Rewrite the last part first, so that a part's placeholders name rewritten parts.
        let mut digests = vec![String::new(); parts.len()];
        for i in (0..parts.len()).rev() {
            let mut p = parts[i].clone();
            if p.windows(2).any(|w| w == b"{{") {
                for (j, d) in digests.iter().enumerate() {
                    let d = if d.is_empty() {
                        sha256(&parts[j])
                    } else {
                        d.clone()
                    };
                    p = replace(&p, format!("{{{{d{}}}}}", j + 1).as_bytes(), d.as_bytes());
                    let size = parts[j].len().to_string();
                    p = replace(
                        &p,
                        format!("{{{{s{}}}}}", j + 1).as_bytes(),
                        size.as_bytes(),
                    );
                }
                p = replace(&p, b"{{host}}", host.as_bytes());
            }
            digests[i] = sha256(&p);
            parts[i] = p;
        }
        let tag = parts.first().cloned().unwrap_or_default();
        let blobs = parts.into_iter().map(|p| (sha256(&p), p)).collect();
        Script {
            control,
            tag,
            blobs,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.control.get(key).map(String::as_str)
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// One answer of the fake registry.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    /// This many bytes of `x`, streamed: a body too large to build.
    Endless(u64),
}

impl Answer {
    fn new(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body),
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.into(), v.into()));
        self
    }
}

fn not_found(code: &str) -> Answer {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"not here"}}]}}"#);
    Answer::new(404, body.into_bytes()).header("Content-Type", "application/json")
}

/// The registry's answer to `GET path` with `headers`.
fn answer(s: &Script, host: &str, path: &str, headers: &BTreeMap<String, String>) -> Answer {
    let (path, _query) = path.split_once('?').unwrap_or((path, ""));
    let kind = if path.starts_with("/token") {
        "token"
    } else if path.contains("/manifests/") {
        "manifests"
    } else if path.contains("/blobs/") {
        "blobs"
    } else {
        "other"
    };
    // Authentication first, as a registry does.
    if kind != "token" {
        match s.get("auth") {
            Some("bearer")
                if headers.get("authorization").map(String::as_str)
                    != Some("Bearer fuzz-token") =>
            {
                let realm = format!("http://{host}/token");
                return Answer::new(401, b"{}".to_vec()).header(
                    "WWW-Authenticate",
                    format!(
                        r#"Bearer realm="{realm}",service="fuzz",scope="repository:fuzz:pull""#
                    ),
                );
            }
            Some("basic") => {
                return Answer::new(401, Vec::new())
                    .header("WWW-Authenticate", r#"Basic realm="fuzz""#);
            }
            _ => {}
        }
    }
    if let Some(status) = s.number(&format!("status-{kind}")) {
        let status = u16::try_from(status).unwrap_or(500).clamp(200, 599);
        if !(200..300).contains(&status) {
            let size = s.number("error-body").unwrap_or(0);
            return Answer {
                status,
                headers: Vec::new(),
                body: Body::Endless(size),
            };
        }
    }
    match kind {
        "token" if s.number("token-size").is_some() => Answer {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Endless(s.number("token-size").unwrap_or(0)),
        },
        "token" => {
            let body = s
                .get("token")
                .unwrap_or(r#"{"token":"fuzz-token"}"#)
                .as_bytes()
                .to_vec();
            Answer::new(200, body).header("Content-Type", "application/json")
        }
        "manifests" => {
            let reference = path.rsplit('/').next().unwrap_or("");
            let body = if reference == "latest" {
                Some(s.tag.clone())
            } else {
                s.blobs.get(reference).cloned()
            };
            match body {
                Some(b) => {
                    let ct = s
                        .get("content-type")
                        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                        .to_string();
                    let digest = sha256(&b);
                    Answer::new(200, b)
                        .header("Content-Type", ct)
                        .header("Docker-Content-Digest", digest)
                }
                None => not_found("MANIFEST_UNKNOWN"),
            }
        }
        "blobs" => {
            let digest = path.rsplit('/').next().unwrap_or("");
            let Some(blob) = s.blobs.get(digest) else {
                return not_found("BLOB_UNKNOWN");
            };
            let start = headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            let mut body = blob.clone();
            let mut a = match (start, s.get("range")) {
                (Some(_), Some("ignore")) | (None, _) => Answer::new(200, Vec::new()),
                (Some(off), Some("wrong")) => Answer::new(206, Vec::new()).header(
                    "Content-Range",
                    format!("bytes {}-{}/{}", off / 2, blob.len().max(1) - 1, blob.len()),
                ),
                (Some(off), _) => {
                    let off = off.min(body.len());
                    body = body[off..].to_vec();
                    Answer::new(206, Vec::new()).header(
                        "Content-Range",
                        format!("bytes {off}-{}/{}", blob.len().max(1) - 1, blob.len()),
                    )
                }
            };
            if let Some(cut) = s.number("truncate") {
                body.truncate(usize::try_from(cut).unwrap_or(usize::MAX));
            }
            a.body = Body::Bytes(body);
            a
        }
        _ => not_found("NAME_UNKNOWN"),
    }
}

/// Serves `script` until the listener is dropped; one request per connection.
async fn serve(listener: tokio::net::TcpListener, script: Arc<Mutex<Script>>, host: String) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let script = script.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.len() > 64 * 1024 {
                    return;
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut lines = text.split("\r\n");
            let path = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or("/")
                .to_string();
            let headers: BTreeMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let a = {
                let s = script.lock().unwrap_or_else(|e| e.into_inner());
                answer(&s, &host, &path, &headers)
            };
            let len = match &a.body {
                Body::Bytes(b) => b.len() as u64,
                Body::Endless(n) => *n,
            };
            let mut out = format!(
                "HTTP/1.1 {} Fuzz\r\nContent-Length: {len}\r\nConnection: close\r\n",
                a.status
            );
            for (k, v) in &a.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            if conn.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            match a.body {
                Body::Bytes(b) => {
                    let _ = conn.write_all(&b).await;
                }
                Body::Endless(mut left) => {
                    let chunk = vec![b'x'; 64 * 1024];
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        // The client hanging up ends it.
                        if conn.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
            }
            let _ = conn.shutdown().await;
        });
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    daemon: Shared,
    root: PathBuf,
    host: String,
    script: Arc<Mutex<Script>>,
    settings: Settings,
    /// The root's state with nothing pulled.
    baseline: (Vec<(String, String)>, BTreeMap<PathBuf, String>),
    _dir: TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = TempDir::in_memory("corral-registry-fuzz");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        let mut snapshotters: BTreeMap<String, Arc<dyn snapshotter::Snapshotter>> = BTreeMap::new();
        snapshotters.insert(
            "native".into(),
            Arc::new(
                snapshotter::NativeSnapshotter::open(root.join("native"))
                    .expect("native snapshotter"),
            ),
        );
        let daemon = Arc::new(Daemon {
            db: Db::open(&root.join("meta.redb")).expect("metadata"),
            events: Exchange::default(),
            gc: Default::default(),
            root: root.clone(),
            content: Arc::new(content::LocalStore::open(root.join("content")).expect("content")),
            snapshotters,
        });
        {
            let tx = daemon.db.write().expect("tx");
            tx.ensure_namespace(NS).expect("namespace");
            tx.commit().expect("commit");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let script = Arc::new(Mutex::new(Script::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let host = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        rt.spawn(serve(listener, script.clone(), host.clone()));
        let settings = Settings {
            config_path: dir.path().join("certs.d"),
            auths_file: dir.path().join("no-auths.json"),
            insecure: vec![host.clone()],
        };
        let mut h = Harness {
            rt,
            daemon,
            root,
            host,
            script,
            settings,
            baseline: Default::default(),
            _dir: dir,
        };
        h.baseline = state(&h);
        h
    })
}

fn state(h: &Harness) -> (Vec<(String, String)>, BTreeMap<PathBuf, String>) {
    let mut records = Vec::new();
    for table in [
        metadata::NAMESPACES,
        metadata::IMAGES,
        metadata::CONTAINERS,
        metadata::CONTENT,
        metadata::SNAPSHOTS,
        metadata::LEASES,
        metadata::LEASE_RESOURCES,
    ] {
        for (k, v) in h.daemon.db.all::<serde_json::Value>(table).expect("read") {
            records.push((k, v.to_string()));
        }
    }
    let mut files = tree(&h.root);
    files.retain(|p, _| {
        let s = p.to_string_lossy();
        !s.ends_with("meta.redb") && !s.ends_with("metadata.db")
    });
    (records, files)
}

/// The codes a failed pull may give.
const ALLOWED: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::DataLoss,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::Unavailable,
    Code::Unimplemented,
];

pub fn registry(data: &[u8]) {
    let h = harness();
    let script = Script::parse(data, &h.host);
    let pulls = script.number("pulls").unwrap_or(1).clamp(1, 3);
    *h.script.lock().unwrap_or_else(|e| e.into_inner()) = script;
    let reference = format!("{}/fuzz:latest", h.host);
    for _ in 0..pulls {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        drop(rx);
        let req = pull::Request {
            reference: reference.clone(),
            platform: String::new(),
            plain_http: true,
            credentials: None,
            unpack: true,
            snapshotter: "native".into(),
        };
        let d = h.daemon.clone();
        let started = std::time::Instant::now();
        let result = h.rt.block_on(async {
            tokio::time::timeout(PULL_DEADLINE, pull::pull(d, NS, req, &h.settings, tx)).await
        });
        let result = result.unwrap_or_else(|_| panic!("the pull did not end in {PULL_DEADLINE:?}"));
        if std::env::var_os("CORRAL_FUZZ_TRACE").is_some() {
            let r = result.as_ref();
            eprintln!(
                "pull {:?}: {:?}",
                started.elapsed(),
                r.map(|p| &p.name).map_err(|e| (e.code(), e.to_string()))
            );
        }
        let images = h
            .daemon
            .db
            .list::<serde_json::Value>(metadata::IMAGES, NS)
            .expect("images");
        match &result {
            Ok(p) => {
                assert_eq!(p.name, reference);
                assert_eq!(images.len(), 1, "a pull succeeded without an image record");
            }
            Err(e) => {
                let code = e.code();
                let unknown_status = code == Code::Unknown && e.to_string().contains("HTTP ");
                assert!(
                    ALLOWED.contains(&code) || unknown_status,
                    "the pull answered {code:?}: {e}"
                );
                assert!(images.is_empty(), "a failed pull left an image record: {e}");
            }
        }
        let leases = h
            .daemon
            .db
            .list::<serde_json::Value>(metadata::LEASES, NS)
            .expect("leases");
        assert!(leases.is_empty(), "the pull left its lease: {result:?}");
        let mut active = Vec::new();
        h.daemon.snapshotters["native"]
            .walk(&[], &mut |info| {
                if info.kind != snapshotter::Kind::Committed {
                    active.push(info.name);
                }
                Ok(())
            })
            .expect("walk snapshots");
        assert!(active.is_empty(), "an unpack left {active:?}: {result:?}");
    }
    reset(h);
}

/// Back to an empty root: the image and partial ingests removed, the rest collected.
fn reset(h: &Harness) {
    let tx = h.daemon.db.write().expect("tx");
    for (k, _) in h
        .daemon
        .db
        .list::<serde_json::Value>(metadata::IMAGES, NS)
        .expect("images")
    {
        tx.delete(metadata::IMAGES, &k).expect("delete image");
    }
    tx.commit().expect("commit");
    for s in h.daemon.content.list_statuses(&[]).expect("ingests") {
        h.daemon
            .content
            .abort(&s.reference)
            .expect("abort an ingest");
    }
    crate::gc::collect(&h.daemon, std::time::SystemTime::now()).expect("gc");
    for sn in h.daemon.snapshotters.values() {
        sn.settle();
    }
    let now = state(h);
    assert!(
        now == h.baseline,
        "after removing the image and the ingests, collection left: {:?}",
        now
    );
}

#[cfg(test)]
mod tests {
    use protocol::fuzzing::{Target, measure, run};

    use super::*;

    #[test]
    fn registry() {
        run(
            &Target {
                name: "registry",
                cases: 300,
                max_alloc: 32 << 20,
                dict: &[
                    super::PART,
                    b"{{d2}}",
                    b"{{d3}}",
                    b"{{s3}}",
                    b"{{host}}",
                    b"\"schemaVersion\":2",
                    b"\"mediaType\":",
                    b"application/vnd.oci.image.index.v1+json",
                    b"application/vnd.oci.image.layer.v1.tar+gzip",
                    b"\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}",
                    b"\"urls\":[\"http://{{host}}/v2/fuzz/blobs/{{d3}}\"]",
                    b"\"size\":",
                    b"auth: bearer\n",
                    b"token: ",
                    b"range: wrong\n",
                    b"truncate: ",
                    b"pulls: 2\n",
                    b"status-blobs: ",
                    b"error-body: ",
                ],
            },
            super::registry,
        );
    }

    /// A registry that answers an error, or a token, with an endless body: the pull fails
    /// without reading it all (the error message quotes its start).
    #[test]
    fn a_4_gib_error_page_or_token_answer_is_not_read_whole() {
        for control in [
            "status-manifests: 500\nerror-body: 4294967296\n",
            "status-manifests: 404\nerror-body: 4294967296\n",
            "auth: bearer\ntoken-size: 4294967296\n",
        ] {
            let mut input = control.as_bytes().to_vec();
            input.extend_from_slice(PART);
            input.extend_from_slice(b"{}");
            let started = std::time::Instant::now();
            let ((), largest) = measure(|| super::registry(&input));
            assert!(
                largest < 16 << 20,
                "{control:?}: allocated {largest} bytes at once"
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{control:?}: took {:?}",
                started.elapsed()
            );
        }
    }
}
