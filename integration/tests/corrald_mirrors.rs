//! corrald's registry hosts configuration (`[registry] config_path`, containerd's `hosts.toml`
//! layout) with pulls through corrald's own Transfer service, against real `docker-registry`
//! instances on 127.0.0.1 (plain HTTP, HTTPS with a CA made by `openssl`, HTTPS requiring client
//! certificates): Kubernetes registries served by a local mirror under their own names, falling
//! over from a host that is down, answers 500 or lacks the image, the `resolve` capability,
//! `_default`, `override_path`, extra headers, TLS settings (`ca`, docker's `certs.d` files,
//! `client`, `skip_verify`), bearer tokens fetched per host, and a malformed `hosts.toml`.
//!
//! The small servers below (a recording proxy, a 500 answerer, a token gate) sit in front of the
//! real registries to see or shape what corrald sends; the registries serve every image.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration::certs::{TestCa, Usage};
use integration::image::{ImageBlobs, image_from_layer_tars};
use integration::registry::{Options, Registry};
use integration::{Corrald, require_root};
use protocol::grpc::corral::services::transfer::v1::transfer_client::TransferClient;
use protocol::grpc::corral::services::transfer::v1::*;
use protocol::grpc::tonic;
use sha2::{Digest, Sha256};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A one-layer image holding `/served-by` = `note`: images with different notes have different
/// digests, so the digest pulled tells which registry served it.
fn tiny_image(note: &str) -> ImageBlobs {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(note.len() as u64);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "served-by", note.as_bytes()).unwrap();
    image_from_layer_tars(vec![b.into_inner().unwrap()]).expect("build the test image")
}

fn push(reg: &Registry, name: &str, tag: &str, img: &ImageBlobs) {
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push(name, tag, &blobs, &img.manifest, MEDIA_MANIFEST)
        .expect("push to the registry");
}

/// A port nobody listens on (bound a moment ago, then closed).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hosts directory (what `[registry] config_path` names).
struct Hosts {
    dir: tempfile::TempDir,
}

impl Hosts {
    fn new() -> Hosts {
        Hosts {
            dir: tempfile::Builder::new()
                .prefix("certs.d-")
                .tempdir()
                .unwrap(),
        }
    }

    /// Writes `<dir>/<name>/<file>`.
    fn file(&self, name: &str, file: &str, data: &[u8]) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(file), data).unwrap();
        d.join(file)
    }

    /// Writes `<dir>/<name>/hosts.toml`.
    fn hosts_toml(&self, name: &str, text: &str) -> PathBuf {
        self.file(name, "hosts.toml", text.as_bytes())
    }

    /// A corrald config using this directory.
    fn corrald_config(&self) -> String {
        format!(
            "version = 1\n[registry]\nconfig_path = \"{}\"\nauths_file = \"{}\"\n",
            self.dir.path().display(),
            self.dir.path().join("no-auths.json").display()
        )
    }
}

/// One Pull through corrald's Transfer service, not unpacked (no plain HTTP asked: the hosts
/// decide).
fn pull(d: &Corrald, reference: &str) -> Result<PullResult, tonic::Status> {
    pull_with(d, reference, false)
}

fn pull_unpacked(d: &Corrald, reference: &str) -> Result<PullResult, tonic::Status> {
    pull_with(d, reference, true)
}

fn pull_with(d: &Corrald, reference: &str, unpack: bool) -> Result<PullResult, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ns, address) = (d.namespace().to_string(), d.address());
    let result = rt.block_on(async move {
        let channel = protocol::grpc::unix::connect(&address)
            .await
            .expect("connect to corrald");
        let mut client = TransferClient::new(channel);
        let mut r = tonic::Request::new(PullRequest {
            reference: reference.to_string(),
            unpack: Some(unpack),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
        r.set_timeout(Duration::from_secs(180));
        let mut stream = client.pull(r).await?.into_inner();
        while let Some(m) = stream.message().await? {
            if let Some(res) = m.result {
                return Ok(res);
            }
        }
        Err(tonic::Status::unknown("stream ended without a result"))
    });
    match &result {
        Ok(r) => eprintln!("pulled {reference}: {}", r.name),
        Err(e) => eprintln!("pull {reference}: {:?}: {}", e.code(), e.message()),
    }
    result
}

fn pulled(d: &Corrald, reference: &str) -> PullResult {
    pull(d, reference).unwrap_or_else(|e| {
        panic!(
            "pull {reference} failed: {:?}: {}\n{}",
            e.code(),
            e.message(),
            d.log_tail(30)
        )
    })
}

fn failed(d: &Corrald, reference: &str) -> tonic::Status {
    match pull(d, reference) {
        Ok(r) => panic!("pull {reference} succeeded: {r:?}"),
        Err(e) => e,
    }
}

fn target_digest(r: &PullResult) -> String {
    r.target.as_ref().expect("a target").digest.clone()
}

/// A TCP server on 127.0.0.1 running `handle` on each connection in its own thread.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = Arc::new(handle);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                let h = handle.clone();
                std::thread::spawn(move || h(c));
            }
        });
        Server { port, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either end closes, handing each chunk to `seen`.
fn pipe(mut from: TcpStream, mut to: TcpStream, seen: impl Fn(&[u8])) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Forwards `client` to `upstream` both ways, `first` (already read from the client) first;
/// what the client sends goes to `seen` too.
fn forward(client: TcpStream, upstream: &str, first: &[u8], seen: impl Fn(&[u8]) + Send + 'static) {
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    seen(first);
    if up.write_all(first).is_err() {
        return;
    }
    let (c2, u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    let t = std::thread::spawn(move || pipe(c2, u2, seen));
    pipe(up, client, |_| {});
    let _ = t.join();
}

/// A proxy to a registry that keeps every byte the client sent.
struct Recorder {
    server: Server,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(upstream: String) -> Recorder {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let server = Server::start(move |c| {
            let s = s.clone();
            forward(c, &upstream, &[], move |b| {
                s.lock().unwrap().extend_from_slice(b)
            });
        });
        Recorder { server, sent }
    }

    /// What clients sent so far, lower-cased.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).to_ascii_lowercase()
    }
}

/// Reads a request head (up to the blank line) from `c`; returns it and the bytes read.
fn read_head(c: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((String::from_utf8_lossy(&raw[..end]).to_string(), raw))
}

fn answer(c: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A server that answers every request with 500 and counts them.
struct Failing {
    server: Server,
    requests: Arc<AtomicUsize>,
}

impl Failing {
    fn start() -> Failing {
        let requests = Arc::new(AtomicUsize::new(0));
        let r = requests.clone();
        let server = Server::start(move |mut c| {
            if read_head(&mut c).is_some() {
                r.fetch_add(1, Ordering::Relaxed);
                answer(&mut c, "500 Internal Server Error", "", "storage on fire");
            }
        });
        Failing { server, requests }
    }
}

/// A registry behind bearer-token authentication, as Docker Hub or GCR put theirs: requests
/// without `Authorization: Bearer <token>` get a 401 whose challenge names this server's own
/// `/token` realm and `service`; the token service hands out `token` (and records the queries
/// it was asked); authorised connections are forwarded to the registry.
struct TokenGate {
    server: Server,
    token_queries: Arc<Mutex<Vec<String>>>,
    forwarded: Arc<AtomicUsize>,
}

impl TokenGate {
    fn start(upstream: String, service: &'static str, token: &'static str) -> TokenGate {
        let token_queries = Arc::new(Mutex::new(Vec::new()));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (q, f) = (token_queries.clone(), forwarded.clone());
        let port = Arc::new(AtomicUsize::new(0));
        let p = port.clone();
        let server = Server::start(move |mut c| {
            let Some((head, raw)) = read_head(&mut c) else {
                return;
            };
            let line = head.lines().next().unwrap_or_default().to_string();
            let path = line.split_whitespace().nth(1).unwrap_or_default();
            if path.starts_with("/token") {
                q.lock().unwrap().push(path.to_string());
                answer(
                    &mut c,
                    "200 OK",
                    "Content-Type: application/json\r\n",
                    &format!(r#"{{"token":"{token}","expires_in":300}}"#),
                );
                return;
            }
            let authorised = head.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization:")
                    && l.split_once(':').map(|(_, v)| v.trim()) == Some(&format!("Bearer {token}"))
            });
            if authorised {
                f.fetch_add(1, Ordering::Relaxed);
                forward(c, &upstream, &raw, |_| {});
                return;
            }
            let realm = format!("http://127.0.0.1:{}/token", p.load(Ordering::Relaxed));
            answer(
                &mut c,
                "401 Unauthorized",
                &format!(
                    "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"{service}\"\r\n\
                     Content-Type: application/json\r\n"
                ),
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        });
        port.store(server.port as usize, Ordering::Relaxed);
        TokenGate {
            server,
            token_queries,
            forwarded,
        }
    }
}

#[test]
fn a_local_mirror_serves_kubernetes_registries_under_their_own_names() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let (pause, test_image, busybox) = (
        tiny_image("pause"),
        tiny_image("test-image"),
        tiny_image("busybox"),
    );
    push(&reg, "pause", "test", &pause);
    push(
        &reg,
        "k8s-staging-cri-tools/test-image-1",
        "latest",
        &test_image,
    );
    push(&reg, "library/busybox", "mirrored", &busybox);

    // What `make critest` writes: each registry tries the local mirror first.
    let hosts = Hosts::new();
    for name in ["registry.k8s.io", "gcr.io", "k8s.gcr.io", "docker.io"] {
        let server = if name == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else {
            format!("https://{name}")
        };
        hosts.hosts_toml(
            name,
            &format!(
                "server = \"{server}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                reg.host()
            ),
        );
    }
    let d = Corrald::start_with_config(&hosts.corrald_config());
    let ctr = d.ctr();

    // Unpacked, as kubelet's pulls are: the image is complete for ctr.
    let r = pull_unpacked(&d, "registry.k8s.io/pause:test")
        .unwrap_or_else(|e| panic!("{}\n{}", e.message(), d.log_tail(30)));
    assert_eq!(r.name, "registry.k8s.io/pause:test");
    assert_eq!(target_digest(&r), sha256(&pause.manifest));
    assert_eq!(r.chain_id, *pause.chain_ids().last().unwrap());
    let row = ctr.images_check_row("registry.k8s.io/pause:test");
    assert!(
        row.contains("complete") && row.contains("true"),
        "not complete and unpacked: {row}"
    );
    // The blobs are labelled with the registry they were asked from, as containerd labels
    // them, not with the mirror.
    let content = ctr.ok(&["content", "ls"]);
    let manifest_row = content
        .lines()
        .find(|l| l.starts_with(&sha256(&pause.manifest)))
        .unwrap_or_else(|| panic!("manifest not stored:\n{content}"));
    assert!(
        manifest_row.contains("containerd.io/distribution.source.registry.k8s.io=pause"),
        "{manifest_row}"
    );
    assert!(!content.contains(&reg.host()), "{content}");

    for (reference, name, img) in [
        (
            "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
            &test_image,
        ),
        ("k8s.gcr.io/pause:test", "k8s.gcr.io/pause:test", &pause),
        (
            "busybox:mirrored",
            "docker.io/library/busybox:mirrored",
            &busybox,
        ),
    ] {
        let r = pulled(&d, reference);
        assert_eq!(r.name, name);
        assert_eq!(target_digest(&r), sha256(&img.manifest), "{reference}");
    }
    let ls = ctr.ok(&["images", "ls", "-q"]);
    for name in [
        "registry.k8s.io/pause:test",
        "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
        "k8s.gcr.io/pause:test",
        "docker.io/library/busybox:mirrored",
    ] {
        assert!(ls.lines().any(|l| l == name), "{name} not in:\n{ls}");
    }
    assert!(!ls.contains(&reg.host()), "{ls}");
}

#[test]
fn a_failing_host_moves_the_pull_on_to_the_next_and_all_failing_are_named() {
    if !require_root() {
        return;
    }
    let good = Registry::start();
    let img = tiny_image("good");
    push(&good, "test/img", "1", &img);
    let empty = Registry::start();
    let failing = Failing::start();
    let dead = dead_port();

    let hosts = Hosts::new();
    // Down, then 500, then 404 (a mirror without the image), then the server that has it.
    hosts.hosts_toml(
        "mirrored.example",
        &format!(
            "server = \"http://{}\"\n\
             [host.\"http://127.0.0.1:{dead}\"]\n\
             [host.\"{}\"]\n\
             [host.\"http://{}\"]\n",
            good.host(),
            failing.server.url(),
            empty.host()
        ),
    );
    // Nothing that works.
    let dead2 = dead_port();
    hosts.hosts_toml(
        "failing.example",
        &format!(
            "server = \"http://127.0.0.1:{dead2}\"\n\
             [host.\"http://127.0.0.1:{dead}\"]\n\
             [host.\"{}\"]\n\
             [host.\"http://{}\"]\n",
            failing.server.url(),
            empty.host()
        ),
    );
    // Every host answers "not found".
    hosts.hosts_toml(
        "notfound.example",
        &format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\n",
            empty.host(),
            good.host()
        ),
    );
    let d = Corrald::start_with_config(&hosts.corrald_config());

    let r = pulled(&d, "mirrored.example/test/img:1");
    assert_eq!(r.name, "mirrored.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&img.manifest));
    assert!(
        failing.requests.load(Ordering::Relaxed) > 0,
        "the 500 mirror was never asked"
    );

    let e = failed(&d, "failing.example/test/img:1");
    // The first failure that is not "not found" gives the code.
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    let msg = e.message();
    for (what, why) in [
        (format!("http://127.0.0.1:{dead}/v2"), "refused"),
        (format!("{}/v2", failing.server.url()), "500"),
        (format!("http://{}/v2", empty.host()), "not found"),
        (format!("http://127.0.0.1:{dead2}/v2"), "refused"),
    ] {
        let at = msg
            .find(&format!("{what}: "))
            .unwrap_or_else(|| panic!("{what} not named in: {msg}"));
        let end = msg[at + what.len()..]
            .find("; http")
            .map_or(msg.len(), |i| at + what.len() + i);
        assert!(
            msg[at..end].to_ascii_lowercase().contains(why),
            "{what} without {why:?}: {}",
            &msg[at..end]
        );
    }
    assert!(!msg.contains('\n'), "{msg}");

    let e = failed(&d, "notfound.example/test/none:1");
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());

    let ls = d.ctr().ok(&["images", "ls", "-q"]);
    assert_eq!(ls.trim(), "mirrored.example/test/img:1");
    let leases = d.ctr().ok(&["leases", "ls"]);
    assert!(!leases.contains("corral-pull"), "{leases}");
}

#[test]
fn only_hosts_able_to_resolve_are_asked_for_tags() {
    if !require_root() {
        return;
    }
    // The pull-only mirror has another image under the same tag: trusting it for the tag would
    // pull the wrong image.
    let trusted = Registry::start();
    let img = tiny_image("trusted");
    push(&trusted, "test/img", "1", &img);
    let other_reg = Registry::start();
    let other = tiny_image("other");
    push(&other_reg, "test/img", "1", &other);
    let pull_only = Recorder::start(other_reg.host());

    let hosts = Hosts::new();
    hosts.hosts_toml(
        "caps.example",
        &format!(
            "server = \"http://{}\"\n[host.\"{}\"]\n  capabilities = [\"pull\"]\n",
            trusted.host(),
            pull_only.server.url()
        ),
    );
    let d = Corrald::start_with_config(&hosts.corrald_config());
    let r = pulled(&d, "caps.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&img.manifest));
    let sent = pull_only.text();
    assert!(
        !sent.contains("/manifests/1"),
        "the pull-only mirror was asked for the tag:\n{sent}"
    );
    // Blobs are asked from it first (it has not got them: 404, then the server).
    assert!(sent.contains("/blobs/sha256:"), "{sent}");

    // By digest, the pull-only mirror may serve: it is asked first and has it.
    let by_digest = format!("caps.example/test/img@{}", sha256(&other.manifest));
    let r = pulled(&d, &by_digest);
    assert_eq!(target_digest(&r), sha256(&other.manifest));
    assert!(
        pull_only
            .text()
            .contains(&format!("/manifests/{}", sha256(&other.manifest))),
        "the mirror was not asked for the digest"
    );
}

#[test]
fn default_hosts_apply_to_registries_without_a_directory() {
    if !require_root() {
        return;
    }
    let fallback = Registry::start();
    let own = Registry::start();
    let (a, b) = (tiny_image("default"), tiny_image("own"));
    push(&fallback, "test/img", "1", &a);
    push(&own, "test/img", "1", &b);
    let hosts = Hosts::new();
    hosts.hosts_toml(
        "_default",
        &format!("server = \"http://{}\"\n", fallback.host()),
    );
    hosts.hosts_toml(
        "own.example",
        &format!("server = \"http://{}\"\n", own.host()),
    );
    // host:port directories are spelt host_port_ (or host:port).
    hosts.hosts_toml(
        "ported.example_5000_",
        &format!("server = \"http://{}\"\n", own.host()),
    );
    let d = Corrald::start_with_config(&hosts.corrald_config());
    let r = pulled(&d, "any.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&a.manifest));
    let r = pulled(&d, "own.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&b.manifest));
    let r = pulled(&d, "ported.example:5000/test/img:1");
    assert_eq!(r.name, "ported.example:5000/test/img:1");
    assert_eq!(target_digest(&r), sha256(&b.manifest));
}

#[test]
fn override_path_makes_the_url_path_the_api_root() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = tiny_image("prefixed");
    // A registry serving several upstreams under prefixes of its own.
    push(&reg, "upstream-a/test/img", "1", &img);
    let hosts = Hosts::new();
    let url = format!("http://{}/v2/upstream-a", reg.host());
    hosts.hosts_toml(
        "op.example",
        &format!("[host.\"{url}\"]\n  override_path = true\n"),
    );
    hosts.hosts_toml("noop.example", &format!("[host.\"{url}\"]\n"));
    let d = Corrald::start_with_config(&hosts.corrald_config());
    let r = pulled(&d, "op.example/test/img:1");
    assert_eq!(r.name, "op.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&img.manifest));
    // Without override_path, /v2 is appended to the URL's path.
    let e = failed(&d, "noop.example/test/img:1");
    assert!(
        e.message()
            .contains("/v2/upstream-a/v2/test/img/manifests/1"),
        "{}",
        e.message()
    );
}

#[test]
fn extra_headers_and_the_namespace_reach_the_mirror() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = tiny_image("headers");
    push(&reg, "test/img", "1", &img);
    let rec = Recorder::start(reg.host());
    let hosts = Hosts::new();
    hosts.hosts_toml(
        "hdr.example",
        &format!(
            "[host.\"{}\"]\n  header = {{ X-Corral-Mirror = \"m1\", X-Multi = [\"a\", \"b\"] }}\n",
            rec.server.url()
        ),
    );
    let d = Corrald::start_with_config(&hosts.corrald_config());
    pulled(&d, "hdr.example/test/img:1");
    let sent = rec.text();
    for want in [
        "x-corral-mirror: m1\r\n",
        "x-multi: a\r\n",
        "x-multi: b\r\n",
        "/v2/test/img/manifests/1?ns=hdr.example ",
    ] {
        assert!(sent.contains(want), "{want:?} not sent:\n{sent}");
    }
    // On every request, blobs too.
    let requests = sent.matches("get /v2/").count();
    assert!(requests >= 3, "{sent}");
    assert_eq!(
        sent.matches("x-corral-mirror: m1").count(),
        requests,
        "{sent}"
    );
}

#[test]
fn tls_hosts_with_a_ca_client_certificates_and_skip_verify() {
    if !require_root() {
        return;
    }
    let ca = TestCa::new();
    let server = ca.issue("registry", Usage::Server);
    let client = ca.issue("client", Usage::Client);
    let plain = Registry::start();
    let img = tiny_image("tls");
    push(&plain, "test/img", "1", &img);
    let tls = Registry::start_with(Options {
        tls: Some((server.cert.clone(), server.key.clone())),
        storage: Some(plain.storage()),
        ..Default::default()
    });
    let mtls = Registry::start_with(Options {
        tls: Some((server.cert.clone(), server.key.clone())),
        client_ca: Some(ca.cert()),
        storage: Some(plain.storage()),
    });
    let ca_pem = std::fs::read(ca.cert()).unwrap();
    let hosts = Hosts::new();
    let https = |r: &Registry| format!("https://127.0.0.1:{}", r.port());
    // `ca` relative to the host directory.
    hosts.file("ca.example", "ca.pem", &ca_pem);
    hosts.hosts_toml(
        "ca.example",
        &format!("server = \"{}\"\nca = \"ca.pem\"\n", https(&tls)),
    );
    hosts.hosts_toml("noca.example", &format!("server = \"{}\"\n", https(&tls)));
    hosts.hosts_toml(
        "skip.example",
        &format!("server = \"{}\"\nskip_verify = true\n", https(&tls)),
    );
    // docker's certs.d layout for the registry itself: no hosts.toml, a *.crt.
    hosts.file(&format!("127.0.0.1:{}", tls.port()), "ca.crt", &ca_pem);
    // Client certificates, for a mirror entry, by absolute path.
    hosts.hosts_toml(
        "mtls.example",
        &format!(
            "[host.\"{}\"]\n  ca = \"{}\"\n  client = [[\"{}\", \"{}\"]]\n",
            https(&mtls),
            ca.cert().display(),
            client.cert.display(),
            client.key.display()
        ),
    );
    hosts.hosts_toml(
        "nomtls.example",
        &format!(
            "[host.\"{}\"]\n  ca = \"{}\"\n",
            https(&mtls),
            ca.cert().display()
        ),
    );
    // A CA file that is not there.
    let missing_ca = hosts.hosts_toml(
        "missingca.example",
        &format!("server = \"{}\"\nca = \"nope.pem\"\n", https(&tls)),
    );
    let d = Corrald::start_with_config(&hosts.corrald_config());

    for reference in [
        "ca.example/test/img:1".to_string(),
        "skip.example/test/img:1".to_string(),
        format!("127.0.0.1:{}/test/img:1", tls.port()),
        "mtls.example/test/img:1".to_string(),
    ] {
        let r = pulled(&d, &reference);
        assert_eq!(r.name, reference);
        assert_eq!(target_digest(&r), sha256(&img.manifest), "{reference}");
    }

    let e = failed(&d, "noca.example/test/img:1");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    assert!(
        e.message().contains(&format!("127.0.0.1:{}", tls.port()))
            && e.message().contains("not trusted"),
        "{}",
        e.message()
    );
    let e = failed(&d, "nomtls.example/test/img:1");
    assert!(
        e.message().contains(&format!("127.0.0.1:{}", mtls.port())),
        "{}",
        e.message()
    );
    let e = failed(&d, "missingca.example/test/img:1");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("nope.pem") && e.message().contains(&missing_ca.display().to_string()),
        "{}",
        e.message()
    );
}

#[test]
fn bearer_tokens_are_fetched_from_each_hosts_own_service() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = tiny_image("tokens");
    push(&reg, "test/img", "1", &img);
    let empty = Registry::start();
    // The first mirror authenticates, then has nothing; the second has the image.
    let gate_a = TokenGate::start(empty.host(), "service-a", "token-a");
    let gate_b = TokenGate::start(reg.host(), "service-b", "token-b");
    let hosts = Hosts::new();
    hosts.hosts_toml(
        "auth.example",
        &format!(
            "server = \"{}\"\n[host.\"{}\"]\n",
            gate_b.server.url(),
            gate_a.server.url()
        ),
    );
    let d = Corrald::start_with_config(&hosts.corrald_config());
    let r = pulled(&d, "auth.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&img.manifest));
    let (qa, qb) = (
        gate_a.token_queries.lock().unwrap().clone(),
        gate_b.token_queries.lock().unwrap().clone(),
    );
    // Each host's token came from its own service, for the pull's repository.
    assert!(
        qa.iter().any(
            |q| q.contains("service=service-a") && q.contains("repository%3Atest%2Fimg%3Apull")
        ),
        "{qa:?}"
    );
    assert!(qb.iter().any(|q| q.contains("service=service-b")), "{qb:?}");
    assert!(gate_a.forwarded.load(Ordering::Relaxed) > 0);
    assert!(gate_b.forwarded.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_malformed_hosts_file_fails_the_pulls_of_its_registry_only() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = tiny_image("fine");
    push(&reg, "test/img", "1", &img);
    let hosts = Hosts::new();
    let broken = hosts.hosts_toml(
        "broken.example",
        "server = \"http://127.0.0.1:1\"\n[host.\"http://127.0.0.1:2\"\ncapabilities = []\n",
    );
    let badcap = hosts.hosts_toml(
        "badcap.example",
        "[host.\"http://127.0.0.1:2\"]\ncapabilities = [\"pull\", \"teleport\"]\n",
    );
    hosts.hosts_toml(
        "fine.example",
        &format!("server = \"http://{}\"\n", reg.host()),
    );
    // corrald starts with broken files in its hosts directory.
    let d = Corrald::start_with_config(&hosts.corrald_config());

    let e = failed(&d, "broken.example/test/img:1");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains(&broken.display().to_string()) && e.message().contains("line 2"),
        "{}",
        e.message()
    );
    let e = failed(&d, "badcap.example/test/img:1");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains(&badcap.display().to_string()) && e.message().contains("teleport"),
        "{}",
        e.message()
    );
    let r = pulled(&d, "fine.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&img.manifest));

    // Fixed, it works at the next pull: files are read per pull.
    std::fs::write(&broken, format!("server = \"http://{}\"\n", reg.host())).unwrap();
    let r = pulled(&d, "broken.example/test/img:1");
    assert_eq!(target_digest(&r), sha256(&img.manifest));
    let ls = d.ctr().ok(&["images", "ls", "-q"]);
    assert!(!ls.contains("badcap.example"), "{ls}");
}
