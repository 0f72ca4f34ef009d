//! The hostile-input kit: what the property tests (`make test`) and the cargo-fuzz targets
//! (`make fuzz`, in `fuzz/`) share. It is test code, compiled only into test builds and into
//! `fuzz/` (feature `fuzzing`); no product binary contains it. It lives here because every
//! crate with a target already depends on `protocol`.
//!
//! A target is a *property*: a function of arbitrary bytes that panics when corral mishandles
//! them (a panic of its own, a wrong error code, state left behind). The same function runs
//!
//! ```text
//!   make test:  run(target, property)   seeds of fuzz/corpus/<name>/, then `cases` mutants of
//!                                        them from a seeded generator (same cases every run)
//!   make fuzz:  fuzz/fuzz_targets/<name>.rs → libFuzzer, coverage-guided, for minutes
//! ```
//!
//! Allocations: [`CountingAlloc`], installed as the global allocator of the test binary (or
//! fuzz target), records the largest single allocation. [`run`] fails a case whose largest
//! allocation passes the target's bound: a 4 GiB length prefix must be refused, not
//! allocated. `CORRAL_FUZZ_CASES` changes the number of mutants, `CORRAL_FUZZ_SEED` the
//! sequence, `CORRAL_FUZZ_INPUT=<file>` runs one input alone (a failure's, to debug it).
//! Past [`set_allocation_cap`] an allocation fails outright (the process aborts),
//! so that an allocation bomb cannot take the machine down before the check sees it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A global allocator that records the largest single allocation (see the module doc).
pub struct CountingAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

impl CountingAlloc {
    #[inline]
    fn admit(size: usize) -> bool {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        size <= CAP.load(Ordering::Relaxed)
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; refusing an allocation
// (null) is allowed by the GlobalAlloc contract.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The largest single allocation since the last [`reset_largest_allocation`] (0 when
/// [`CountingAlloc`] is not the global allocator).
pub fn largest_allocation() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

pub fn reset_largest_allocation() {
    LARGEST.store(0, Ordering::Relaxed);
}

/// Runs `f` alone (no case of [`run`] at the same time) and returns its result with the largest
/// single allocation made meanwhile: for tests that a hostile size is refused, not allocated.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let _one = ONE_CASE.lock().unwrap_or_else(|e| e.into_inner());
    reset_largest_allocation();
    let r = f();
    (r, largest_allocation())
}

/// Allocations larger than `bytes` fail (and the process aborts with Rust's "memory allocation
/// of N bytes failed"), which libFuzzer reports as a crash with its input.
pub fn set_allocation_cap(bytes: usize) {
    CAP.store(bytes, Ordering::Relaxed);
}

/// Every allocation is refused past this size in test runs: an allocation bomb aborts the test
/// binary instead of exhausting the machine's memory (the input is left in
/// `/dev/shm/corral-fuzz-<target>-<pid>`).
const TEST_CAP: usize = 1 << 30;

/// One property and how hard `make test` exercises it.
pub struct Target<'a> {
    /// The corpus directory `fuzz/corpus/<name>/` and the cargo-fuzz target of the same name.
    pub name: &'a str,
    /// Mutated cases after the seeds (`CORRAL_FUZZ_CASES` overrides it).
    pub cases: usize,
    /// The largest single allocation a case may make.
    pub max_alloc: usize,
    /// Tokens the mutator splices in (keywords, separators, magic numbers).
    pub dict: &'a [&'a [u8]],
}

/// The repository's top directory (protocol/ is one level down).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("protocol/ has a parent")
        .to_path_buf()
}

/// The seed corpus of a target: every file of `fuzz/corpus/<name>/`, by name.
pub fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = repo_root().join("fuzz/corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "seed corpus {} is empty", dir.display());
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// Cases of different targets in one test binary run one at a time, so that the allocation
/// record of one case is its own.
static ONE_CASE: Mutex<()> = Mutex::new(());

/// Runs `property` on every seed of `target`, then on `target.cases` mutants. A case fails
/// when the property panics or allocates more than `target.max_alloc` at once; the input is
/// kept in `target/fuzz-failures/<name>/` and named in the panic, to be replayed with
/// `cargo fuzz run <name> <file>` or added to the corpus once fixed.
pub fn run(target: &Target<'_>, mut property: impl FnMut(&[u8])) {
    set_allocation_cap(TEST_CAP);
    // One input alone, to debug a failure: CORRAL_FUZZ_INPUT=<file>.
    if let Some(file) = std::env::var_os("CORRAL_FUZZ_INPUT") {
        let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        property(&input);
        return;
    }
    let seeds = corpus(target.name);
    let cases = std::env::var("CORRAL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(target.cases);
    let seed = std::env::var("CORRAL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fnv(target.name.as_bytes()));
    let failures = repo_root().join("target/fuzz-failures").join(target.name);
    let _ = std::fs::create_dir_all(&failures);
    // On tmpfs, where a write per case costs next to nothing (on disk it cost 20 times the
    // cases themselves).
    let in_progress = Path::new("/dev/shm").is_dir().then(|| {
        PathBuf::from(format!(
            "/dev/shm/corral-fuzz-{}-{}",
            target.name,
            std::process::id()
        ))
    });

    let mut m = Mutator::new(seed, target.dict);
    let mut pool = seeds.clone();
    for i in 0..seeds.len() + cases {
        // The whole case, mutation included, runs alone: another target's mutator growing a
        // 1 MiB input would otherwise count as this case's allocation.
        let _one = ONE_CASE.lock().unwrap_or_else(|e| e.into_inner());
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let parent = pool[m.rng.below(pool.len())].clone();
            m.mutate(&parent, &pool)
        };
        // Kept on disk while it runs: an abort (allocation cap, stack overflow) leaves it.
        if let Some(p) = &in_progress {
            let _ = std::fs::write(p, &input);
        }
        let outcome = {
            reset_largest_allocation();
            let r = catch_unwind(AssertUnwindSafe(|| property(&input)));
            (r, largest_allocation())
        };
        let failure = match outcome {
            (Err(p), _) => Some(panic_message(&p)),
            (Ok(()), largest) if largest > target.max_alloc => Some(format!(
                "allocated {largest} bytes at once (the bound is {})",
                target.max_alloc
            )),
            _ => None,
        };
        if let Some(why) = failure {
            let file = failures.join(format!("case-{i}-{:016x}", fnv(&input)));
            let _ = std::fs::write(&file, &input);
            if let Some(p) = &in_progress {
                let _ = std::fs::remove_file(p);
            }
            panic!(
                "{}: case {i} ({}, {} bytes, kept in {}) failed: {why}\ninput: {}",
                target.name,
                if i < seeds.len() { "seed" } else { "mutant" },
                input.len(),
                file.display(),
                excerpt(&input)
            );
        }
        // Some mutants become parents, so that mutations stack up over the run.
        if i >= seeds.len() && m.rng.below(4) == 0 {
            if pool.len() < 256 {
                pool.push(input);
            } else {
                let at = seeds.len() + m.rng.below(pool.len() - seeds.len());
                pool[at] = input;
            }
        }
    }
    if let Some(p) = &in_progress {
        let _ = std::fs::remove_file(p);
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

fn excerpt(input: &[u8]) -> String {
    let shown = &input[..input.len().min(256)];
    let mut s = String::from_utf8_lossy(shown).escape_debug().to_string();
    if input.len() > shown.len() {
        s.push('…');
    }
    s
}

/// FNV-1a: a stable hash for seeds and file names.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64: small, seedable, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Numbers that find boundary bugs: lengths of 0, 4 GiB, sign bits, limits of our own.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    4 << 20,
    (4 << 20) + 1,
    16 << 20,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

const INTERESTING_TEXT: &[&str] = &[
    "-1",
    "0",
    "1",
    "255",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "99999999999999999999999",
    "1e308",
    "-9223372036854775808",
];

/// Inputs are kept under this size; mutations that would grow them further do not.
const MAX_INPUT: usize = 1 << 20;

/// A byte-level mutator in the manner of libFuzzer's: a few stacked edits per mutant.
pub struct Mutator<'a> {
    pub rng: Rng,
    dict: &'a [&'a [u8]],
}

impl<'a> Mutator<'a> {
    pub fn new(seed: u64, dict: &'a [&'a [u8]]) -> Mutator<'a> {
        Mutator {
            rng: Rng::new(seed),
            dict,
        }
    }

    /// A mutant of `input`; `pool` gives material to splice in.
    pub fn mutate(&mut self, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        let mut out = input.to_vec();
        let edits = 1 + self.rng.below(4);
        for _ in 0..edits {
            self.edit(&mut out, pool);
        }
        out.truncate(MAX_INPUT);
        out
    }

    fn edit(&mut self, v: &mut Vec<u8>, pool: &[Vec<u8>]) {
        let r = &mut self.rng;
        let at = |r: &mut Rng, v: &Vec<u8>| if v.is_empty() { 0 } else { r.below(v.len()) };
        match r.below(11) {
            // Flip one bit.
            0 if !v.is_empty() => {
                let i = at(r, v);
                v[i] ^= 1 << r.below(8);
            }
            // Any byte.
            1 if !v.is_empty() => {
                let i = at(r, v);
                v[i] = r.next_u64() as u8;
            }
            // A boundary number, 1 to 8 bytes wide, either byte order.
            2 if !v.is_empty() => {
                let n = INTERESTING[r.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][r.below(4)];
                let bytes = if r.below(2) == 0 {
                    n.to_be_bytes()[8 - width..].to_vec()
                } else {
                    n.to_le_bytes()[..width].to_vec()
                };
                let i = at(r, v);
                let end = (i + width).min(v.len());
                v.splice(i..end, bytes);
            }
            // Insert random bytes.
            3 => {
                let i = at(r, v);
                let n = 1 + r.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
                v.splice(i..i, bytes);
            }
            // Delete a range.
            4 if !v.is_empty() => {
                let i = at(r, v);
                let n = 1 + r.below((v.len() - i).min(64));
                v.drain(i..i + n);
            }
            // Copy a range of the input elsewhere in it.
            5 if !v.is_empty() => {
                let i = at(r, v);
                let n = 1 + r.below((v.len() - i).min(256));
                let chunk = v[i..i + n].to_vec();
                let j = at(r, v);
                v.splice(j..j, chunk);
            }
            // A dictionary token, inserted or overwriting.
            6 | 7 if !self.dict.is_empty() => {
                let tok = self.dict[r.below(self.dict.len())];
                let i = at(r, v);
                if r.below(2) == 0 {
                    v.splice(i..i, tok.iter().copied());
                } else {
                    let end = (i + tok.len()).min(v.len());
                    v.splice(i..end, tok.iter().copied());
                }
            }
            // Splice: our head, another input's tail.
            8 if !pool.is_empty() => {
                let other = &pool[r.below(pool.len())];
                let i = at(r, v);
                let j = if other.is_empty() {
                    0
                } else {
                    r.below(other.len())
                };
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            // A decimal number in text replaced by a boundary one.
            9 => {
                let from = at(r, v);
                let len = v.len();
                if let Some(start) = (0..len)
                    .map(|k| (k + from) % len)
                    .find(|&k| v[k].is_ascii_digit())
                {
                    let mut s = start;
                    while s > 0 && v[s - 1].is_ascii_digit() {
                        s -= 1;
                    }
                    let mut e = start;
                    while e < v.len() && v[e].is_ascii_digit() {
                        e += 1;
                    }
                    let n = INTERESTING_TEXT[r.below(INTERESTING_TEXT.len())];
                    v.splice(s..e, n.bytes());
                }
            }
            // Cut the tail.
            _ if !v.is_empty() => {
                let i = at(r, v);
                v.truncate(i);
            }
            _ => v.push(r.next_u64() as u8),
        }
    }
}

/// Splits an input into parts at `sep` (for targets whose input is several documents).
pub fn split<'d>(data: &'d [u8], sep: &[u8]) -> Vec<&'d [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = find(rest, sep) {
        parts.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    parts.push(rest);
    parts
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A directory removed when dropped (the fuzz targets have no `tempfile`).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// On tmpfs (`/dev/shm`) when there is one: for harnesses whose every case syncs files
    /// (a daemon's databases, snapshots), which on a disk costs far more than the case.
    pub fn in_memory(prefix: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            Self::new_in(shm, prefix)
        } else {
            Self::new(prefix)
        }
    }

    pub fn new_in(base: &Path, prefix: &str) -> TempDir {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        loop {
            let p = base.join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => return TempDir(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create {}: {e}", p.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file and directory under `root` with its size (directories: 0), symlinks as their
/// target: what a failed operation must leave as it found it.
pub fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let what = if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!(
                    "symlink {}",
                    std::fs::read_link(&p).unwrap_or_default().display()
                )
            } else {
                format!("{} bytes", md.len())
            };
            out.insert(rel, what);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutator_is_deterministic_and_bounded() {
        let dict: &[&[u8]] = &[b"==", b"labels."];
        let pool = vec![b"name==x".to_vec(), vec![0u8; 100]];
        let run = || {
            let mut m = Mutator::new(7, dict);
            (0..500)
                .map(|i| m.mutate(&pool[i % 2], &pool))
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.len() <= MAX_INPUT));
        assert!(a.iter().any(|v| v != &pool[0] && v != &pool[1]));
    }

    #[test]
    fn the_counting_allocator_sees_a_large_allocation() {
        let ((), largest) = measure(|| drop(Vec::<u8>::with_capacity(3 << 20)));
        assert!(largest >= 3 << 20, "{largest}");
    }

    #[test]
    fn split_and_find() {
        assert_eq!(split(b"a--b--", b"--"), vec![&b"a"[..], b"b", b""]);
        assert_eq!(split(b"abc", b"--"), vec![&b"abc"[..]]);
        assert_eq!(find(b"xxab", b"ab"), Some(2));
        assert_eq!(find(b"a", b"ab"), None);
    }
}

/// ttrpc on the wire, for the targets that write raw frames at our ttrpc servers (the shim's
/// Task service, corrald's event socket).
#[cfg(feature = "ttrpc")]
pub mod ttrpc_wire {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use protobuf::Message;
    use ttrpc::proto::{Request, Response};

    use crate::Code;

    const HEADER: usize = 10;
    /// ttrpc's own limit on a frame's payload (`ttrpc::proto::MESSAGE_LENGTH_MAX`).
    pub const MAX_FRAME: usize = 4 << 20;
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;

    /// One frame: header fields and payload.
    #[derive(Debug)]
    pub struct Frame {
        pub length: u32,
        pub stream: u32,
        pub kind: u8,
        pub flags: u8,
        pub payload: Vec<u8>,
    }

    /// The frames of a byte stream, as far as they are complete.
    pub fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while bytes.len() >= HEADER {
            let length = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
            let stream = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
            let (kind, flags) = (bytes[8], bytes[9]);
            let end = HEADER.saturating_add(length as usize);
            let payload = bytes.get(HEADER..end.min(bytes.len())).unwrap_or(&[]);
            out.push(Frame {
                length,
                stream,
                kind,
                flags,
                payload: payload.to_vec(),
            });
            if bytes.len() < end {
                break;
            }
            bytes = &bytes[end..];
        }
        out
    }

    /// A request frame for `service`/`method` with an encoded `payload`.
    pub fn request(stream: u32, service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
        let mut r = Request::new();
        r.service = service.into();
        r.method = method.into();
        r.payload = payload.to_vec();
        let body = r.write_to_bytes().expect("encode a request");
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&[REQUEST, 0]);
        out.extend_from_slice(&body);
        out
    }

    /// The stream of the request [`exchange`] appends to learn that the server has read the
    /// input and is still answering.
    pub const SENTINEL_STREAM: u32 = 0x7fff_fff1;

    /// Writes `input` on a new connection to `socket` and returns what the server answers.
    ///
    /// ttrpc servers drop the answers still in flight when the client closes its half of the
    /// connection, so when `input` ends on a frame boundary a `sentinel` request (stream
    /// [`SENTINEL_STREAM`]) follows it, and the writing half is closed only once the sentinel
    /// is answered: the server must answer it, which shows it survived the input. Otherwise
    /// (the input ends inside a frame) the writing half is closed at once and the server must
    /// close the connection. Either must happen within `deadline`.
    pub fn exchange(socket: &Path, input: &[u8], sentinel: &[u8], deadline: Duration) -> Vec<u8> {
        // Whole frames, nothing after them: the server then waits for the next header.
        let consumed: usize = frames(input).iter().map(|f| HEADER + f.payload.len()).sum();
        let complete = consumed == input.len()
            && frames(input)
                .last()
                .is_none_or(|f| f.payload.len() == f.length as usize);
        let mut conn = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let mut writer = conn.try_clone().expect("clone the connection");
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let mut bytes = input.to_vec();
        if complete {
            bytes.extend_from_slice(sentinel);
        }
        // Written from another thread: a server answering while we write must find a reader.
        let w = std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
            if complete {
                // Until the sentinel's answer (or the end of the exchange).
                let _ = close_rx.recv();
            }
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let start = Instant::now();
        let mut out = Vec::new();
        let mut close_tx = Some(close_tx);
        let mut buf = [0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                // The server may reset a connection it gave up on. (Interrupted, above, is
                // libFuzzer's timer signal: not the server.)
                Err(_) => break,
            }
            if close_tx.is_some()
                && frames(&out)
                    .iter()
                    .any(|f| f.stream == SENTINEL_STREAM && f.payload.len() == f.length as usize)
            {
                close_tx = None;
            }
            assert!(
                start.elapsed() < deadline,
                "the server neither answered {} nor closed the connection in {deadline:?}",
                if complete { "the sentinel" } else { "anything" }
            );
            assert!(
                out.len() <= 64 << 20,
                "the server answered {} bytes",
                out.len()
            );
        }
        drop(close_tx);
        let _ = w.join();
        if complete {
            assert!(
                frames(&out).iter().any(|f| f.stream == SENTINEL_STREAM),
                "the server closed the connection without answering the sentinel request"
            );
        }
        out
    }

    /// Checks what a ttrpc server answered to `input`: well-formed response frames, each to a
    /// request stream the input opened, carrying a decodable status whose code is one of
    /// `allowed` (OK included). Returns the codes seen.
    pub fn check_responses(input: &[u8], output: &[u8], allowed: &[Code]) -> Vec<Code> {
        let mut sent: Vec<u32> = frames(input).iter().map(|f| f.stream).collect();
        sent.push(SENTINEL_STREAM);
        let mut codes = Vec::new();
        for f in frames(output) {
            assert!(
                f.payload.len() == f.length as usize,
                "a truncated response frame: {f:?}"
            );
            assert!(
                f.length as usize <= MAX_FRAME,
                "a response of {} bytes",
                f.length
            );
            assert_eq!(f.kind, RESPONSE, "frame type {} from the server", f.kind);
            assert!(
                sent.contains(&f.stream),
                "a response on stream {} the client never used",
                f.stream
            );
            let r = Response::parse_from_bytes(&f.payload)
                .unwrap_or_else(|e| panic!("an undecodable response: {e}"));
            let code = Code::from_i32(r.status.code.value());
            assert!(
                code == Code::Ok || allowed.contains(&code),
                "the server answered {code:?}: {:?}",
                r.status.message
            );
            if code != Code::Ok {
                assert!(!r.status.message.is_empty(), "{code:?} without a message");
            }
            codes.push(code);
        }
        codes
    }

    /// The status code and payload of the answer to `frame`, a request on
    /// [`SENTINEL_STREAM`] sent alone.
    pub fn call(socket: &Path, frame: &[u8]) -> (Code, Vec<u8>) {
        let out = exchange(socket, b"", frame, Duration::from_secs(10));
        let f = frames(&out)
            .into_iter()
            .find(|f| f.stream == SENTINEL_STREAM)
            .expect("the server answers a well-formed request");
        let r = Response::parse_from_bytes(&f.payload).expect("a decodable response");
        (Code::from_i32(r.status.code.value()), r.payload)
    }
}

/// gRPC on the wire: one request written as raw HTTP/2 frames, for what a client library
/// never sends (a message length prefix that lies).
#[cfg(feature = "grpc")]
pub mod grpc_wire {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;

    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// A header field as an HPACK literal without indexing, new name, no Huffman.
    fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0);
        for s in [name, value] {
            assert!(s.len() < 127, "short header fields only");
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// Sends a POST of `path` with `headers` and `body` as the request's DATA (the gRPC length
    /// prefix included, as the caller wrote it) on a new connection, and returns the
    /// `grpc-status` and `grpc-message` the server answers, or None if it reset the stream or
    /// the connection without one.
    pub fn raw_call(
        socket: &Path,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        deadline: Duration,
    ) -> Option<(i32, String)> {
        let mut conn = UnixStream::connect(socket).expect("connect");
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .into_iter()
        .chain(headers.iter().copied())
        {
            literal(&mut block, n, v);
        }
        let mut out = PREFACE.to_vec();
        frame(&mut out, SETTINGS, 0, 0, &[]);
        frame(&mut out, HEADERS, END_HEADERS, 1, &block);
        frame(&mut out, DATA, END_STREAM, 1, body);
        conn.write_all(&out).expect("write the request");

        let mut decoder = loona_hpack::Decoder::new();
        let mut buf = Vec::new();
        let mut block: Option<Vec<u8>> = None;
        let mut status = None;
        let started = Instant::now();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match kind {
                    SETTINGS if flags & 1 == 0 => {
                        let mut ack = Vec::new();
                        frame(&mut ack, SETTINGS, 1, 0, &[]);
                        let _ = conn.write_all(&ack);
                    }
                    HEADERS | CONTINUATION => {
                        let mut fragment = &payload[..];
                        if kind == HEADERS {
                            if flags & PADDED != 0 {
                                let pad = usize::from(fragment[0]);
                                fragment = &fragment[1..fragment.len() - pad];
                            }
                            if flags & PRIORITY != 0 {
                                fragment = &fragment[5..];
                            }
                        }
                        block
                            .get_or_insert_with(Vec::new)
                            .extend_from_slice(fragment);
                        if flags & END_HEADERS != 0 {
                            let b = block.take().unwrap_or_default();
                            let fields = decoder.decode(&b).expect("the server's headers decode");
                            let mut code = None;
                            let mut message = String::new();
                            for (n, v) in fields {
                                match n.as_slice() {
                                    b"grpc-status" => {
                                        code = String::from_utf8_lossy(&v).parse().ok()
                                    }
                                    b"grpc-message" => {
                                        message = String::from_utf8_lossy(&v).into_owned()
                                    }
                                    _ => {}
                                }
                            }
                            if let Some(c) = code {
                                status = Some((c, message));
                            }
                        }
                        if stream == 1 && flags & END_STREAM != 0 {
                            return status;
                        }
                    }
                    DATA if stream == 1 && flags & END_STREAM != 0 => return status,
                    RST_STREAM if stream == 1 => return status,
                    GOAWAY => return status,
                    _ => {}
                }
            }
            match conn.read(&mut chunk) {
                Ok(0) => return status,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return status,
            }
            assert!(
                started.elapsed() < deadline,
                "the server did not answer within {deadline:?}"
            );
        }
    }
}
