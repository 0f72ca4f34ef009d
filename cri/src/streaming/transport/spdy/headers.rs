//! SPDY/3 name/value header blocks: the plain layout (a count, then length-prefixed names and
//! values, all 32-bit big-endian) and its zlib compression. Each direction of a connection is
//! one zlib stream primed with the SPDY dictionary; every block ends with a sync flush, so a
//! block decodes completely on its own but only in order. A decoding error therefore poisons
//! the whole connection: it is a connection-level protocol error, never a stream error.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::dictionary;
use super::frame::FrameError;

/// Largest decompressed header block we accept. kubelet's clients send a handful of short
/// headers; the limit keeps a zlib bomb from growing memory.
pub(crate) const MAX_DECODED_BLOCK: usize = 64 << 10;
/// Most name/value pairs in one block.
const MAX_PAIRS: u32 = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers(Vec<(String, String)>);

impl Headers {
    #[cfg(test)]
    pub(crate) fn new(pairs: &[(&str, &str)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The first value of `name` (SPDY joins repeated values with NUL; names are lowercase on
    /// the wire, and Go's canonical `streamType` arrives as `streamtype`).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }
}

pub(crate) struct HeaderDecoder {
    z: Decompress,
}

impl HeaderDecoder {
    pub(crate) fn new() -> HeaderDecoder {
        HeaderDecoder {
            z: Decompress::new(true),
        }
    }

    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let plain = self.inflate(block)?;
        parse_block(&plain)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out: Vec<u8> = Vec::with_capacity(512);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_DECODED_BLOCK {
                    return Err(FrameError::Protocol(format!(
                        "header block decompresses to more than {MAX_DECODED_BLOCK} bytes"
                    )));
                }
                out.reserve((out.len()).min(MAX_DECODED_BLOCK - out.len()).max(512));
            }
            let (in0, out0) = (self.z.total_in(), out.len());
            let r = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.z.total_in() - in0) as usize;
            input = &input[consumed..];
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(dictionary()).map_err(|e| {
                        FrameError::Protocol(format!("bad header compression: {e}"))
                    })?;
                }
                Err(e) => {
                    return Err(FrameError::Protocol(format!("bad header compression: {e}")));
                }
                Ok(Status::StreamEnd) if !input.is_empty() => {
                    return Err(FrameError::Protocol(
                        "bad header compression: zlib stream ended inside a header block".into(),
                    ));
                }
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if consumed == 0 && out.len() == out0 && out.len() < out.capacity() {
                        return Err(FrameError::Protocol(
                            "bad header compression: no progress on the header block".into(),
                        ));
                    }
                }
            }
        }
    }
}

fn parse_block(b: &[u8]) -> Result<Headers, FrameError> {
    let bad = |what: &str| FrameError::Protocol(format!("malformed header block: {what}"));
    let mut r = b;
    let take_u32 = |r: &mut &[u8]| -> Result<u32, FrameError> {
        if r.len() < 4 {
            return Err(bad("truncated length"));
        }
        let v = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        *r = &r[4..];
        Ok(v)
    };
    let n = take_u32(&mut r)?;
    if n > MAX_PAIRS {
        return Err(bad(&format!("{n} pairs, more than {MAX_PAIRS}")));
    }
    let mut pairs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut strings = [String::new(), String::new()];
        for s in strings.iter_mut() {
            let len = take_u32(&mut r)? as usize;
            if len > r.len() {
                return Err(bad("a string runs past the end of the block"));
            }
            *s = String::from_utf8_lossy(&r[..len]).into_owned();
            r = &r[len..];
        }
        let [name, value] = strings;
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        pairs.push((name, value));
    }
    Ok(Headers(pairs))
}

pub(crate) struct HeaderEncoder {
    z: Compress,
}

impl HeaderEncoder {
    pub(crate) fn new() -> HeaderEncoder {
        let mut z = Compress::new(Compression::default(), true);
        // Only fails for a stream that has already produced output.
        z.set_dictionary(dictionary())
            .expect("a fresh zlib stream accepts a dictionary");
        HeaderEncoder { z }
    }

    pub(crate) fn encode(&mut self, headers: &Headers) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.0.len() as u32).to_be_bytes());
        for (k, v) in &headers.0 {
            let k = k.to_ascii_lowercase();
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate into a growing buffer cannot fail");
            input = &input[(self.z.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn dictionary_is_spdy3s() {
        // The dictionary id zlib puts in every SPDY/3 header stream.
        assert_eq!(dictionary().len(), 1423);
        assert_eq!(adler32(dictionary()), 0xe3c6_a7c2);
    }

    #[test]
    fn decodes_blocks_from_reference_zlib_in_one_context() {
        // Two consecutive blocks from one zlib stream (Python's zlib with the SPDY dictionary,
        // level 9, sync flush after each), as a port-forward client sends them.
        let b1 = unhex(
            "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff",
        );
        let b2 = unhex("c2aa19540e2512d60b000000ffff");
        let mut d = HeaderDecoder::new();
        let h1 = d.decode(&b1).unwrap();
        assert_eq!(h1.get("streamType"), Some("error"));
        assert_eq!(h1.get("port"), Some("8080"));
        assert_eq!(h1.get("requestID"), Some("0"));
        let h2 = d.decode(&b2).unwrap();
        assert_eq!(h2.get("streamtype"), Some("data"));
        // The second block alone is meaningless to a fresh context.
        assert!(HeaderDecoder::new().decode(&b2).is_err());
    }

    #[test]
    fn round_trips_through_our_encoder() {
        let mut e = HeaderEncoder::new();
        let mut d = HeaderDecoder::new();
        for i in 0..5 {
            let h = Headers::new(&[("streamtype", "stdout"), ("n", &i.to_string())]);
            let got = d.decode(&e.encode(&h)).unwrap();
            assert_eq!(got, h);
        }
    }

    #[test]
    fn our_stream_names_the_dictionary_as_go_expects() {
        // Go's zlib.NewReaderDict wants the FDICT flag and the dictionary's id in the header.
        let block = HeaderEncoder::new().encode(&Headers::default());
        assert_eq!(block[0] & 0x0f, 8, "deflate");
        assert_ne!(block[1] & 0x20, 0, "FDICT");
        assert_eq!((u16::from(block[0]) << 8 | u16::from(block[1])) % 31, 0);
        assert_eq!(block[2..6], 0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn garbage_is_a_clear_compression_error() {
        let err = HeaderDecoder::new()
            .decode(b"this is not zlib at all")
            .unwrap_err();
        assert!(err.to_string().contains("bad header compression"), "{err}");
    }

    #[test]
    fn a_zlib_bomb_stops_at_the_limit() {
        let mut e = HeaderEncoder::new();
        let big = "a".repeat(MAX_DECODED_BLOCK * 4);
        let block = e.encode(&Headers::new(&[("x", &big)]));
        assert!(block.len() < MAX_DECODED_BLOCK / 16, "compresses well");
        let err = HeaderDecoder::new().decode(&block).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn malformed_plain_blocks_are_refused() {
        for (plain, want) in [
            (&b"\x00\x00"[..], "truncated length"),
            (&b"\xff\xff\xff\xff"[..], "pairs"),
            (&b"\x00\x00\x00\x01\x00\x00\x00\x09ab"[..], "runs past"),
            (
                &b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"[..],
                "empty header name",
            ),
        ] {
            let err = parse_block(plain).unwrap_err();
            assert!(err.to_string().contains(want), "{err} !~ {want}");
        }
    }
}
