//! Kubernetes CRI container logs, written by the shim itself (`file:///path?format=cri`).
//!
//! corral-cri hands the shim the log path instead of reading the container's output itself,
//! so logging goes on while corral-cri or corrald are down and the container never waits on a
//! daemon. The file is what kubelet (`pkg/kubelet/kuberuntime/logs`) and `crictl logs` read,
//! the same as containerd's CRI plugin writes:
//!
//! ```text
//! 2026-12-01T10:00:00.123456789Z stdout F a whole line
//! 2026-12-01T10:00:00.1Z stderr P the first 16 KiB of a longer line…
//! 2026-12-01T10:00:00.1Z stderr F …and the rest of it
//! ```
//!
//! - The timestamp is UTC in Go's RFC3339Nano (fraction without trailing zeros, no fraction
//!   at all for a whole second, `Z`), taken when the record is written.
//! - A line ends at `\n`; a `\r` right before it is dropped (containerd does so: a terminal
//!   writes `\r\n`). An empty line is a record with empty content.
//! - Content longer than [`MAX_LINE`] goes out as `P` records of exactly [`MAX_LINE`] bytes
//!   followed by the `F` record of the rest (1..=MAX_LINE bytes): containerd's default
//!   `max_container_log_line_size`, and it splits the same way.
//! - Bytes left without a newline when the stream closes are written as one `P` record, as
//!   containerd's CRI logger does at EOF; kubelet then shows them without a newline.
//! - So are bytes left without a newline when the stream pauses (see
//!   `io::PARTIAL_LINE_WAIT`), so that a prompt reaches whoever follows the log; containerd
//!   holds them until the newline.
//! - Content is passed through byte for byte (invalid UTF-8, NUL, escape sequences); it can
//!   never contain `\n`, so a record is always exactly one line of the file.
//!
//! stdout and stderr are two [`LineSplitter`]s writing through one [`CriLogFile`]; each
//! batch of whole records goes out in one `write(2)` to an `O_APPEND` file, so records of
//! the two streams never interleave within a line.
//!
//! Rotation is kubelet's: it renames the file and asks for a reopen (`Task.Update` with the
//! [`protocol::annotations::LOG_REOPEN`] annotation); [`CriLogFile::reopen`] then creates a
//! new file at the same path. Output read from the pipes goes to the old file until the swap
//! and to the new one after it; a line still being assembled goes to the new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::logfmt::civil_from_days;

/// The longest content of one record: longer lines are split into partial records.
pub const MAX_LINE: usize = 16 * 1024;
/// Mode of a log file the shim creates.
const FILE_MODE: u32 = 0o640;

/// Which stream a record came from, as named in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends `t` in UTC as Go's `time.RFC3339Nano` formats it: `2006-01-02T15:04:05.999999999Z`,
/// trailing zeros of the fraction trimmed, and the dot too when the fraction is zero. Times
/// before 1970 (a clock set very wrong) are written as the epoch.
pub fn write_timestamp(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    let mut nanos = d.subsec_nanos();
    if nanos != 0 {
        let mut digits = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{nanos:0digits$}");
    }
    out.push(b'Z');
}

/// Appends one record: `<timestamp> <stream> <tag> <content>\n`.
fn write_record(out: &mut Vec<u8>, now: SystemTime, stream: Stream, tag: u8, content: &[u8]) {
    write_timestamp(now, out);
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Turns one stream's bytes, as they arrive in chunks of any size, into CRI records. Holds at
/// most [`MAX_LINE`] + 1 bytes of an unfinished line between chunks.
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Appends to `out` the records that `data` completes, stamped `now`.
    pub fn push(&mut self, mut data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            self.extend(&data[..nl], now, out);
            let mut line = &self.pending[..];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            write_record(out, now, self.stream, b'F', line);
            self.pending.clear();
            data = &data[nl + 1..];
        }
        self.extend(data, now, out);
    }

    /// The stream ended: what is left of an unfinished line becomes a partial record.
    pub fn finish(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if self.pending.len() > MAX_LINE {
            // The `\r` held back past the limit was not followed by `\n` after all.
            self.emit_partial(now, out);
        }
        if !self.pending.is_empty() {
            write_record(out, now, self.stream, b'P', &self.pending);
            self.pending.clear();
        }
    }

    /// Whether part of a line waits for the rest that [`LineSplitter::flush`] would write.
    pub fn has_pending(&self) -> bool {
        self.pending.len() > usize::from(self.pending.last() == Some(&b'\r'))
    }

    /// Writes the unfinished line so far as a partial record, as if the stream had paused
    /// for good: a reader following the log (attach, `kubectl logs -f`) then sees a prompt
    /// that waits for input without waiting itself for a newline that comes only after the
    /// input. kubelet joins partial records with what follows, so `kubectl logs` shows the
    /// same text. A `\r` at the end stays: it may be the first half of a `\r\n`.
    pub fn flush(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        let keep = usize::from(self.pending.last() == Some(&b'\r'));
        let n = self.pending.len() - keep;
        if n > 0 {
            write_record(out, now, self.stream, b'P', &self.pending[..n]);
            self.pending.drain(..n);
        }
    }

    /// Adds content without a newline, writing a partial record of the first [`MAX_LINE`]
    /// bytes whenever more content follows them. A `\r` just past the limit with nothing
    /// after it yet does not count: it may be the first half of a `\r\n`, and a line of
    /// exactly MAX_LINE bytes ending in `\r\n` is one full record.
    fn extend(&mut self, mut data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        loop {
            let room = (MAX_LINE + 1).saturating_sub(self.pending.len());
            let take = room.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() <= MAX_LINE {
                // `room` was not used up, so all of `data` was taken.
                return;
            }
            if data.is_empty() && self.pending[MAX_LINE] == b'\r' {
                return;
            }
            self.emit_partial(now, out);
        }
    }

    fn emit_partial(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        write_record(out, now, self.stream, b'P', &self.pending[..MAX_LINE]);
        self.pending.drain(..MAX_LINE);
    }
}

/// Opens (creating it 0640 if missing) the log file for appending. The directory is the
/// client's (kubelet's) to create: a missing one is refused, not made, so a typo or a pod
/// already torn down does not leave stray directories behind.
pub fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| {
            let dir = path.parent().unwrap_or(Path::new("/"));
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot create CRI log {}: its directory {} does not exist",
                        path.display(),
                        dir.display()
                    ),
                )
            } else {
                io::Error::new(
                    e.kind(),
                    format!("cannot open CRI log {}: {e}", path.display()),
                )
            }
        })
}

struct Inner {
    file: File,
    /// A write failed and was logged; the next failure is not logged again until one succeeds.
    failing: bool,
}

/// The log file both streams of a process write to, and that a reopen replaces. Cheap to
/// clone (shared).
#[derive(Clone)]
pub struct CriLogFile {
    path: Arc<PathBuf>,
    inner: Arc<Mutex<Inner>>,
}

impl CriLogFile {
    pub fn open(path: PathBuf) -> io::Result<CriLogFile> {
        let file = open_log(&path)?;
        Ok(CriLogFile {
            path: Arc::new(path),
            inner: Arc::new(Mutex::new(Inner {
                file,
                failing: false,
            })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole records. A failure (disk full, file system gone) loses these records but
    /// is not returned: the caller must keep draining the container's pipe whatever happens
    /// to the file, or the container blocks on its output. The lock is held only for the
    /// write to the local file, never across an await.
    pub fn write(&self, records: &[u8]) {
        if records.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.file.write_all(records) {
            Ok(()) => inner.failing = false,
            Err(e) => {
                if !std::mem::replace(&mut inner.failing, true) {
                    log::warn!(
                        "write CRI log {}: {e}; dropping output until writes succeed",
                        self.path.display()
                    );
                }
            }
        }
    }

    /// Creates a new file at the path (kubelet renamed the old one) and writes to it from now
    /// on. The new file is opened before the lock is taken; on failure the old file is kept.
    pub fn reopen(&self) -> io::Result<()> {
        let file = open_log(&self.path)?;
        let old = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.failing = false;
            std::mem::replace(&mut inner.file, file)
        };
        drop(old);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn stamp(t: SystemTime) -> String {
        let mut v = Vec::new();
        write_timestamp(t, &mut v);
        String::from_utf8(v).unwrap()
    }

    /// One parsed record: (stream, tag, content).
    type Rec = (String, char, Vec<u8>);

    /// Parses records the way kubelet does, checking that every line is well formed.
    fn parse(out: &[u8]) -> Vec<Rec> {
        assert!(
            out.is_empty() || out.ends_with(b"\n"),
            "unterminated record"
        );
        let mut recs = Vec::new();
        for line in out.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let mut parts = line.splitn(4, |b| *b == b' ');
            let ts = parts.next().unwrap();
            let ts = std::str::from_utf8(ts).unwrap();
            assert!(ts.ends_with('Z') && ts.len() >= 20, "timestamp {ts}");
            let stream = std::str::from_utf8(parts.next().unwrap()).unwrap();
            assert!(stream == "stdout" || stream == "stderr", "stream {stream}");
            let tag = parts.next().unwrap();
            assert!(tag == b"F" || tag == b"P", "tag {tag:?}");
            let content = parts.next().expect("no content separator").to_vec();
            recs.push((stream.to_string(), tag[0] as char, content));
        }
        recs
    }

    fn split(stream: Stream, chunks: &[&[u8]], eof: bool) -> Vec<Rec> {
        let mut s = LineSplitter::new(stream);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, at(0, 0), &mut out);
        }
        if eof {
            s.finish(at(0, 0), &mut out);
        }
        parse(&out)
    }

    fn rec(stream: &str, tag: char, content: &[u8]) -> Rec {
        (stream.to_string(), tag, content.to_vec())
    }

    #[test]
    fn timestamps_are_go_rfc3339_nano_in_utc() {
        assert_eq!(stamp(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(stamp(at(0, 1)), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(stamp(at(0, 100_000_000)), "1970-01-01T00:00:00.1Z");
        assert_eq!(stamp(at(0, 120_000_000)), "1970-01-01T00:00:00.12Z");
        assert_eq!(stamp(at(0, 123_456_789)), "1970-01-01T00:00:00.123456789Z");
        assert_eq!(stamp(at(0, 123_456_780)), "1970-01-01T00:00:00.12345678Z");
        // A leap day, the day after it, a century that is not leap, the end of a year.
        assert_eq!(stamp(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(stamp(at(951_868_799, 0)), "2000-02-29T23:59:59Z");
        assert_eq!(stamp(at(951_868_800, 0)), "2000-03-01T00:00:00Z");
        assert_eq!(stamp(at(4_107_542_400, 0)), "2100-03-01T00:00:00Z");
        assert_eq!(
            stamp(at(1_735_689_599, 999_999_999)),
            "2024-12-31T23:59:59.999999999Z"
        );
        assert_eq!(stamp(at(1_735_689_600, 0)), "2025-01-01T00:00:00Z");
        // kubelet's example.
        assert_eq!(
            stamp(at(1_475_713_029, 669_794_202)),
            "2016-10-06T00:17:09.669794202Z"
        );
        // Before the epoch: clamped rather than garbled.
        assert_eq!(
            stamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_pause_writes_the_line_so_far_as_a_partial_record() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(b"/ # ", at(0, 0), &mut out);
        assert!(out.is_empty() && s.has_pending());
        s.flush(at(0, 0), &mut out);
        assert!(!s.has_pending());
        s.push(b"ls\r", at(0, 0), &mut out);
        s.flush(at(0, 0), &mut out);
        // The `\r` waits: with the `\n` that follows it ends the line.
        assert!(!s.has_pending());
        s.push(b"\nbin\n", at(0, 0), &mut out);
        s.flush(at(0, 0), &mut out);
        assert_eq!(
            parse(&out),
            [
                rec("stdout", 'P', b"/ # "),
                rec("stdout", 'P', b"ls"),
                rec("stdout", 'F', b""),
                rec("stdout", 'F', b"bin"),
            ]
        );
    }

    #[test]
    fn whole_lines_are_full_records_with_their_stream() {
        assert_eq!(
            split(Stream::Stdout, &[b"hello\nworld\n"], true),
            [rec("stdout", 'F', b"hello"), rec("stdout", 'F', b"world")]
        );
        assert_eq!(
            split(Stream::Stderr, &[b"oops\n"], true),
            [rec("stderr", 'F', b"oops")]
        );
        // An empty line is an empty full record; nothing at all is no record.
        assert_eq!(
            split(Stream::Stdout, &[b"\n\n"], true),
            [rec("stdout", 'F', b""), rec("stdout", 'F', b"")]
        );
        assert!(split(Stream::Stdout, &[b""], true).is_empty());
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(b"x\n", at(1, 5), &mut out);
        assert_eq!(out, b"1970-01-01T00:00:01.000000005Z stdout F x\n");
    }

    #[test]
    fn lines_assemble_across_chunks_and_crlf_is_one_end() {
        assert_eq!(
            split(
                Stream::Stdout,
                &[b"he", b"llo", b"\nwor", b"ld\r", b"\n"],
                true
            ),
            [rec("stdout", 'F', b"hello"), rec("stdout", 'F', b"world")]
        );
        // A terminal's \r\n, and a \r that does not end a line.
        assert_eq!(
            split(Stream::Stdout, &[b"a\r\nb\rc\n\r\r\n"], true),
            [
                rec("stdout", 'F', b"a"),
                rec("stdout", 'F', b"b\rc"),
                rec("stdout", 'F', b"\r")
            ]
        );
    }

    #[test]
    fn output_left_at_eof_is_one_partial_record() {
        assert_eq!(
            split(Stream::Stdout, &[b"done\nno newline"], true),
            [
                rec("stdout", 'F', b"done"),
                rec("stdout", 'P', b"no newline")
            ]
        );
        // Not yet at EOF: held back, nothing written.
        assert_eq!(
            split(Stream::Stdout, &[b"done\nno newline"], false),
            [rec("stdout", 'F', b"done")]
        );
        // A lone \r at EOF is content (no \n followed it).
        assert_eq!(
            split(Stream::Stderr, &[b"x\r"], true),
            [rec("stderr", 'P', b"x\r")]
        );
    }

    #[test]
    fn long_lines_split_at_16_kib() {
        assert_eq!(MAX_LINE, 16384);
        let line: Vec<u8> = (0..40 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = line.clone();
        input.push(b'\n');
        // Whatever the chunking, the same records.
        for chunk in [1, 7, 4096, 16383, 16384, 16385, 32 * 1024, input.len()] {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let recs = split(Stream::Stdout, &chunks, true);
            let tags: Vec<char> = recs.iter().map(|r| r.1).collect();
            assert_eq!(tags, ['P', 'P', 'F'], "chunk {chunk}");
            let lens: Vec<usize> = recs.iter().map(|r| r.2.len()).collect();
            assert_eq!(lens, [16384, 16384, 8192], "chunk {chunk}");
            assert_eq!(recs.concat_content(), line, "chunk {chunk}");
        }
    }

    trait Concat {
        fn concat_content(&self) -> Vec<u8>;
    }

    impl Concat for Vec<Rec> {
        fn concat_content(&self) -> Vec<u8> {
            self.iter().flat_map(|r| r.2.iter().copied()).collect()
        }
    }

    #[test]
    fn split_boundaries_match_containerd() {
        let n = |len: usize, end: &[u8]| {
            let mut v = vec![b'x'; len];
            v.extend_from_slice(end);
            v
        };
        let shape = |input: Vec<u8>, eof: bool| -> Vec<(char, usize)> {
            split(Stream::Stdout, &[&input], eof)
                .iter()
                .map(|r| (r.1, r.2.len()))
                .collect()
        };
        // Exactly the limit: one full record, with \n or \r\n.
        assert_eq!(shape(n(MAX_LINE, b"\n"), true), [('F', MAX_LINE)]);
        assert_eq!(shape(n(MAX_LINE, b"\r\n"), true), [('F', MAX_LINE)]);
        // One more: a partial of the limit, then a full of one byte.
        assert_eq!(
            shape(n(MAX_LINE + 1, b"\n"), true),
            [('P', MAX_LINE), ('F', 1)]
        );
        // Twice the limit: partial, full (never an empty full record after a split).
        assert_eq!(
            shape(n(2 * MAX_LINE, b"\n"), true),
            [('P', MAX_LINE), ('F', MAX_LINE)]
        );
        // A \r at the limit that turns out not to end the line is content of the next record.
        let mut v = n(MAX_LINE, b"\rz\n");
        assert_eq!(shape(v.clone(), true), [('P', MAX_LINE), ('F', 2)]);
        // Unfinished at EOF beyond the limit: partial records only.
        v.truncate(MAX_LINE + 2);
        assert_eq!(shape(v, true), [('P', MAX_LINE), ('P', 2)]);
        assert_eq!(shape(n(MAX_LINE, b"\r"), true), [('P', MAX_LINE), ('P', 1)]);
        assert_eq!(shape(n(MAX_LINE, b"\r"), false), []);
        assert_eq!(shape(n(MAX_LINE, b""), false), []);
        assert_eq!(shape(n(MAX_LINE + 1, b""), false), [('P', MAX_LINE)]);
    }

    #[test]
    fn hostile_content_stays_within_its_record() {
        // Binary, NUL, invalid UTF-8, escape sequences and fake record headers: passed
        // through as content, each record still exactly one line with a valid header.
        let evil: &[u8] = b"\x00\xff\xfe\x1b[2J2016-10-06T00:17:09Z stderr F forged\r\x07";
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend_from_slice(evil);
            input.push(b'\n');
        }
        input.extend_from_slice(evil);
        let recs = split(Stream::Stdout, &[&input], true);
        assert_eq!(recs.len(), 4);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.0, "stdout");
            assert_eq!(r.1, if i < 3 { 'F' } else { 'P' });
            assert_eq!(r.2, evil);
        }
        // A megabyte without a newline: bounded memory, exact 16 KiB partials.
        let mut s = LineSplitter::new(Stream::Stderr);
        let mut out = Vec::new();
        let chunk = vec![b'q'; 32 * 1024];
        for _ in 0..32 {
            s.push(&chunk, at(0, 0), &mut out);
            assert!(s.pending.len() <= MAX_LINE + 1);
        }
        s.finish(at(0, 0), &mut out);
        let recs = parse(&out);
        assert_eq!(recs.len(), 64);
        assert!(recs.iter().all(|r| r.1 == 'P' && r.2.len() == MAX_LINE));
    }

    #[test]
    fn log_file_is_created_0640_and_appended() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, b"old\n").unwrap();
        let log = CriLogFile::open(path.clone()).unwrap();
        log.write(b"new\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew\n");

        let fresh = dir.path().join("1.log");
        let _log = CriLogFile::open(fresh.clone()).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        // The umask may take bits away, never add them.
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        assert!(mode & 0o600 == 0o600, "mode {mode:o}");

        let missing = dir.path().join("nodir/0.log");
        let e = CriLogFile::open(missing).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("nodir"), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!dir.path().join("nodir").exists());
    }

    #[test]
    fn reopen_after_rename_writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20261201-100000");
        let log = CriLogFile::open(path.clone()).unwrap();
        log.write(b"before\n");
        std::fs::rename(&path, &rotated).unwrap();
        // Until the reopen, output follows the renamed file (kubelet's rotation relies on it).
        log.write(b"between\n");
        log.clone().reopen().unwrap();
        log.write(b"after\n");
        assert_eq!(std::fs::read(&rotated).unwrap(), b"before\nbetween\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"after\n");
        // A reopen that cannot create the file keeps the old one.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(log.reopen().is_err());
    }
}
