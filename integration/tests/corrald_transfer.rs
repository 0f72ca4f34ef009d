//! corrald's own pull (`corral.services.transfer.v1.Transfer/Pull`) against a real local
//! `docker-registry`, checked with the real ctr 1.6: the image it leaves is complete and
//! unpacked with the chain IDs ctr's own unpack gives; an index yields the platform's manifest;
//! bad references, an unreachable registry, a wrong digest served and a 401 are clear errors
//! that leave no image; a pull interrupted by kill -9 resumes its partial download; layers
//! that do not unpack leave nothing staged or active, nor does a kill -9 while layers are
//! staged; concurrent pulls of one image all succeed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration::image::{
    ImageBlobs, busybox_path, image_blobs, image_from_layer_tars, manifest_for_gzip_layers,
};
use integration::registry::Registry;
use integration::{Corrald, Ctr, require_root};
use protocol::grpc::corral::services::transfer::v1::transfer_client::TransferClient;
use protocol::grpc::corral::services::transfer::v1::*;
use protocol::grpc::tonic;
use sha2::{Digest, Sha256};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What one Pull call showed: every progress message, then the result or the error.
struct Pulled {
    events: Vec<BlobProgress>,
    result: Result<PullResult, tonic::Status>,
}

impl Pulled {
    fn ok(self) -> (Vec<BlobProgress>, PullResult) {
        match self.result {
            Ok(r) => (self.events, r),
            Err(e) => panic!("pull failed: {:?}: {}", e.code(), e.message()),
        }
    }

    /// The error (printed, so the test output shows what a user would read).
    fn err(self) -> tonic::Status {
        match self.result {
            Ok(r) => panic!("pull succeeded: {r:?}"),
            Err(e) => {
                eprintln!("pull error: {:?}: {}", e.code(), e.message());
                e
            }
        }
    }

    /// The states `digest` went through, in order.
    fn states(events: &[BlobProgress], digest: &str) -> Vec<BlobState> {
        events
            .iter()
            .filter(|e| e.digest == digest)
            .map(|e| e.state())
            .collect()
    }
}

fn request(reference: &str) -> PullRequest {
    PullRequest {
        reference: reference.to_string(),
        plain_http: true,
        ..Default::default()
    }
}

/// Runs one Pull against `d`, calling `on_event` for each progress message (return false to
/// stop reading).
fn pull_with(
    d: &Corrald,
    req: PullRequest,
    mut on_event: impl FnMut(&BlobProgress) -> bool,
) -> Pulled {
    let rt = runtime();
    let ns = d.namespace().to_string();
    let address = d.address();
    rt.block_on(async move {
        let channel = protocol::grpc::unix::connect(&address)
            .await
            .expect("connect to corrald");
        let mut client = TransferClient::new(channel);
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
        r.set_timeout(Duration::from_secs(300));
        let mut events = Vec::new();
        let mut stream = match client.pull(r).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                return Pulled {
                    events,
                    result: Err(e),
                };
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if let Some(b) = m.blob {
                        let go_on = on_event(&b);
                        events.push(b);
                        if !go_on {
                            return Pulled {
                                events,
                                result: Err(tonic::Status::cancelled("stopped by the test")),
                            };
                        }
                    }
                    if let Some(res) = m.result {
                        return Pulled {
                            events,
                            result: Ok(res),
                        };
                    }
                }
                Ok(None) => {
                    return Pulled {
                        events,
                        result: Err(tonic::Status::unknown("stream ended without a result")),
                    };
                }
                Err(e) => {
                    return Pulled {
                        events,
                        result: Err(e),
                    };
                }
            }
        }
    })
}

fn pull(d: &Corrald, req: PullRequest) -> Pulled {
    pull_with(d, req, |_| true)
}

/// Busybox plus two small layers with files.
fn multi_layer_image() -> ImageBlobs {
    let f = |p: &str, d: &str| (p.to_string(), d.as_bytes().to_vec());
    image_blobs(
        &busybox_path(),
        &[
            vec![f("etc/layer-two", "two\n"), f("tmp/a", "a\n")],
            vec![f("etc/layer-three", "three\n"), f("etc/layer-two", "2\n")],
        ],
    )
    .expect("cannot build the multi-layer test image")
}

fn push(reg: &Registry, name: &str, tag: &str, img: &ImageBlobs) {
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push(name, tag, &blobs, &img.manifest, MEDIA_MANIFEST)
        .expect("push to the registry");
}

fn assert_complete_and_unpacked(ctr: &Ctr, name: &str) {
    let row = ctr.images_check_row(name);
    assert!(
        row.contains("complete") && row.contains("true"),
        "not complete and unpacked: {row}"
    );
}

fn assert_no_images(ctr: &Ctr) {
    let ls = ctr.ok(&["images", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "images left behind: {ls}");
}

/// The line of `ctr content ls` for `digest` (it shows the labels).
fn content_row(ctr: &Ctr, digest: &str) -> String {
    let ls = ctr.ok(&["content", "ls"]);
    ls.lines()
        .find(|l| l.starts_with(digest))
        .unwrap_or_else(|| panic!("{digest} not in content ls:\n{ls}"))
        .to_string()
}

#[test]
fn pull_single_manifest_image_unpacks_like_ctr() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    push(&reg, "test/busybox", "multi", &img);
    let d = Corrald::start();
    let ctr = d.ctr();
    let reference = format!("{}/test/busybox:multi", reg.host());

    let (events, res) = pull(&d, request(&reference)).ok();
    let chain = img.chain_ids();
    assert_eq!(res.name, reference);
    let target = res.target.clone().unwrap();
    assert_eq!(
        (target.digest.as_str(), target.media_type.as_str()),
        (sha256(&img.manifest).as_str(), MEDIA_MANIFEST)
    );
    assert_eq!(target.size, img.manifest.len() as i64);
    assert_eq!(res.chain_id, *chain.last().unwrap());
    assert_eq!(res.snapshotter, "overlayfs");
    // Every layer was downloaded, then unpacked, in that order.
    for (i, l) in img.layers.iter().enumerate() {
        let states = Pulled::states(&events, &sha256(l));
        let pos = |s: BlobState| states.iter().position(|x| *x == s);
        let (down, unpacked) = (pos(BlobState::Downloaded), pos(BlobState::Unpacked));
        assert!(
            down.is_some() && unpacked.is_some() && down < unpacked,
            "layer {i}: {states:?}"
        );
        let ev = events.iter().find(|e| e.digest == sha256(l)).unwrap();
        assert_eq!(
            (ev.kind(), ev.index, ev.total),
            (BlobKind::Layer, i as u32, l.len() as i64)
        );
    }

    // What ctr sees: the image, complete and unpacked, the same chain ctr would unpack to, and
    // the labels ctr's pull leaves.
    let ls = ctr.ok(&["images", "ls"]);
    assert!(
        ls.contains(&reference) && ls.contains(&sha256(&img.manifest)),
        "{ls}"
    );
    assert_complete_and_unpacked(ctr, &reference);
    ctr.assert_snapshot_chain(&chain);
    let source = format!(
        "containerd.io/distribution.source.{}=test/busybox",
        reg.host()
    );
    let m = content_row(ctr, &sha256(&img.manifest));
    assert!(
        m.contains(&format!(
            "containerd.io/gc.ref.content.config={}",
            sha256(&img.config)
        )) && m.contains(&format!(
            "containerd.io/gc.ref.content.l.2={}",
            sha256(&img.layers[2])
        )) && m.contains(&source),
        "{m}"
    );
    let c = content_row(ctr, &sha256(&img.config));
    assert!(
        c.contains(&format!(
            "containerd.io/gc.ref.snapshot.overlayfs={}",
            chain.last().unwrap()
        )),
        "{c}"
    );
    for (l, t) in img.layers.iter().zip(&img.layer_tars) {
        let row = content_row(ctr, &sha256(l));
        assert!(
            row.contains(&format!("containerd.io/uncompressed={}", sha256(t)))
                && row.contains(&source),
            "{row}"
        );
    }
    // The pull's lease is gone: nothing but the image holds the blobs now.
    let leases = ctr.ok(&["leases", "ls"]);
    assert!(!leases.contains("corral-pull"), "{leases}");

    // Again: everything exists, the image is updated in place.
    let (events, res) = pull(&d, request(&reference)).ok();
    assert_eq!(res.target.unwrap().digest, sha256(&img.manifest));
    for l in &img.layers {
        let states = Pulled::states(&events, &sha256(l));
        assert!(states.contains(&BlobState::Exists), "{states:?}");
        assert!(!states.contains(&BlobState::Downloading), "{states:?}");
    }
    assert_complete_and_unpacked(ctr, &reference);

    // Removing the image and collecting garbage takes everything (nothing was left dangling
    // by a lease or a wrong label), and ctr can pull the same image again over ours.
    ctr.ok(&["images", "rm", "--sync", &reference]);
    let content = ctr.ok(&["content", "ls", "-q"]);
    assert!(content.trim().is_empty(), "{content}");
    let out = ctr.run(&["images", "pull", "--plain-http", &reference]);
    assert!(out.success(), "{}", out.describe());
    ctr.assert_snapshot_chain(&chain);
}

/// The image for another architecture: same layers, another config (so another manifest).
fn other_arch(img: &ImageBlobs, arch: &str) -> (Vec<u8>, Vec<u8>) {
    let mut config: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    config["architecture"] = arch.into();
    let config = serde_json::to_vec(&config).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    manifest["config"]["digest"] = sha256(&config).into();
    manifest["config"]["size"] = config.len().into();
    (serde_json::to_vec(&manifest).unwrap(), config)
}

#[test]
fn pull_index_chooses_the_platform() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    let (arm_manifest, arm_config) = other_arch(&img, "arm64");
    let amd = sha256(&img.manifest);
    let arm = sha256(&arm_manifest);
    push(&reg, "test/multi", &amd, &img);
    reg.push(
        "test/multi",
        &arm,
        &[&arm_config],
        &arm_manifest,
        MEDIA_MANIFEST,
    )
    .unwrap();
    let entry = |m: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": MEDIA_MANIFEST, "digest": sha256(m), "size": m.len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [entry(&arm_manifest, "arm64"), entry(&img.manifest, "amd64")],
    }))
    .unwrap();
    reg.push("test/multi", "v1", &[], &index, MEDIA_INDEX)
        .unwrap();
    let d = Corrald::start();
    let ctr = d.ctr();
    let reference = format!("{}/test/multi:v1", reg.host());

    // A platform the index does not have: NotFound naming what it has; no image.
    let mut req = request(&reference);
    req.platform = "linux/s390x".into();
    let e = pull(&d, req).err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    assert!(
        e.message().contains("linux/s390x") && e.message().contains("linux/arm64, linux/amd64"),
        "{}",
        e.message()
    );
    assert_no_images(ctr);

    // The default platform: the amd64 manifest, under the index.
    let (events, res) = pull(&d, request(&reference)).ok();
    let target = res.target.unwrap();
    assert_eq!(
        (target.digest.as_str(), target.media_type.as_str()),
        (sha256(&index).as_str(), MEDIA_INDEX)
    );
    assert_eq!(res.manifest.unwrap().digest, amd);
    assert!(
        events
            .iter()
            .any(|e| e.kind() == BlobKind::Index && e.digest == sha256(&index)),
        "no index event"
    );
    assert!(
        !events.iter().any(|e| e.digest == arm),
        "fetched the arm64 manifest"
    );
    assert_complete_and_unpacked(ctr, &reference);
    ctr.assert_snapshot_chain(&img.chain_ids());
    let row = content_row(ctr, &sha256(&index));
    assert!(
        row.contains(&format!("containerd.io/gc.ref.content.m.0={amd}")),
        "{row}"
    );

    // Asked for by platform, the other manifest (same layers: they exist already).
    let mut req = request(&reference);
    req.platform = "linux/arm64".into();
    req.unpack = Some(false);
    let (_, res) = pull(&d, req).ok();
    assert_eq!(res.manifest.unwrap().digest, arm);
    assert!(res.chain_id.is_empty());
    let content = ctr.ok(&["content", "ls", "-q"]);
    assert!(content.contains(&sha256(&arm_config)), "{content}");
}

/// A server on 127.0.0.1 that answers every request with 401 and a Basic challenge.
struct Unauthorized {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Unauthorized {
    fn start() -> Unauthorized {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                let _ = write!(
                    c,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"corral-test\"\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Unauthorized { port, stop }
    }
}

impl Drop for Unauthorized {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn failures_are_clear_and_leave_no_image() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    push(&reg, "test/busybox", "good", &img);
    let d = Corrald::start();
    let ctr = d.ctr();

    // A bad reference: InvalidArgument naming it.
    for bad in ["Upper/Case", "a//b", "x@sha256:123"] {
        let e = pull(&d, request(bad)).err();
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{bad}: {}",
            e.message()
        );
        assert!(e.message().contains(bad), "{}", e.message());
    }

    // An unreachable registry (a port nobody listens on): Unavailable naming the host.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let e = pull(&d, request(&format!("{host}/x/y:1"))).err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    assert!(e.message().contains(&host), "{}", e.message());

    // HTTPS unless the user names the host as plain HTTP: the plain registry cannot answer.
    let mut req = request(&format!("{}/test/busybox:good", reg.host()));
    req.plain_http = false;
    let e = pull(&d, req).err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    assert!(
        e.message().contains(&reg.host()) && e.message().contains("plain HTTP"),
        "{}",
        e.message()
    );

    // Unknown manifest: NotFound.
    let e = pull(&d, request(&format!("{}/test/none:latest", reg.host()))).err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    assert!(e.message().contains(&reg.host()), "{}", e.message());

    // 401 without credentials: Unauthenticated naming the host; wrong credentials too.
    let auth = Unauthorized::start();
    let host = format!("127.0.0.1:{}", auth.port);
    let e = pull(&d, request(&format!("{host}/private/img:1"))).err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{}", e.message());
    assert!(e.message().contains(&host), "{}", e.message());
    let mut req = request(&format!("{host}/private/img:1"));
    req.credentials = Some(Credentials {
        username: "u".into(),
        password: "wrong".into(),
        identity_token: String::new(),
    });
    let e = pull(&d, req).err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{}", e.message());

    // A layer whose bytes on the registry do not match its digest: the error names both
    // digests, and neither the blob nor the image is stored.
    let bad_layer = &img.layers[1];
    let hex = &sha256(bad_layer)[7..];
    let data = reg.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut corrupt = std::fs::read(&data).expect("blob file in the registry storage");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    std::fs::write(&data, &corrupt).unwrap();
    let e = pull(&d, request(&format!("{}/test/busybox:good", reg.host()))).err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{}", e.message());
    assert!(
        e.message().contains(&sha256(bad_layer)) && e.message().contains(&sha256(&corrupt)),
        "{}",
        e.message()
    );
    let content = ctr.ok(&["content", "ls", "-q"]);
    assert!(!content.contains(&sha256(bad_layer)), "{content}");
    assert!(!content.contains(&sha256(&corrupt)), "{content}");
    let active = ctr.ok(&["content", "active"]);
    assert!(
        !active.contains(hex),
        "the bad bytes were kept for resume: {active}"
    );

    assert_no_images(ctr);
    let leases = ctr.ok(&["leases", "ls"]);
    assert!(!leases.contains("corral-pull"), "{leases}");
}

/// A TCP proxy to `upstream` that sends answers at about `rate` bytes per second, so a pull
/// is slow enough to interrupt.
struct SlowProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    fn start(upstream: String, rate: usize) -> SlowProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut d1, mut u1) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut d1, &mut u1);
                    let _ = u1.shutdown(std::net::Shutdown::Write);
                });
                let (mut d2, mut u2, s2) = (down, up, s.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let start = Instant::now();
                    let mut sent = 0usize;
                    while !s2.load(Ordering::Relaxed) {
                        let n = match u2.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if d2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        // Rate limiting, not synchronisation: stay at `rate` on average.
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = d2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowProxy { port, stop }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `len` bytes that gzip cannot shrink (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn kill_9_mid_pull_then_the_next_pull_resumes() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    // Busybox below a 40 MB layer of noise.
    let mut tars = multi_layer_image().layer_tars;
    tars.truncate(1);
    let mut b = tar::Builder::new(Vec::new());
    let big = noise(40 << 20, 0x9e37_79b9_7f4a_7c15);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(big.len() as u64);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "big.bin", big.as_slice()).unwrap();
    tars.push(b.into_inner().unwrap());
    let img = image_from_layer_tars(tars).unwrap();
    push(&reg, "test/big", "v1", &img);
    let big_digest = sha256(&img.layers[1]);
    let big_size = img.layers[1].len() as i64;

    // 8 MB/s through the proxy: about five seconds for the big layer.
    let proxy = SlowProxy::start(reg.host(), 8 << 20);
    let reference = format!("{}/test/big:v1", proxy.host());
    let mut d = Corrald::start();

    // Stop reading once a quarter of the big layer is in, and kill corrald right then.
    let interrupted = pull_with(&d, request(&reference), |e| {
        !(e.digest == big_digest && e.state() == BlobState::Downloading && e.offset > big_size / 4)
    });
    assert!(
        interrupted
            .events
            .iter()
            .any(|e| e.digest == big_digest && e.offset > 0),
        "never saw the big layer downloading"
    );
    d.kill_9();
    d.restart();
    let ctr = d.ctr();
    assert_no_images(ctr);
    // The partial download survived, under the ref containerd would use.
    let active = ctr.ok(&["content", "active"]);
    let row = active
        .lines()
        .find(|l| l.starts_with(&format!("layer-{big_digest}")))
        .unwrap_or_else(|| panic!("no ingest of the big layer after the restart:\n{active}"));
    let held = row.split_whitespace().nth(1).unwrap_or("");
    assert!(held != "0" && held != "0B", "empty ingest: {row}");

    // The next pull starts the big layer where the ingest stopped, and completes.
    let (events, res) = pull(&d, request(&reference)).ok();
    let first = events
        .iter()
        .find(|e| e.digest == big_digest && e.state() == BlobState::Downloading)
        .expect("the big layer was downloaded again");
    assert!(
        first.offset > 0,
        "the big layer restarted from 0 instead of resuming: {first:?}\n{}",
        d.log_tail(20)
    );
    assert_eq!(res.chain_id, *img.chain_ids().last().unwrap());
    assert_complete_and_unpacked(ctr, &reference);
    ctr.assert_snapshot_chain(&img.chain_ids());
    let active = ctr.ok(&["content", "active"]);
    assert!(active.lines().count() <= 1, "ingests left: {active}");
}

/// `ctr events` filtered to what a pull publishes (and the marker namespaces); returns once the
/// subscription is live, which a marker namespace's `/namespaces/delete` proves.
fn live_events(d: &Corrald) -> integration::EventStream {
    let s = integration::EventStream::spawn(
        d.ctr(),
        &[r#"topic~="/images/|/snapshot/|/namespaces/delete""#],
    );
    for attempt in 0..40 {
        let marker = format!("{}-mark{attempt}", d.namespace());
        d.ctr().ok(&["namespaces", "create", &marker]);
        d.ctr().ok(&["namespaces", "rm", &marker]);
        let seen = s.try_wait_for(Duration::from_millis(500), |evs| {
            evs.iter()
                .any(|e| e.topic == "/namespaces/delete" && e.payload["name"] == marker.as_str())
                .then_some(())
        });
        if seen.is_some() {
            return s;
        }
    }
    panic!("`ctr events` did not deliver a marker /namespaces/delete within 20 s");
}

#[test]
fn pull_publishes_image_and_snapshot_events() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    push(&reg, "test/busybox", "ev", &img);
    let d = Corrald::start();
    let events = live_events(&d);
    let reference = format!("{}/test/busybox:ev", reg.host());
    pull(&d, request(&reference)).ok();
    let chain = img.chain_ids();
    events.wait_for(
        "/images/create and a /snapshot/commit per layer",
        Duration::from_secs(20),
        |evs| {
            let ours = |topic: &str| {
                evs.iter()
                    .filter(|e| e.namespace == d.namespace() && e.topic == topic)
                    .collect::<Vec<_>>()
            };
            let created = ours("/images/create")
                .iter()
                .any(|e| e.payload["name"] == reference.as_str());
            let commits = ours("/snapshot/commit");
            let all = chain
                .iter()
                .all(|c| commits.iter().any(|e| e.payload["name"] == c.as_str()));
            let prepares = ours("/snapshot/prepare").len() == chain.len();
            (created && all && prepares).then_some(())
        },
    );
    // A second pull of the same name updates the image.
    pull(&d, request(&reference)).ok();
    events.wait_for("/images/update", Duration::from_secs(20), |evs| {
        evs.iter()
            .any(|e| e.topic == "/images/update" && e.payload["name"] == reference.as_str())
            .then_some(())
    });
}

/// The overlayfs snapshotter's staging area under `d`'s root: layers extracted ahead of their
/// parents.
fn staged(d: &Corrald) -> Vec<String> {
    let dir = d
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/staging");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Snapshots ctr lists as Active (an unpack's extract snapshots while it works).
fn active_snapshots(ctr: &Ctr) -> Vec<String> {
    ctr.ok(&["snapshots", "ls"])
        .lines()
        .filter(|l| l.contains("Active"))
        .map(str::to_string)
        .collect()
}

/// The image `img` with layer `index` replaced by `layer` (already compressed) and the diff
/// IDs `diff_ids`: a manifest whose digests all match what the registry serves.
fn reassembled(img: &ImageBlobs, index: usize, layer: Vec<u8>, diff_ids: &[String]) -> ImageBlobs {
    let mut layers = img.layers.clone();
    layers[index] = layer;
    let (manifest, config) = manifest_for_gzip_layers(&layers, diff_ids).unwrap();
    ImageBlobs {
        manifest,
        config,
        layers,
        layer_tars: img.layer_tars.clone(),
    }
}

#[test]
fn layers_that_do_not_unpack_leave_nothing_staged_active_or_imaged() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    let diff_ids: Vec<String> = img.layer_tars.iter().map(|t| sha256(t)).collect();
    // Layer 1 is corrupt gzip that the registry serves under its own (right) digest.
    let mut corrupt = img.layers[1].clone();
    let n = corrupt.len();
    corrupt.truncate(n / 2);
    corrupt.extend_from_slice(&[0x55; 64]);
    let corrupt_digest = sha256(&corrupt);
    push(
        &reg,
        "test/bad",
        "gzip",
        &reassembled(&img, 1, corrupt, &diff_ids),
    );
    // The config says layer 2 unpacks to something else.
    let mut wrong = diff_ids.clone();
    wrong[2] = sha256(b"not this layer");
    push(
        &reg,
        "test/bad",
        "diffid",
        &reassembled(&img, 2, img.layers[2].clone(), &wrong),
    );
    let d = Corrald::start();
    let ctr = d.ctr();

    let e = pull(&d, request(&format!("{}/test/bad:gzip", reg.host()))).err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains(&corrupt_digest) && e.message().contains("gzip"),
        "{}",
        e.message()
    );
    assert!(staged(&d).is_empty(), "{:?}", staged(&d));
    assert!(
        active_snapshots(ctr).is_empty(),
        "{:?}",
        active_snapshots(ctr)
    );
    assert_no_images(ctr);

    let e = pull(&d, request(&format!("{}/test/bad:diffid", reg.host()))).err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{}", e.message());
    assert!(
        e.message().contains(&diff_ids[2]) && e.message().contains(&wrong[2]),
        "{}",
        e.message()
    );
    assert!(staged(&d).is_empty(), "{:?}", staged(&d));
    assert!(
        active_snapshots(ctr).is_empty(),
        "{:?}",
        active_snapshots(ctr)
    );
    assert_no_images(ctr);
    let leases = ctr.ok(&["leases", "ls"]);
    assert!(!leases.contains("corral-pull"), "{leases}");
}

#[test]
fn kill_9_while_layers_are_staged_leaves_nothing_after_restart() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    // A slow 8 MB bottom layer: the small layers above it are staged long before it is in.
    let mut b = tar::Builder::new(Vec::new());
    let big = noise(8 << 20, 0x2545_f491_4f6c_dd1d);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(big.len() as u64);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "big.bin", big.as_slice()).unwrap();
    let mut tars = vec![b.into_inner().unwrap()];
    tars.extend(multi_layer_image().layer_tars.into_iter().skip(1));
    let img = image_from_layer_tars(tars).unwrap();
    push(&reg, "test/slow", "v1", &img);
    // 1 MB/s through the proxy: about eight seconds for the bottom layer.
    let proxy = SlowProxy::start(reg.host(), 1 << 20);
    let reference = format!("{}/test/slow:v1", proxy.host());
    let mut d = Corrald::start();

    // The bottom layer's progress comes every 100 ms: look at the staging area each time.
    let root = d.root();
    let seen = pull_with(&d, request(&reference), |_| {
        std::fs::read_dir(root.join("io.containerd.snapshotter.v1.overlayfs/staging"))
            .map(|mut r| r.next().is_none())
            .unwrap_or(true)
    });
    assert!(
        seen.result.is_err() && !staged(&d).is_empty(),
        "the pull ended before a layer was staged: {:?}",
        seen.result
    );
    d.kill_9();
    d.restart();
    assert!(staged(&d).is_empty(), "{:?}", staged(&d));
    let ctr = d.ctr();
    assert_no_images(ctr);
    drop(proxy);
    let (_, res) = pull(&d, request(&format!("{}/test/slow:v1", reg.host()))).ok();
    assert_eq!(res.chain_id, *img.chain_ids().last().unwrap());
    ctr.assert_snapshot_chain(&img.chain_ids());
    assert!(staged(&d).is_empty(), "{:?}", staged(&d));
}

#[test]
fn concurrent_pulls_of_one_image_all_succeed() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    push(&reg, "test/busybox", "same", &img);
    let d = Corrald::start();
    let reference = format!("{}/test/busybox:same", reg.host());
    let results: Vec<PullResult> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| pull(&d, request(&reference)).ok().1))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let chain = img.chain_ids();
    for r in &results {
        assert_eq!(r.chain_id, *chain.last().unwrap());
    }
    let ctr = d.ctr();
    assert_complete_and_unpacked(ctr, &reference);
    ctr.assert_snapshot_chain(&chain);
    assert!(staged(&d).is_empty(), "{:?}", staged(&d));
    assert!(
        active_snapshots(ctr).is_empty(),
        "{:?}",
        active_snapshots(ctr)
    );
}
