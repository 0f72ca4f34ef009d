//! RFC 6455 frames, server side: heads read and checked one at a time (payloads are streamed
//! by the caller in pieces, so a frame announcing 2^62 bytes costs nothing until its bytes
//! arrive), and the unmasked frames a server sends.
//!
//! ```text
//!  |F|R|R|R| op(4) |M| len(7) | ext len (16 or 64, if len = 126 / 127) | mask key (32, if M) |
//! ```

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xa;

pub(crate) const MAX_CONTROL_PAYLOAD: u64 = 125;

pub(crate) const CLOSE_NORMAL: u16 = 1000;
pub(crate) const CLOSE_PROTOCOL: u16 = 1002;
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;

#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection ended inside a frame.
    Truncated,
    Io(io::Error),
    /// The peer broke the protocol: we answer with a close frame carrying `code` and `msg`.
    Protocol {
        code: u16,
        msg: String,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Truncated => write!(f, "connection closed inside a WebSocket frame"),
            ReadError::Io(e) => write!(f, "reading the WebSocket connection: {e}"),
            ReadError::Protocol { code, msg } => {
                write!(f, "WebSocket protocol error ({code}): {msg}")
            }
        }
    }
}

pub(crate) fn protocol(msg: impl Into<String>) -> ReadError {
    ReadError::Protocol {
        code: CLOSE_PROTOCOL,
        msg: msg.into(),
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Truncated
        } else {
            ReadError::Io(e)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: [u8; 4],
    pub(crate) len: u64,
}

impl Head {
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Reads and checks one frame head from a client. `Ok(None)`: the connection ended cleanly
/// between frames.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Head>, ReadError> {
    let mut b = [0u8; 2];
    let n = r.read(&mut b[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut b[1..]).await?;
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
        return Err(protocol(
            "reserved bits set, but no extension was negotiated",
        ));
    }
    let opcode = b[0] & 0x0f;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        op => return Err(protocol(format!("unknown opcode {op:#x}"))),
    }
    if b[1] & 0x80 == 0 {
        return Err(protocol("client frames must be masked"));
    }
    let len7 = u64::from(b[1] & 0x7f);
    if opcode & 0x8 != 0 {
        if !fin {
            return Err(protocol("fragmented control frame"));
        }
        if len7 > MAX_CONTROL_PAYLOAD {
            return Err(protocol(format!(
                "control frame with {len7} byte payload (at most 125)"
            )));
        }
    }
    let len = match len7 {
        126 => u64::from(r.read_u16().await?),
        127 => {
            let l = r.read_u64().await?;
            if l & (1 << 63) != 0 {
                return Err(protocol("payload length with the most significant bit set"));
            }
            l
        }
        l => l,
    };
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await?;
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        len,
    }))
}

/// Unmasks `data`, which starts `offset` bytes into the payload.
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[((offset + i as u64) % 4) as usize];
    }
}

/// Checks a close frame's payload: empty, or a valid code and a UTF-8 reason.
pub(crate) fn parse_close(p: &[u8]) -> Result<Option<u16>, ReadError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(protocol("close frame with a 1 byte payload")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(protocol(format!(
                    "close code {code} is not allowed on the wire"
                )));
            }
            if std::str::from_utf8(&p[2..]).is_err() {
                return Err(ReadError::Protocol {
                    code: CLOSE_INVALID_DATA,
                    msg: "close reason is not UTF-8".into(),
                });
            }
            Ok(Some(code))
        }
    }
}

/// The head of an unmasked (server) frame.
pub(crate) fn head(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(10);
    h.push(if fin { 0x80 } else { 0 } | opcode);
    if len < 126 {
        h.push(len as u8);
    } else if len <= 0xffff {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = head(opcode, true, payload.len());
    f.extend_from_slice(payload);
    f
}

pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    // A control payload holds 125 bytes: two for the code, the rest for a UTF-8 reason.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &p)
}

/// One message of the channel protocols: the channel byte, then the data; base64 variants
/// send text with the channel as an ASCII digit.
pub(crate) fn channel_message(channel: u8, data: &[u8], base64: bool) -> Vec<u8> {
    if base64 {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(data);
        let mut f = head(OP_TEXT, true, 1 + text.len());
        f.push(b'0' + channel);
        f.extend_from_slice(text.as_bytes());
        f
    } else {
        let mut f = head(OP_BINARY, true, 1 + data.len());
        f.push(channel);
        f.extend_from_slice(data);
        f
    }
}

/// A masked client frame, for the tests' client.
#[cfg(test)]
pub(crate) fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = head(opcode, fin, payload.len());
    f[1] |= 0x80;
    f.extend_from_slice(&mask);
    let mut p = payload.to_vec();
    unmask(&mut p, mask, 0);
    f.extend_from_slice(&p);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<Head>, ReadError> {
        let mut r = bytes;
        read_head(&mut r).await
    }

    fn proto_msg(r: Result<Option<Head>, ReadError>) -> String {
        match r {
            Err(ReadError::Protocol { msg, .. }) => msg,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn masked_frames_round_trip() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = client_frame(OP_BINARY, true, &payload, [1, 2, 3, 4]);
            let mut r = &f[..];
            let h = read_head(&mut r).await.unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.len), (true, OP_BINARY, len as u64));
            let mut p = r.to_vec();
            // Unmasking in two pieces must agree with one pass.
            let cut = p.len() / 3;
            let (a, b) = p.split_at_mut(cut);
            unmask(a, h.mask, 0);
            unmask(b, h.mask, cut as u64);
            assert_eq!(p, payload);
        }
    }

    #[tokio::test]
    async fn hostile_heads_are_refused() {
        let unmasked = frame(OP_BINARY, b"hi");
        assert!(proto_msg(parse(&unmasked).await).contains("must be masked"));
        let mut rsv = client_frame(OP_BINARY, true, b"x", [0; 4]);
        rsv[0] |= 0x40;
        assert!(proto_msg(parse(&rsv).await).contains("reserved bits"));
        let op = client_frame(0x3, true, b"x", [0; 4]);
        assert!(proto_msg(parse(&op).await).contains("unknown opcode"));
        let frag_ping = client_frame(OP_PING, false, b"x", [0; 4]);
        assert!(proto_msg(parse(&frag_ping).await).contains("fragmented control"));
        let big_ping = client_frame(OP_PING, true, &[0; 126], [0; 4]);
        assert!(proto_msg(parse(&big_ping).await).contains("at most 125"));
        let huge = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(proto_msg(parse(&huge).await).contains("most significant bit"));
    }

    #[tokio::test]
    async fn a_giant_length_costs_nothing_until_bytes_arrive() {
        // 2^40 bytes announced, none sent: the head parses, nothing is allocated for it.
        let mut f = vec![0x82, 0xff];
        f.extend_from_slice(&(1u64 << 40).to_be_bytes());
        f.extend_from_slice(&[9, 9, 9, 9]);
        let h = parse(&f).await.unwrap().unwrap();
        assert_eq!(h.len, 1 << 40);
    }

    #[tokio::test]
    async fn truncated_heads_and_clean_ends() {
        assert!(parse(b"").await.unwrap().is_none());
        assert!(matches!(parse(&[0x82]).await, Err(ReadError::Truncated)));
        assert!(matches!(
            parse(&[0x82, 0xfe, 0x01]).await,
            Err(ReadError::Truncated)
        ));
        assert!(matches!(
            parse(&[0x82, 0x85, 1, 2]).await,
            Err(ReadError::Truncated)
        ));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(b"").unwrap(), None);
        assert_eq!(parse_close(&[0x03, 0xe8]).unwrap(), Some(1000));
        assert!(parse_close(&[0x03]).is_err());
        assert!(parse_close(&[0x03, 0xed]).is_err(), "1005 is never sent");
        assert!(matches!(
            parse_close(&[0x03, 0xe8, 0xff]),
            Err(ReadError::Protocol { code: 1007, .. })
        ));
        let long = "é".repeat(100);
        let f = close_frame(1002, &long);
        assert!(f.len() <= 2 + 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    #[test]
    fn channel_messages() {
        assert_eq!(
            channel_message(1, b"ab", false),
            vec![0x82, 3, 1, b'a', b'b']
        );
        assert_eq!(channel_message(3, b"ab", true), b"\x81\x053YWI=".to_vec());
    }
}
