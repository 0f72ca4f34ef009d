//! Ingest throughput of the local content store, against `cp` of the same file as a floor.
//!
//! Writes ~280 MiB of generated data through a `ContentWriter` in 1 MiB chunks (the chunk size ctr
//! uses over the wire), commits it (fsync + digest check + rename), and compares with `cp` of the
//! same file, alone and followed by `sync <file>` (commit fsyncs, plain cp does not).
//! Not a test: no assertions on time. Knobs: CONTENT_BENCH_MIB (default 280),
//! CONTENT_BENCH_ROUNDS (default 3; the best round is reported, the machine being shared),
//! CONTENT_BENCH_DIR (default: the target dir's tmp, i.e. a real disk, not tmpfs).
//!
//! Run: `cargo bench -p content --bench ingest`

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use content::{ContentStore, Digest, Digester, Labels, LocalStore, WriterOpts};

const CHUNK: usize = 1 << 20;

fn main() {
    let knob = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (mib, rounds) = (
        knob("CONTENT_BENCH_MIB", 280),
        knob("CONTENT_BENCH_ROUNDS", 3).max(1),
    );
    let base = std::env::var_os("CONTENT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    fs::create_dir_all(&base).expect("create bench base dir");
    let dir = tempfile::tempdir_in(&base).expect("create bench dir");
    let src = dir.path().join("src.bin");
    let digest = generate(&src, mib);
    println!(
        "content ingest bench: {mib} MiB in {} KiB chunks, best of {rounds} rounds, under {}",
        CHUNK / 1024,
        base.display()
    );

    let mut best = Best::default();
    for round in 0..rounds {
        let (t, cpu) = (Instant::now(), cpu_seconds());
        assert_eq!(hash_file(&src), digest);
        best.hash = best.hash.min(t.elapsed().as_secs_f64());
        best.hash_cpu = best.hash_cpu.min(cpu_seconds() - cpu);

        let dst = dir.path().join("cp.bin");
        let t = Instant::now();
        run(Command::new("cp").arg(&src).arg(&dst));
        best.cp = best.cp.min(t.elapsed().as_secs_f64());
        run(Command::new("sync").arg(&dst));
        best.cp_sync = best.cp_sync.min(t.elapsed().as_secs_f64());
        fs::remove_file(&dst).unwrap();

        let root = dir.path().join(format!("store{round}"));
        let cpu = cpu_seconds();
        let (total, written) = ingest(&root, &src, &digest, mib);
        best.ingest_cpu = best.ingest_cpu.min(cpu_seconds() - cpu);
        if total < best.ingest {
            (best.ingest, best.ingest_writes) = (total, written);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    let rate = |secs: f64| mib as f64 / secs;
    println!(
        "  sha256 of the file (hash floor)   {:8.1} MiB/s   ({:.2} CPU s)",
        rate(best.hash),
        best.hash_cpu
    );
    println!(
        "  cp                                {:8.1} MiB/s",
        rate(best.cp)
    );
    println!(
        "  cp + sync (copy floor)            {:8.1} MiB/s",
        rate(best.cp_sync)
    );
    println!(
        "  content ingest (write + commit)   {:8.1} MiB/s   ({:.2} CPU s; writes {:.2}s, commit {:.2}s)",
        rate(best.ingest),
        best.ingest_cpu,
        best.ingest_writes,
        best.ingest - best.ingest_writes
    );
    println!(
        "  ingest / (cp + sync)              {:8.2}x",
        best.cp_sync / best.ingest
    );
}

struct Best {
    hash: f64,
    hash_cpu: f64,
    ingest_cpu: f64,
    cp: f64,
    cp_sync: f64,
    ingest: f64,
    ingest_writes: f64,
}

impl Default for Best {
    fn default() -> Best {
        Best {
            hash: f64::MAX,
            hash_cpu: f64::MAX,
            ingest_cpu: f64::MAX,
            cp: f64::MAX,
            cp_sync: f64::MAX,
            ingest: f64::MAX,
            ingest_writes: 0.0,
        }
    }
}

/// Ingests `src` into a fresh store at `root`; returns (total seconds, seconds spent writing).
fn ingest(root: &Path, src: &Path, digest: &Digest, mib: usize) -> (f64, f64) {
    let store = LocalStore::open(root).expect("open store");
    let t = Instant::now();
    let mut w = store
        .writer(WriterOpts::new("bench").total((mib * CHUNK) as u64))
        .expect("writer");
    let mut input = File::open(src).unwrap();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut input, &mut buf);
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).expect("write");
    }
    let written = t.elapsed().as_secs_f64();
    let got = w.commit(None, Some(digest), Labels::new()).expect("commit");
    assert_eq!(&got, digest);
    (t.elapsed().as_secs_f64(), written)
}

/// Writes `mib` MiB of xorshift bytes to `path` and returns their digest.
fn generate(path: &Path, mib: usize) -> Digest {
    let mut f = File::create(path).expect("create source file");
    let mut d = Digester::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..mib {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        d.update(&buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    d.digest()
}

fn hash_file(path: &Path) -> Digest {
    let mut f = File::open(path).unwrap();
    let mut d = Digester::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut f, &mut buf);
        if n == 0 {
            return d.digest();
        }
        d.update(&buf[..n]);
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]).unwrap() {
            0 => break,
            n => done += n,
        }
    }
    done
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run command");
    assert!(status.success(), "{cmd:?}: {status}");
}

/// User + system CPU time of this process (all threads) so far: unlike wall time, it barely
/// depends on what else the (shared) machine is running.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass; no other memory is involved.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
