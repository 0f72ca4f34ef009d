//! Ingest throughput of the local content store, against `cp` of the same file as a floor.
//!
//! Writes ~280 MiB of generated data through a `ContentWriter` in 1 MiB chunks (the chunk size ctr
//! uses over the wire), commits it (fsync + digest check + rename), and compares with `cp` of the
//! same file, alone and followed by `sync <file>` (commit fsyncs, plain cp does not).
//! Not a test: no assertions on time. Knobs: CONTENT_BENCH_MIB (default 280),
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
    let mib: usize = std::env::var("CONTENT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(280);
    let base = std::env::var_os("CONTENT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    fs::create_dir_all(&base).expect("create bench base dir");
    let dir = tempfile::tempdir_in(&base).expect("create bench dir");
    let src = dir.path().join("src.bin");
    let digest = generate(&src, mib);
    let bytes = (mib * CHUNK) as f64;
    let rate = |secs: f64| bytes / (1 << 20) as f64 / secs;
    println!(
        "content ingest bench: {mib} MiB in {} KiB chunks, under {}",
        CHUNK / 1024,
        base.display()
    );

    let t = Instant::now();
    hash_file(&src);
    let hash_secs = t.elapsed().as_secs_f64();

    let dst = dir.path().join("cp.bin");
    let t = Instant::now();
    run(Command::new("cp").arg(&src).arg(&dst));
    let cp_secs = t.elapsed().as_secs_f64();
    run(Command::new("sync").arg(&dst));
    let cp_sync_secs = t.elapsed().as_secs_f64();
    fs::remove_file(&dst).unwrap();

    let store = LocalStore::open(dir.path().join("store")).expect("open store");
    let t = Instant::now();
    let mut w = store
        .writer(WriterOpts::new("bench").total((mib * CHUNK) as u64))
        .expect("writer");
    let mut input = File::open(&src).unwrap();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut input, &mut buf);
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).expect("write");
    }
    let write_secs = t.elapsed().as_secs_f64();
    let got = w
        .commit(None, Some(&digest), Labels::new())
        .expect("commit");
    let ingest_secs = t.elapsed().as_secs_f64();
    assert_eq!(got, digest);

    println!(
        "  sha256 of the file (hash floor)   {:8.1} MiB/s",
        rate(hash_secs)
    );
    println!(
        "  cp                                {:8.1} MiB/s",
        rate(cp_secs)
    );
    println!(
        "  cp + sync (copy floor)            {:8.1} MiB/s",
        rate(cp_sync_secs)
    );
    println!(
        "  content ingest (write + commit)   {:8.1} MiB/s   (writes {:.2}s, commit {:.2}s)",
        rate(ingest_secs),
        write_secs,
        ingest_secs - write_secs
    );
    println!(
        "  ingest / (cp + sync)              {:8.2}x",
        cp_sync_secs / ingest_secs
    );
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
