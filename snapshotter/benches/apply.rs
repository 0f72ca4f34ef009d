//! Layer apply throughput: 4 gzip layers (~280 MB compressed) made from real files on this
//! machine, applied in order into a fresh directory, against `tar -xzf` of the same layers.
//!
//! Run: `cargo bench -p snapshotter --bench apply`. Knobs: `CORRAL_BENCH_LAYER_MB` (compressed
//! MB per layer, default 70), `CORRAL_BENCH_RUNS` (default 3), `CORRAL_BENCH_ONLY=corral|decode` (only
//! our apply, or only decompress+hash), `CORRAL_BENCH_LAYERS=<dir>` (keep the generated layers there and reuse them
//! on the next run), `CORRAL_BENCH_FS=host` (extract onto the host filesystem under the temp
//! dir instead of a fresh loop-mounted ext4, which is the default as root). Prints MiB/s of uncompressed data; containerd 1.6 does about 44 MiB/s on
//! the reference machine.
//!
//! As root it also unpacks the 4 layers into an overlayfs snapshotter both ways: sequentially
//! (prepare on the parent, apply onto the mounts, commit, one layer after the other) and staged
//! (every layer extracted at once, at most one per CPU and at least two, adopted and committed in
//! chain order: what corrald's pull and import do on overlayfs, see `snapshotter::staging`).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use snapshotter::apply::{self, WhiteoutMode};
use snapshotter::{Labels, OverlaySnapshotter, Snapshotter, StagedLayer};

const GZIP_MT: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Regular files, dirs and symlinks under `roots`, in a stable order, skipping huge files.
fn source_files(roots: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = roots.iter().rev().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            out.push(p.clone());
            let Ok(rd) = std::fs::read_dir(&p) else {
                continue;
            };
            let mut kids: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            kids.sort();
            stack.extend(kids.into_iter().rev());
        } else if (m.is_file() && m.len() < 16 << 20) || m.file_type().is_symlink() {
            out.push(p);
        }
    }
    out
}

/// Writes layer `idx` from `files[*next..]` until it reaches `target` compressed bytes.
/// Returns the uncompressed size.
fn make_layer(
    path: &Path,
    idx: usize,
    files: &[PathBuf],
    next: &mut usize,
    target: u64,
    whiteouts: &[String],
) -> u64 {
    let out = Counting {
        inner: BufWriter::new(File::create(path).unwrap()),
        n: 0,
    };
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
    let mut b = tar::Builder::new(Counting { inner: gz, n: 0 });
    b.follow_symlinks(false);
    for w in whiteouts {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, w, io::empty()).unwrap();
    }
    let mut wrapped = 0;
    while b.get_ref().inner.get_ref().n < target {
        if *next >= files.len() {
            *next = 0;
            wrapped += 1;
        }
        let p = &files[*next];
        *next += 1;
        let rel = p.strip_prefix("/").unwrap();
        // Variations on a second pass keep paths distinct.
        let name = if wrapped > 0 {
            Path::new(&format!("v{idx}-{wrapped}")).join(rel)
        } else {
            rel.to_path_buf()
        };
        if b.append_path_with_name(p, &name).is_err() {
            continue; // unreadable file: skip
        }
    }
    let uncompressed = {
        b.finish().unwrap();
        let c = b.into_inner().unwrap();
        let n = c.n;
        let mut out = c.inner.finish().unwrap();
        out.flush().unwrap();
        n
    };
    println!(
        "  layer {idx}: {:.1} MB compressed, {:.1} MB uncompressed",
        std::fs::metadata(path).unwrap().len() as f64 / 1e6,
        uncompressed as f64 / 1e6
    );
    uncompressed
}

fn sync() {
    unsafe { libc::sync() };
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// A new, empty destination. Nothing is deleted between timed runs: without a journal, ext4
/// skips inodes freed in the last 5 s (300 s while their inode-table block is dirty, which our
/// own creates make it) when allocating, scanning them one by one (`recently_deleted`), so
/// deleting the previous run's 100k files would slow every create of the next run.
fn fresh(work: &Path, n: &mut usize) -> PathBuf {
    *n += 1;
    let dir = work.join(format!("rootfs{n}"));
    std::fs::create_dir(&dir).unwrap();
    sync();
    dir
}

/// A fresh ext4 (default mkfs options, with journal) on a sparse loop image: every run of the
/// benchmark starts from the same filesystem state, whatever the host filesystem went through.
struct LoopFs {
    mnt: tempfile::TempDir,
}

impl LoopFs {
    fn new(work: &Path) -> Option<LoopFs> {
        if unsafe { libc::geteuid() } != 0
            || std::env::var("CORRAL_BENCH_FS").as_deref() == Ok("host")
        {
            return None;
        }
        let img = work.join("fs.img");
        File::create(&img).unwrap().set_len(16 << 30).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("mkfs.ext4 unavailable: extracting onto the host filesystem");
            return None;
        }
        let mnt = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(mnt.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -o loop");
        Some(LoopFs { mnt })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt.path()).status();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a test run must not spend minutes generating and extracting 280 MB.
    if !std::env::args().any(|a| a == "--bench") {
        println!("apply benchmark: run with `cargo bench -p snapshotter --bench apply`");
        return;
    }
    let per_layer: u64 = std::env::var("CORRAL_BENCH_LAYER_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(70)
        * 1_000_000;
    let runs: usize = std::env::var("CORRAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let work = tempfile::Builder::new()
        .prefix("corral-apply-bench-")
        .tempdir()
        .unwrap();
    println!(
        "generating 4 gzip layers of ~{} MB in {}",
        per_layer / 1_000_000,
        work.path().display()
    );
    let t = Instant::now();
    let layer_dir = std::env::var_os("CORRAL_BENCH_LAYERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().to_path_buf());
    std::fs::create_dir_all(&layer_dir).unwrap();
    let mut files_cache: Option<Vec<PathBuf>> = None;
    let mut next = 0;
    let mut layers = Vec::new();
    let mut total = 0u64;
    for i in 0..4 {
        let p = layer_dir.join(format!("layer{i}-{}.tar.gz", per_layer / 1_000_000));
        let size_file = p.with_extension("size");
        if let Ok(s) = std::fs::read_to_string(&size_file) {
            total += s.trim().parse::<u64>().unwrap();
            layers.push(p);
            continue;
        }
        let files = files_cache.get_or_insert_with(|| source_files(&["/usr/share", "/usr/lib"]));
        // The last layer deletes a few files of the first, as real images do.
        let wh: Vec<String> = if i == 3 {
            files
                .iter()
                .take(200)
                .filter(|p| p.is_file())
                .take(20)
                .map(|p| {
                    let rel = p.strip_prefix("/").unwrap();
                    let name = rel.file_name().unwrap().to_string_lossy();
                    rel.with_file_name(format!(".wh.{name}"))
                        .display()
                        .to_string()
                })
                .collect()
        } else {
            Vec::new()
        };
        let size = make_layer(&p, i, files, &mut next, per_layer, &wh);
        std::fs::write(&size_file, size.to_string()).unwrap();
        total += size;
        layers.push(p);
    }
    let compressed: u64 = layers
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "generated in {:.1}s: {:.1} MB compressed, {:.1} MiB uncompressed",
        t.elapsed().as_secs_f64(),
        compressed as f64 / 1e6,
        total as f64 / 1048576.0
    );

    // Decompress + hash only: the reader thread's ceiling.
    let only = std::env::var("CORRAL_BENCH_ONLY").unwrap_or_default();
    let only_ours = only == "corral";
    let apply_runs = if only == "decode" { 0 } else { runs };
    let other_runs = if only_ours { 0 } else { runs };
    let mut decode = Vec::new();
    for _ in 0..other_runs {
        let t = Instant::now();
        for l in &layers {
            let mut d =
                flate2::read::MultiGzDecoder::new(io::BufReader::new(File::open(l).unwrap()));
            let mut buf = vec![0u8; 256 * 1024];
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            loop {
                let n = d.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut h, &buf[..n]);
            }
        }
        decode.push(mib_s(total, t.elapsed()));
    }

    let loopfs = LoopFs::new(work.path());
    let dest_root = loopfs.as_ref().map_or(work.path(), |l| l.mnt.path());
    println!(
        "extracting onto {}",
        if loopfs.is_some() {
            "a fresh loop-mounted ext4"
        } else {
            "the host filesystem"
        }
    );
    // Interleaved so that both see the same filesystem state on average.
    let mut ours = Vec::new();
    let mut tar = Vec::new();
    let mut n = 0;
    for _ in 0..apply_runs {
        let dest = fresh(dest_root, &mut n);
        let t = Instant::now();
        for l in &layers {
            apply::apply_layer(
                File::open(l).unwrap(),
                Some(GZIP_MT),
                &dest,
                WhiteoutMode::Delete,
            )
            .unwrap();
        }
        ours.push(mib_s(total, t.elapsed()));
        if only_ours {
            continue;
        }
        let dest = fresh(dest_root, &mut n);
        let t = Instant::now();
        for l in &layers {
            let st = Command::new("tar")
                .arg("-xzf")
                .arg(l)
                .arg("-C")
                .arg(&dest)
                .status()
                .unwrap();
            assert!(st.success(), "tar -xzf failed");
        }
        tar.push(mib_s(total, t.elapsed()));
    }

    println!(
        "decompress+sha256 only : median {:7.1} MiB/s  runs {decode:.1?}",
        median(decode.clone())
    );
    println!(
        "corral apply_layer x4  : median {:7.1} MiB/s  runs {ours:.1?}",
        median(ours.clone())
    );
    println!(
        "tar -xzf x4            : median {:7.1} MiB/s  runs {tar:.1?}",
        median(tar.clone())
    );
    println!("target: >= 88 MiB/s (2x containerd 1.6's ~44 MiB/s on this machine)");

    if unsafe { libc::geteuid() } != 0 || only == "decode" {
        return;
    }
    let (mut seq, mut staged) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let root = fresh(dest_root, &mut n);
        seq.push(mib_s(total, unpack_sequential(&root, &layers)));
        let root = fresh(dest_root, &mut n);
        staged.push(mib_s(total, unpack_staged(&root, &layers)));
    }
    println!(
        "overlayfs, sequential  : median {:7.1} MiB/s  runs {seq:.1?}",
        median(seq.clone())
    );
    println!(
        "overlayfs, staged ({})  : median {:7.1} MiB/s  runs {staged:.1?}",
        parallelism(),
        median(staged.clone())
    );
}

fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// prepare, apply onto the mounts, commit; layer after layer.
fn unpack_sequential(root: &Path, layers: &[PathBuf]) -> Duration {
    let sn = OverlaySnapshotter::open(root).unwrap();
    let t = Instant::now();
    for (i, l) in layers.iter().enumerate() {
        let key = format!("extract-{i}");
        let parent = (i > 0).then(|| format!("chain-{}", i - 1));
        let mounts = sn.prepare(&key, parent.as_deref(), Labels::new()).unwrap();
        apply::apply_to_mounts(&mounts, File::open(l).unwrap(), Some(GZIP_MT)).unwrap();
        sn.commit(&format!("chain-{i}"), &key, Labels::new())
            .unwrap();
    }
    t.elapsed()
}

/// Every layer staged at once ([`parallelism`] workers), adopted and committed in order as
/// soon as it and the ones below are staged.
fn unpack_staged(root: &Path, layers: &[PathBuf]) -> Duration {
    let sn = OverlaySnapshotter::open(root).unwrap();
    let staging = sn.staging().unwrap();
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, StagedLayer)>();
    std::thread::scope(|s| {
        for _ in 0..parallelism().min(layers.len()) {
            let (tx, next) = (tx.clone(), &next);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(l) = layers.get(i) else { break };
                    let dir = staging.stage_dir().unwrap();
                    let f = File::open(l).unwrap();
                    let staged = apply::stage_layer(f, Some(GZIP_MT), dir, i > 0).unwrap();
                    if tx.send((i, staged)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting: Vec<Option<StagedLayer>> = layers.iter().map(|_| None).collect();
        let mut committed = 0;
        for (i, staged) in rx {
            waiting[i] = Some(staged);
            while let Some(layer) = waiting.get_mut(committed).and_then(Option::take) {
                let key = format!("extract-{committed}");
                let parent = (committed > 0).then(|| format!("chain-{}", committed - 1));
                sn.prepare(&key, parent.as_deref(), Labels::new()).unwrap();
                staging.adopt(&key, layer).unwrap();
                sn.commit(&format!("chain-{committed}"), &key, Labels::new())
                    .unwrap();
                committed += 1;
            }
        }
        assert_eq!(committed, layers.len());
    });
    t.elapsed()
}
