//! SPDY/3 frames (draft-mbelshe-httpbis-spdy-00, the version kubelet's clients speak under the
//! name "SPDY/3.1"; 3.1 only adds connection-level WINDOW_UPDATE on stream 0).
//!
//! ```text
//!  control: |1| version(15) | type(16) |   data: |0| stream id (31)     |
//!           | flags(8) |  length(24)   |         | flags(8) | length(24) |
//!           |        payload ...       |         |      payload ...      |
//! ```
//!
//! Parsing is split so that the session never holds a whole DATA payload: the 8-byte head is
//! decoded first, DATA payloads are then streamed in pieces, and only control payloads (bounded
//! by [`MAX_CONTROL_PAYLOAD`]) are read whole and parsed here.

pub(crate) const VERSION: u16 = 3;
/// Longest control frame payload we read. Header blocks from kubelet's clients are a few
/// dozen bytes; everything else has a fixed size.
pub(crate) const MAX_CONTROL_PAYLOAD: u32 = 64 << 10;

pub(crate) const FLAG_FIN: u8 = 0x01;
pub(crate) const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_SETTINGS_CLEAR: u8 = 0x01;

pub(crate) const TYPE_SYN_STREAM: u16 = 1;
pub(crate) const TYPE_SYN_REPLY: u16 = 2;
pub(crate) const TYPE_RST_STREAM: u16 = 3;
pub(crate) const TYPE_SETTINGS: u16 = 4;
pub(crate) const TYPE_PING: u16 = 6;
pub(crate) const TYPE_GOAWAY: u16 = 7;
pub(crate) const TYPE_HEADERS: u16 = 8;
pub(crate) const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub(crate) mod rst {
    pub(crate) const PROTOCOL_ERROR: u32 = 1;
    pub(crate) const REFUSED_STREAM: u32 = 3;
    pub(crate) const CANCEL: u32 = 5;
    pub(crate) const FLOW_CONTROL_ERROR: u32 = 7;
    pub(crate) const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub(crate) mod goaway {
    pub(crate) const OK: u32 = 0;
    pub(crate) const PROTOCOL_ERROR: u32 = 1;
}

pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The peer broke the protocol; the connection ends with GOAWAY(PROTOCOL_ERROR).
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> FrameError {
    FrameError::Protocol(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        len: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        len: u32,
    },
}

pub(crate) fn parse_head(b: [u8; 8]) -> Head {
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let flags = b[4];
    let len = u32::from_be_bytes([0, b[5], b[6], b[7]]);
    if first & 0x8000_0000 != 0 {
        Head::Control {
            version: ((first >> 16) & 0x7fff) as u16,
            kind: first as u16,
            flags,
            len,
        }
    } else {
        Head::Data {
            stream: first,
            flags,
            len,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    SynStream {
        stream: u32,
        fin: bool,
        unidirectional: bool,
        block: Vec<u8>,
    },
    SynReply {
        stream: u32,
        fin: bool,
        block: Vec<u8>,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        /// (id, value); the per-entry flags only matter to clients that persist settings.
        entries: Vec<(u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        block: Vec<u8>,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A type this version does not define (or CREDENTIAL): ignored, as the draft requires.
    Unknown {
        kind: u16,
    },
}

fn be32(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

/// Parses a control payload whose head said `kind` and `flags`. The version has already been
/// checked; `p` is the whole payload.
pub(crate) fn parse_control(kind: u16, flags: u8, p: &[u8]) -> Result<Control, FrameError> {
    let need = |min: usize, exact: bool, name: &str| -> Result<(), FrameError> {
        if p.len() < min || (exact && p.len() != min) {
            Err(protocol(format!(
                "{name} frame with a {} byte payload (expected {}{min})",
                p.len(),
                if exact { "" } else { "at least " }
            )))
        } else {
            Ok(())
        }
    };
    let stream_id = |name: &str| -> Result<u32, FrameError> {
        let id = be32(p) & 0x7fff_ffff;
        if id == 0 {
            Err(protocol(format!("{name} frame for stream 0")))
        } else {
            Ok(id)
        }
    };
    Ok(match kind {
        TYPE_SYN_STREAM => {
            need(10, false, "SYN_STREAM")?;
            Control::SynStream {
                stream: stream_id("SYN_STREAM")?,
                fin: flags & FLAG_FIN != 0,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                block: p[10..].to_vec(),
            }
        }
        TYPE_SYN_REPLY => {
            need(4, false, "SYN_REPLY")?;
            Control::SynReply {
                stream: stream_id("SYN_REPLY")?,
                fin: flags & FLAG_FIN != 0,
                block: p[4..].to_vec(),
            }
        }
        TYPE_RST_STREAM => {
            need(8, true, "RST_STREAM")?;
            Control::RstStream {
                stream: stream_id("RST_STREAM")?,
                status: be32(&p[4..]),
            }
        }
        TYPE_SETTINGS => {
            need(4, false, "SETTINGS")?;
            let n = be32(p) as usize;
            if p.len() != 4 + n.saturating_mul(8) {
                return Err(protocol(format!(
                    "SETTINGS frame announces {n} entries in {} bytes",
                    p.len()
                )));
            }
            let entries = p[4..]
                .chunks_exact(8)
                .map(|e| (be32(e) & 0x00ff_ffff, be32(&e[4..])))
                .collect();
            Control::Settings {
                clear: flags & FLAG_SETTINGS_CLEAR != 0,
                entries,
            }
        }
        TYPE_PING => {
            need(4, true, "PING")?;
            Control::Ping { id: be32(p) }
        }
        TYPE_GOAWAY => {
            need(8, true, "GOAWAY")?;
            Control::GoAway {
                last_good: be32(p) & 0x7fff_ffff,
                status: be32(&p[4..]),
            }
        }
        TYPE_HEADERS => {
            need(4, false, "HEADERS")?;
            Control::Headers {
                stream: stream_id("HEADERS")?,
                fin: flags & FLAG_FIN != 0,
                block: p[4..].to_vec(),
            }
        }
        TYPE_WINDOW_UPDATE => {
            need(8, true, "WINDOW_UPDATE")?;
            Control::WindowUpdate {
                stream: be32(p) & 0x7fff_ffff,
                delta: be32(&p[4..]) & 0x7fff_ffff,
            }
        }
        kind => Control::Unknown { kind },
    })
}

pub(crate) fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() < 1 << 24);
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(
        &(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind)).to_be_bytes(),
    );
    f.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub(crate) fn data_head(stream: u32, fin: bool, len: usize) -> [u8; 8] {
    debug_assert!(len < 1 << 24);
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    let flags = if fin { FLAG_FIN } else { 0 };
    h[4..].copy_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
    h
}

pub(crate) fn syn_reply(stream: u32, fin: bool, block: &[u8]) -> Vec<u8> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(block);
    control(TYPE_SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &p)
}

pub(crate) fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(TYPE_RST_STREAM, 0, &p)
}

pub(crate) fn ping(id: u32) -> Vec<u8> {
    control(TYPE_PING, 0, &id.to_be_bytes())
}

pub(crate) fn goaway(last_good: u32, status: u32) -> Vec<u8> {
    let mut p = last_good.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(TYPE_GOAWAY, 0, &p)
}

pub(crate) fn window_update(stream: u32, delta: u32) -> Vec<u8> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(&delta.to_be_bytes());
    control(TYPE_WINDOW_UPDATE, 0, &p)
}

#[cfg(test)]
pub(crate) fn syn_stream(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(block);
    control(TYPE_SYN_STREAM, flags, &p)
}

#[cfg(test)]
pub(crate) fn settings(entries: &[(u32, u32)]) -> Vec<u8> {
    let mut p = (entries.len() as u32).to_be_bytes().to_vec();
    for (id, v) in entries {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    control(TYPE_SETTINGS, 0, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(b: &[u8]) -> Head {
        parse_head(b[..8].try_into().unwrap())
    }

    #[test]
    fn heads_round_trip() {
        assert_eq!(
            head(&data_head(7, true, 300)),
            Head::Data {
                stream: 7,
                flags: FLAG_FIN,
                len: 300
            }
        );
        assert_eq!(
            head(&ping(9)),
            Head::Control {
                version: 3,
                kind: TYPE_PING,
                flags: 0,
                len: 4
            }
        );
        // A 24-bit length is read as is: the session, not the parser, bounds what it reads.
        assert_eq!(
            head(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]),
            Head::Data {
                stream: 1,
                flags: 0,
                len: (1 << 24) - 1
            }
        );
    }

    #[test]
    fn control_frames_parse() {
        let f = syn_stream(3, FLAG_FIN, b"blk");
        assert_eq!(
            parse_control(TYPE_SYN_STREAM, FLAG_FIN, &f[8..]).unwrap(),
            Control::SynStream {
                stream: 3,
                fin: true,
                unidirectional: false,
                block: b"blk".to_vec()
            }
        );
        let f = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1000)]);
        assert_eq!(
            parse_control(TYPE_SETTINGS, 0, &f[8..]).unwrap(),
            Control::Settings {
                clear: false,
                entries: vec![(SETTINGS_INITIAL_WINDOW_SIZE, 1000)]
            }
        );
        let f = window_update(5, 0x8000_0010);
        assert_eq!(
            parse_control(TYPE_WINDOW_UPDATE, 0, &f[8..]).unwrap(),
            Control::WindowUpdate {
                stream: 5,
                delta: 0x10
            }
        );
        assert_eq!(
            parse_control(42, 0, b"whatever").unwrap(),
            Control::Unknown { kind: 42 }
        );
    }

    #[test]
    fn malformed_control_frames_are_protocol_errors() {
        for (kind, payload, want) in [
            (TYPE_SYN_STREAM, &b"\0\0\0\x01"[..], "at least 10"),
            (TYPE_SYN_STREAM, &[0u8; 10][..], "stream 0"),
            (TYPE_RST_STREAM, &[0, 0, 0, 1, 0, 0, 0][..], "expected 8"),
            (TYPE_PING, &[0, 0, 0, 1, 0][..], "expected 4"),
            (TYPE_GOAWAY, &[0u8; 4][..], "expected 8"),
            (TYPE_SETTINGS, &[0xff, 0xff, 0xff, 0xff][..], "announces"),
            (TYPE_HEADERS, &[0u8; 4][..], "stream 0"),
        ] {
            let err = parse_control(kind, 0, payload).unwrap_err();
            assert!(err.to_string().contains(want), "{err} !~ {want}");
        }
    }
}
