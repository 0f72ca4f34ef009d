//! A minimal client side of each protocol, written for the tests: raw HTTP/1.1 upgrade
//! requests, a SPDY framer with its own zlib contexts, and a masking WebSocket framer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use crate::streaming::transport::spdy::frame::{self, Control, Head};
use crate::streaming::transport::spdy::headers::{HeaderDecoder, HeaderEncoder, Headers};
use crate::streaming::transport::websocket::frame as ws;

/// Generous bound for anything a test waits for.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends a request head and reads the response head byte by byte (so that nothing after it,
/// which belongs to the upgraded protocol, is consumed), then any body by Content-Length.
pub(crate) async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = within("response head", s.read_u8()).await.unwrap();
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut r = Response {
        status,
        headers,
        body: String::new(),
    };
    if let Some(len) = r
        .header("content-length")
        .map(|l| l.parse::<usize>().unwrap())
    {
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.unwrap();
        r.body = String::from_utf8(body).unwrap();
    }
    r
}

pub(crate) fn spdy_headers(versions: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for v in versions {
        h.push(("X-Stream-Protocol-Version", v));
    }
    h
}

pub(crate) const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub(crate) fn ws_headers(protocols: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", WS_KEY),
    ];
    if !protocols.is_empty() {
        h.push(("Sec-WebSocket-Protocol", protocols));
    }
    h
}

// ---- SPDY ---------------------------------------------------------------------------------

pub(crate) struct SpdyWriter<W> {
    pub(crate) w: W,
    enc: HeaderEncoder,
    next_id: u32,
}

impl<W: AsyncWrite + Unpin> SpdyWriter<W> {
    pub(crate) fn new(w: W) -> Self {
        SpdyWriter {
            w,
            enc: HeaderEncoder::new(),
            next_id: 1,
        }
    }

    pub(crate) async fn open(&mut self, headers: &[(&str, &str)], fin: bool) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let block = self.enc.encode(&Headers::new(headers));
        let flags = if fin { frame::FLAG_FIN } else { 0 };
        self.raw(&frame::syn_stream(id, flags, &block)).await;
        id
    }

    pub(crate) async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let mut f = frame::data_head(id, fin, data.len()).to_vec();
        f.extend_from_slice(data);
        self.raw(&f).await;
    }

    pub(crate) async fn raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
        self.w.flush().await.unwrap();
    }
}

#[derive(Debug)]
pub(crate) enum Frame {
    Reply(u32),
    Data { id: u32, fin: bool, data: Vec<u8> },
    Rst { id: u32, status: u32 },
    GoAway { status: u32 },
    Ping(u32),
    WindowUpdate,
    Other,
}

pub(crate) struct SpdyReader<R> {
    r: R,
    dec: HeaderDecoder,
}

impl<R: AsyncRead + Unpin> SpdyReader<R> {
    pub(crate) fn new(r: R) -> Self {
        SpdyReader {
            r,
            dec: HeaderDecoder::new(),
        }
    }

    /// The next frame; None at EOF.
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        within("SPDY frame", self.next_untimed()).await
    }

    /// [`Self::next`] without a deadline, for tests on tokio's paused clock.
    pub(crate) async fn next_untimed(&mut self) -> Option<Frame> {
        let mut h = [0u8; 8];
        if self.r.read_exact(&mut h).await.is_err() {
            return None;
        }
        match frame::parse_head(h) {
            Head::Data { stream, flags, len } => {
                let mut data = vec![0; len as usize];
                self.r.read_exact(&mut data).await.unwrap();
                Some(Frame::Data {
                    id: stream,
                    fin: flags & frame::FLAG_FIN != 0,
                    data,
                })
            }
            Head::Control {
                kind, flags, len, ..
            } => {
                let mut p = vec![0; len as usize];
                self.r.read_exact(&mut p).await.unwrap();
                Some(match frame::parse_control(kind, flags, &p).unwrap() {
                    Control::SynReply { stream, block, .. } => {
                        self.dec.decode(&block).unwrap();
                        Frame::Reply(stream)
                    }
                    Control::RstStream { stream, status } => Frame::Rst { id: stream, status },
                    Control::GoAway { status, .. } => Frame::GoAway { status },
                    Control::Ping { id } => Frame::Ping(id),
                    Control::WindowUpdate { .. } => Frame::WindowUpdate,
                    _ => Frame::Other,
                })
            }
        }
    }

    /// Reads frames until `n` SYN_REPLYs arrived; returns their stream ids.
    pub(crate) async fn replies(&mut self, n: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        while ids.len() < n {
            match self.next().await {
                Some(Frame::Reply(id)) => ids.push(id),
                Some(Frame::WindowUpdate) => {}
                // The end of a stream opened earlier.
                Some(Frame::Data {
                    data, fin: true, ..
                }) if data.is_empty() => {}
                other => panic!("expected SYN_REPLY, got {other:?}"),
            }
        }
        ids
    }

    /// Reads until GOAWAY or EOF.
    pub(crate) async fn until_goaway(&mut self) -> Collected {
        let mut c = Collected::default();
        loop {
            match self.next().await {
                None => return c,
                Some(Frame::Data { id, fin, data }) => {
                    c.data.entry(id).or_default().extend_from_slice(&data);
                    if fin {
                        c.fins.insert(id);
                    }
                }
                Some(Frame::GoAway { status }) => {
                    c.goaway = Some(status);
                    return c;
                }
                Some(Frame::Rst { id, status }) => {
                    c.rsts.insert(id, status);
                }
                Some(Frame::Reply(id)) => {
                    c.replies.push(id);
                }
                Some(_) => {}
            }
        }
    }

    /// Everything left until the server closes.
    pub(crate) async fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = within("EOF", self.r.read_to_end(&mut v)).await;
        v
    }
}

#[derive(Default, Debug)]
pub(crate) struct Collected {
    pub(crate) data: HashMap<u32, Vec<u8>>,
    pub(crate) fins: HashSet<u32>,
    pub(crate) rsts: HashMap<u32, u32>,
    pub(crate) replies: Vec<u32>,
    pub(crate) goaway: Option<u32>,
}

impl Collected {
    pub(crate) fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(|v| &v[..]).unwrap_or(b"")).into_owned()
    }
}

// ---- WebSocket ----------------------------------------------------------------------------

pub(crate) const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub(crate) async fn ws_send<W: AsyncWrite + Unpin>(w: &mut W, opcode: u8, payload: &[u8]) {
    w.write_all(&ws::client_frame(opcode, true, payload, MASK))
        .await
        .unwrap();
    w.flush().await.unwrap();
}

/// One server frame: (opcode, fin, payload); None at EOF. Server frames must be unmasked.
pub(crate) async fn ws_next<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, bool, Vec<u8>)> {
    let mut b = [0u8; 2];
    if within("WebSocket frame", r.read_exact(&mut b))
        .await
        .is_err()
    {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
    let len = match b[1] & 0x7f {
        126 => r.read_u16().await.unwrap() as usize,
        127 => r.read_u64().await.unwrap() as usize,
        l => l as usize,
    };
    let mut p = vec![0; len];
    r.read_exact(&mut p).await.unwrap();
    Some((b[0] & 0x0f, b[0] & 0x80 != 0, p))
}

/// Reads messages until a close frame; returns the data per channel, the close code, and the
/// channels seen in order of their first message.
pub(crate) async fn ws_until_close<R: AsyncRead + Unpin>(
    r: &mut R,
    base64: bool,
) -> (HashMap<u8, Vec<u8>>, Option<u16>, Vec<u8>) {
    use base64::Engine;
    let mut data: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut order = Vec::new();
    while let Some((op, _, p)) = ws_next(r).await {
        match op {
            ws::OP_CLOSE => {
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                return (data, code, order);
            }
            ws::OP_BINARY | ws::OP_TEXT => {
                let (ch, body) = if base64 {
                    let ch = p[0] - b'0';
                    let body = base64::engine::general_purpose::STANDARD
                        .decode(&p[1..])
                        .unwrap();
                    (ch, body)
                } else {
                    (p[0], p[1..].to_vec())
                };
                if !order.contains(&ch) {
                    order.push(ch);
                }
                data.entry(ch).or_default().extend_from_slice(&body);
            }
            _ => {}
        }
    }
    (data, None, order)
}

/// The client half of SPDY inside WebSocket: a byte stream whose writes become masked binary
/// messages and whose reads are the payloads of the server's messages.
pub(crate) fn ws_tunnel<S>(s: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mine, theirs) = tokio::io::duplex(1 << 20);
    let (mut rd, mut wr) = tokio::io::split(s);
    let (mut trd, mut twr) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match trd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = wr
                        .write_all(&ws::client_frame(ws::OP_CLOSE, true, &[3, 0xe8], MASK))
                        .await;
                    return;
                }
                Ok(n) => {
                    let f = ws::client_frame(ws::OP_BINARY, true, &buf[..n], MASK);
                    if wr.write_all(&f).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some((op, _, p)) = ws_next(&mut rd).await {
            if op == ws::OP_CLOSE {
                break;
            }
            if (op == ws::OP_BINARY || op == ws::OP_CONTINUATION)
                && twr.write_all(&p).await.is_err()
            {
                return;
            }
        }
        let _ = twr.shutdown().await;
    });
    mine
}
