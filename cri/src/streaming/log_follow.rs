//! Following a container's CRI log from its current end, for attach: our shim writes the
//! container's output there itself (`file://…?format=cri`), so the log is the one place the
//! output can be read from, by any number of attachers and across corral-cri restarts.
//!
//! A record is `<RFC 3339 time> <stdout|stderr> <P|F> <content>\n`; `F` ends a line, `P` is a
//! part of one without its newline. The shim appends whole records with one `write(2)` each;
//! a reader can still see the end of one mid-write, so a line without its newline waits for
//! the rest.
//!
//! kubelet rotates the log by renaming it and asking for a reopen, after which the shim
//! writes to a new file at the same path. At the end of the file we compare inodes: once the
//! path names another file, the old one is read to its end a last time and the new one is
//! followed from its start. An inotify watch on the directory (modify, create, move) wakes the
//! follower; nothing polls.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Which stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One record of a CRI log.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    /// `F`: the content ends a line (its newline is not in `content`).
    pub full: bool,
    pub content: Vec<u8>,
}

/// Parses one line of a CRI log (without its `\n`); None for anything else.
pub fn parse(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next().filter(|t| !t.is_empty())?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record {
        stream,
        full,
        content: parts.next().unwrap_or_default().to_vec(),
    })
}

/// Most bytes read per [`Follower::read_available`] call, so that a reader far behind sends
/// in pieces and back-pressure from the client applies.
const CHUNK: usize = 64 * 1024;
/// A line longer than this without a newline is not a record of ours: it is dropped.
const MAX_LINE: usize = 1 << 20;

struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Follower {
    path: PathBuf,
    /// The file being read and its inode; None until one exists at `path`.
    file: Option<(File, u64)>,
    /// An unfinished line read so far.
    pending: Vec<u8>,
    /// Started in the middle of a record: drop bytes up to the next newline.
    skip_partial: bool,
    watch: AsyncFd<Watch>,
}

impl Follower {
    /// Starts at the current end of the log at `path`: only output written from now on is
    /// read. The file may not exist yet; its directory must.
    pub fn from_end(path: &Path) -> io::Result<Follower> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .map_err(|e| io::Error::other(format!("watch {}: {e}", dir.display())))?;
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            pending: Vec::new(),
            skip_partial: false,
            // SAFETY: the inotify fd moves into the AsyncFd, so nothing else closes or reuses
            // it while it is registered.
            watch: unsafe { AsyncFd::register_with_interest(Watch(inotify), Interest::READABLE) }
                .map_err(io::Error::from)?,
        };
        if let Some((mut file, ino)) = open(path)? {
            let end = file.seek(SeekFrom::End(0))?;
            // Mid-record if the byte before the end is not a newline.
            if end > 0 {
                file.seek(SeekFrom::Start(end - 1))?;
                let mut last = [0u8; 1];
                file.read_exact(&mut last)?;
                f.skip_partial = last[0] != b'\n';
            }
            f.file = Some((file, ino));
        }
        Ok(f)
    }

    /// Appends the records written since the last call to `out`, without waiting; reads at
    /// most [`CHUNK`] bytes (call again while it returns true: more may be there).
    pub fn read_available(&mut self, out: &mut Vec<Record>) -> io::Result<bool> {
        let mut buf = vec![0u8; CHUNK];
        let Some((file, ino)) = &mut self.file else {
            if let Some(opened) = open(&self.path)? {
                self.file = Some(opened);
                return Ok(true);
            }
            return Ok(false);
        };
        let ino = *ino;
        let n = file.read(&mut buf)?;
        if n > 0 {
            self.take(&buf[..n], out);
            return Ok(true);
        }
        // At the end: has the log been rotated under us?
        let now = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if now == ino {
            return Ok(false);
        }
        // Renamed and reopened by the shim, which writes to the old file no more once the
        // new one exists: what it wrote just before is read first.
        if let Some((mut old, _)) = self.file.take() {
            loop {
                let n = old.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                self.take(&buf[..n], out);
            }
        }
        // A line cut by the rotation ends in the new file; records do not span files.
        self.pending.clear();
        self.skip_partial = false;
        self.file = open(&self.path)?;
        Ok(true)
    }

    /// Waits until the log's directory changes (the log grew, or was rotated).
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.watch.readable().await?;
            match guard.try_io(|w| w.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(_events)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    fn take(&mut self, mut data: &[u8], out: &mut Vec<Record>) {
        if self.skip_partial {
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    data = &data[nl + 1..];
                    self.skip_partial = false;
                }
                None => return,
            }
        }
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            let line = if self.pending.is_empty() {
                &data[..nl]
            } else {
                self.pending.extend_from_slice(&data[..nl]);
                &self.pending[..]
            };
            if let Some(r) = parse(line) {
                out.push(r);
            }
            self.pending.clear();
            data = &data[nl + 1..];
        }
        if self.pending.len() + data.len() > MAX_LINE {
            self.pending.clear();
            self.skip_partial = true;
            return;
        }
        self.pending.extend_from_slice(data);
    }
}

fn open(path: &Path) -> io::Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(f) => {
            let ino = f.metadata()?.ino();
            Ok(Some((f, ino)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("open log {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(stream: Stream, full: bool, content: &str) -> Record {
        Record {
            stream,
            full,
            content: content.as_bytes().to_vec(),
        }
    }

    #[test]
    fn records_parse_and_junk_does_not() {
        assert_eq!(
            parse(b"2026-12-01T10:00:00.1Z stdout F hello world"),
            Some(rec(Stream::Stdout, true, "hello world"))
        );
        assert_eq!(
            parse(b"2026-12-01T10:00:00Z stderr P  two  spaces "),
            Some(rec(Stream::Stderr, false, " two  spaces "))
        );
        assert_eq!(
            parse(b"2026-12-01T10:00:00Z stdout F "),
            Some(rec(Stream::Stdout, true, ""))
        );
        assert_eq!(
            parse(b"2026-12-01T10:00:00Z stdout F"),
            Some(rec(Stream::Stdout, true, ""))
        );
        for junk in [
            &b""[..],
            b"hello",
            b"t stdin F x",
            b"t stdout X x",
            b" stdout F x",
        ] {
            assert_eq!(parse(junk), None, "{:?}", String::from_utf8_lossy(junk));
        }
    }

    fn drain(f: &mut Follower) -> Vec<Record> {
        let mut out = Vec::new();
        while f.read_available(&mut out).unwrap() {}
        out
    }

    #[tokio::test]
    async fn follows_from_the_end_across_partial_writes_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = std::fs::File::create(&path).unwrap();
        // Old output, and the first half of a record being written as we start.
        log.write_all(b"t stdout F old\nt stdout F half-wr")
            .unwrap();
        let mut f = Follower::from_end(&path).unwrap();
        assert!(drain(&mut f).is_empty());

        log.write_all(b"itten\nt stderr P par").unwrap();
        f.changed().await.unwrap();
        assert!(drain(&mut f).is_empty(), "the cut record is skipped");
        log.write_all(b"t\nt stdout F new\n").unwrap();
        assert_eq!(
            drain(&mut f),
            vec![
                rec(Stream::Stderr, false, "part"),
                rec(Stream::Stdout, true, "new")
            ]
        );

        // kubelet's rotation: rename, then the shim writes a last record to the old file and
        // opens a new one.
        let rotated = dir.path().join("0.log.20261201");
        std::fs::rename(&path, &rotated).unwrap();
        log.write_all(b"t stdout F last of old\n").unwrap();
        let mut log = std::fs::File::create(&path).unwrap();
        log.write_all(b"t stdout F first of new\n").unwrap();
        f.changed().await.unwrap();
        assert_eq!(
            drain(&mut f),
            vec![
                rec(Stream::Stdout, true, "last of old"),
                rec(Stream::Stdout, true, "first of new")
            ]
        );
        log.write_all(b"t stderr F more\n").unwrap();
        assert_eq!(drain(&mut f), vec![rec(Stream::Stderr, true, "more")]);
    }

    #[tokio::test]
    async fn a_log_that_does_not_exist_yet_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = Follower::from_end(&path).unwrap();
        assert!(drain(&mut f).is_empty());
        std::fs::write(&path, b"t stdout F hi\n").unwrap();
        f.changed().await.unwrap();
        assert_eq!(drain(&mut f), vec![rec(Stream::Stdout, true, "hi")]);
    }
}
