//! The decompress-and-hash side of apply: format detection and the reader thread.
//!
//! ```text
//!  layer bytes ──► [reader thread: gzip/zstd decode, sha256, count] ──chunks──► [tar extract]
//!                                    ▲                                  (bounded)       │
//!                                    └────────── empty buffers returned ◄───────────────┘
//! ```
//! The reader thread hashes every byte the decompressor yields until EOF, including the tar
//! end-of-archive blocks and any padding after them, so the diffID matches `sha256` of the
//! uncompressed blob even when the extractor stops early.

use std::io::{self, Read};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::error::{ApplyError, Result};

/// Compression of a layer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly several members, as pigz writes).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Sniffs the magic bytes at the start of a stream.
    pub fn from_magic(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// What a media type says: `Ok(None)` when it is missing or generic (decide by magic).
    pub fn from_media_type(media_type: Option<&str>) -> Result<Option<Compression>> {
        let Some(mt) = media_type else {
            return Ok(None);
        };
        let base = mt
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if base.is_empty()
            || base == "application/octet-stream"
            || base == "application/x-tar"
            || base == "application/tar"
        {
            return Ok(None);
        }
        let is_layer = base.starts_with("application/vnd.oci.image.layer.")
            || base.starts_with("application/vnd.docker.image.rootfs.");
        if is_layer {
            if base.ends_with("+gzip") || base.ends_with(".tar.gzip") {
                return Ok(Some(Compression::Gzip));
            }
            if base.ends_with("+zstd") || base.ends_with(".tar.zstd") {
                return Ok(Some(Compression::Zstd));
            }
            if base.ends_with(".tar") {
                return Ok(Some(Compression::None));
            }
        }
        Err(ApplyError::UnsupportedMediaType {
            media_type: mt.to_string(),
        })
    }
}

/// Decides the compression from the media type and the first bytes of the stream: magic bytes
/// decide when the media type is missing or generic; a specific media type that disagrees with
/// the magic bytes is an error rather than a guess.
pub fn detect(media_type: Option<&str>, prefix: &[u8]) -> Result<Compression> {
    let magic = Compression::from_magic(prefix);
    match Compression::from_media_type(media_type)? {
        None => Ok(magic),
        Some(declared) if declared == magic => Ok(declared),
        // An empty stream is "uncompressed" by magic; let the decoder report it.
        Some(declared) if prefix.is_empty() => Ok(declared),
        Some(declared) => Err(ApplyError::MediaTypeMismatch {
            media_type: media_type.unwrap_or_default().to_string(),
            expected: declared.name(),
            found: magic.name(),
        }),
    }
}

/// Digest and size of an uncompressed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamDigest {
    pub diff_id: String,
    pub size: u64,
}

pub(crate) fn sha256_string(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

const CHUNK: usize = 256 * 1024;
const IN_FLIGHT: usize = 8;

type Chunk = io::Result<Vec<u8>>;

/// The extractor's end of the channel: a `Read` over the chunks the reader thread sends.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    recycle: mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    // The pool is only an optimisation: a full or closed pool drops the buffer.
                    let _ = self.recycle.try_send(old);
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ChunkReader {
    /// Consumes the rest of the stream so the reader thread hashes it to EOF.
    fn drain(&mut self) -> io::Result<()> {
        self.pos = self.cur.len();
        while !self.done {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let _ = self.recycle.try_send(next);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => self.done = true,
            }
        }
        Ok(())
    }
}

fn read_prefix(r: &mut impl Read, want: usize) -> io::Result<Vec<u8>> {
    let mut prefix = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match r.read(&mut prefix[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    prefix.truncate(got);
    Ok(prefix)
}

/// Outcome of the reader thread.
enum ReaderEnd {
    Done(StreamDigest),
    Failed(ApplyError),
}

fn reader_thread(
    mut src: impl Read,
    media_type: Option<&str>,
    tx: mpsc::SyncSender<Chunk>,
    recycle: mpsc::Receiver<Vec<u8>>,
) -> ReaderEnd {
    let prefix = match read_prefix(&mut src, 4) {
        Ok(p) => p,
        Err(e) => return ReaderEnd::Failed(ApplyError::Read(e)),
    };
    let compression = match detect(media_type, &prefix) {
        Ok(c) => c,
        Err(e) => return ReaderEnd::Failed(e),
    };
    let raw = io::Cursor::new(prefix).chain(src);
    let mut decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(CHUNK, raw),
        )),
        Compression::Zstd => match zstd::stream::read::Decoder::new(raw) {
            Ok(d) => Box::new(d),
            Err(e) => return ReaderEnd::Failed(corrupt(compression, e)),
        },
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let mut buf = recycle
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.resize(CHUNK, 0);
        // Fill the chunk as far as the decoder allows: fewer, larger messages.
        let mut filled = 0;
        let mut eof = false;
        while filled < CHUNK {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let err = if compression == Compression::None
                        && e.kind() != io::ErrorKind::InvalidData
                    {
                        ApplyError::Read(e)
                    } else {
                        corrupt(compression, e)
                    };
                    let _ = tx.send(Err(io::Error::other("layer stream failed")));
                    return ReaderEnd::Failed(err);
                }
            }
        }
        buf.truncate(filled);
        hasher.update(&buf);
        size += filled as u64;
        if filled > 0 && tx.send(Ok(buf)).is_err() {
            // A successful extractor drains the channel to EOF, so a closed channel means it
            // failed: stop reading, its error is what the caller gets.
            return ReaderEnd::Done(StreamDigest {
                diff_id: String::new(),
                size,
            });
        }
        if eof {
            return ReaderEnd::Done(StreamDigest {
                diff_id: sha256_string(hasher),
                size,
            });
        }
    }
}

fn corrupt(c: Compression, e: io::Error) -> ApplyError {
    ApplyError::Corrupt {
        context: format!("decoding {} stream", c.name()),
        source: e,
    }
}

/// Runs `consume` on the uncompressed stream while another thread decompresses and hashes it.
///
/// `consume` may stop reading early (a tar ends with zero blocks); the rest of the stream is
/// still read and hashed. If `consume` fails, the reader thread is stopped and `consume`'s
/// error is returned unless the stream itself was broken, whose error is then more telling.
pub(crate) fn run<T>(
    src: impl Read + Send,
    media_type: Option<&str>,
    consume: impl FnOnce(&mut ChunkReader) -> Result<T>,
) -> Result<(T, StreamDigest)> {
    let (tx, rx) = mpsc::sync_channel::<Chunk>(IN_FLIGHT);
    let (recycle_tx, recycle_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    std::thread::scope(|s| {
        let reader = s.spawn(move || reader_thread(src, media_type, tx, recycle_rx));
        let mut cr = ChunkReader {
            rx,
            recycle: recycle_tx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        };
        let outcome = consume(&mut cr);
        let drained = match &outcome {
            Ok(_) => cr.drain(),
            Err(_) => Ok(()),
        };
        // Dropping the receiver unblocks a reader thread that is still sending after a failure.
        drop(cr);
        let end = reader.join().unwrap_or_else(|_| {
            ReaderEnd::Failed(ApplyError::Read(io::Error::other(
                "layer reader thread panicked",
            )))
        });
        match (end, outcome) {
            (ReaderEnd::Failed(e), _) => Err(e),
            (ReaderEnd::Done(_), Err(e)) => Err(e),
            (ReaderEnd::Done(d), Ok(v)) => {
                drained.map_err(ApplyError::Read)?;
                Ok((v, d))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GZ: &[u8] = &[0x1f, 0x8b, 8, 0];
    const ZST: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

    #[test]
    fn magic_wins_only_when_media_type_is_missing_or_generic() {
        assert_eq!(detect(None, GZ).unwrap(), Compression::Gzip);
        assert_eq!(
            detect(Some("application/octet-stream"), ZST).unwrap(),
            Compression::Zstd
        );
        assert_eq!(detect(None, b"usr/").unwrap(), Compression::None);
        let oci = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(detect(Some(oci), b"usr/").unwrap(), Compression::None);
        assert_eq!(
            detect(Some(&format!("{oci}+gzip")), GZ).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            detect(Some(&format!("{oci}+zstd")), ZST).unwrap(),
            Compression::Zstd
        );
        let docker = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        assert_eq!(detect(Some(docker), GZ).unwrap(), Compression::Gzip);
        let e = detect(Some(oci), GZ).unwrap_err();
        assert!(matches!(e, ApplyError::MediaTypeMismatch { .. }), "{e}");
        let e = detect(Some(&format!("{oci}+gzip")), ZST).unwrap_err();
        assert!(matches!(e, ApplyError::MediaTypeMismatch { .. }), "{e}");
        let e = detect(Some("application/vnd.oci.image.config.v1+json"), GZ).unwrap_err();
        assert!(matches!(e, ApplyError::UnsupportedMediaType { .. }), "{e}");
    }
}
