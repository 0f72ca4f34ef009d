//! Image pull from a local registry: corrald's Transfer/Pull beside `ctr images pull` on
//! containerd 1.6, both downloading and unpacking the same image into a fresh daemon.
//!
//! The image (built here, deterministic) has 4 gzip layers, about 280 MB uncompressed: many
//! small files and some large ones, contents about 2.3x compressible, like a distribution base
//! plus an application. Each side pulls `PULL_BENCH_RUNS` (default 3) times, each time into a
//! new daemon with empty state; the table shows the median wall time and the uncompressed
//! throughput. Needs root, `docker-registry`, containerd + ctr, and a release corrald
//! (`CORRALD_BIN`). Run with `make bench`.

use std::io::Write;
use std::time::{Duration, Instant};

use integration::image::{ImageBlobs, image_from_layer_tars};
use integration::registry::Registry;
use integration::{Containerd, Corrald, Runtime, require_root};
use protocol::grpc::corral::services::transfer::v1::PullRequest;
use protocol::grpc::corral::services::transfer::v1::transfer_client::TransferClient;
use protocol::grpc::tonic;

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn runs() -> usize {
    std::env::var("PULL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `len` bytes: 80% words from a small vocabulary, 20% noise, in 4 KiB runs.
fn contents(rng: &mut Rng, vocab: &[Vec<u8>], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let end = (out.len() + 4096).min(len);
        if rng.next().is_multiple_of(5) {
            while out.len() < end {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
        } else {
            while out.len() < end {
                out.extend_from_slice(&vocab[(rng.next() % vocab.len() as u64) as usize]);
                out.push(b' ');
            }
        }
    }
    out.truncate(len);
    out
}

/// One layer tar of about `size` bytes of file data: half in files of 1-64 KiB spread over
/// directories, half in 8 MiB files.
fn layer(rng: &mut Rng, vocab: &[Vec<u8>], n: usize, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir_header = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    let root = format!("layer{n}");
    dir_header(&mut b, &format!("{root}/"));
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut small = 0;
    let mut i = 0usize;
    while small < size / 2 {
        if i.is_multiple_of(100) {
            dir_header(&mut b, &format!("{root}/d{}/", i / 100));
        }
        let len = 1024 + (rng.next() % (63 * 1024)) as usize;
        let data = contents(rng, vocab, len);
        file(&mut b, &format!("{root}/d{}/f{i}", i / 100), &data);
        small += len;
        i += 1;
    }
    let mut big = 0;
    let mut j = 0;
    while small + big < size {
        let len = (8 << 20).min(size - small - big).max(1);
        let data = contents(rng, vocab, len);
        file(&mut b, &format!("{root}/big{j}"), &data);
        big += len;
        j += 1;
    }
    b.into_inner().unwrap()
}

fn build_image() -> ImageBlobs {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let vocab: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let len = 3 + (rng.next() % 8) as usize;
            (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect()
        })
        .collect();
    let sizes = [140usize << 20, 70 << 20, 50 << 20, 20 << 20];
    let tars = sizes
        .iter()
        .enumerate()
        .map(|(n, s)| layer(&mut rng, &vocab, n, *s))
        .collect();
    image_from_layer_tars(tars).expect("build the bench image")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn corral_pull(d: &Corrald, reference: &str) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ns, address) = (d.namespace().to_string(), d.address());
    rt.block_on(async move {
        let channel = protocol::grpc::unix::connect(&address).await.unwrap();
        let mut client = TransferClient::new(channel);
        let mut r = tonic::Request::new(PullRequest {
            reference: reference.to_string(),
            plain_http: true,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
        let start = Instant::now();
        let mut stream = client.pull(r).await.expect("pull").into_inner();
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.result.is_some() => return start.elapsed(),
                Ok(Some(_)) => {}
                Ok(None) => panic!("pull stream ended without a result"),
                Err(e) => panic!("corral pull failed: {e:?}"),
            }
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if !require_root() {
        eprintln!("pull bench: needs root, skipped");
        return;
    }
    let t = Instant::now();
    let img = build_image();
    let uncompressed: usize = img.layer_tars.iter().map(Vec::len).sum();
    let compressed: usize = img.layers.iter().map(Vec::len).sum();
    eprintln!(
        "image: 4 layers, {:.0} MiB uncompressed, {:.0} MiB gzip (built in {:.1?})",
        uncompressed as f64 / (1 << 20) as f64,
        compressed as f64 / (1 << 20) as f64,
        t.elapsed()
    );
    let reg = Registry::start();
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push("bench/image", "v1", &blobs, &img.manifest, MEDIA_MANIFEST)
        .expect("push the bench image");
    let reference = format!("{}/bench/image:v1", reg.host());

    let mut ctr_times = Vec::new();
    let mut corral_times = Vec::new();
    for run in 0..runs() {
        let c = Containerd::start(Runtime::Runc);
        let start = Instant::now();
        let out = c.ctr().run(&["images", "pull", "--plain-http", &reference]);
        let took = start.elapsed();
        assert!(out.success(), "ctr images pull: {}", out.describe());
        ctr_times.push(took);
        drop(c);

        let d = Corrald::start();
        let took2 = corral_pull(&d, &reference);
        let check = d.ctr().ok(&["images", "check"]);
        assert!(
            check.contains("complete") && check.contains("true"),
            "corral's image is not complete and unpacked: {check}"
        );
        corral_times.push(took2);
        if std::env::var_os("PULL_BENCH_LOG").is_some() {
            eprintln!("{}", d.log_tail(30));
        }
        drop(d);
        eprintln!("run {run}: ctr {took:.2?}, corral {took2:.2?}");
    }
    let mib = uncompressed as f64 / (1 << 20) as f64;
    let (ct, rt) = (median(ctr_times), median(corral_times));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n| pull of a 4-layer gzip image ({mib:.0} MiB uncompressed) | median of {} | MiB/s |",
        runs()
    )
    .unwrap();
    writeln!(out, "|---|---|---|").unwrap();
    for (name, t) in [
        ("containerd 1.6 `ctr images pull --plain-http`", ct),
        ("corrald Transfer/Pull", rt),
    ] {
        writeln!(
            out,
            "| {name} | {:.2} s | {:.0} |",
            t.as_secs_f64(),
            mib / t.as_secs_f64()
        )
        .unwrap();
    }
    writeln!(
        out,
        "| speed-up | {:.2}x | |",
        ct.as_secs_f64() / rt.as_secs_f64()
    )
    .unwrap();
}
