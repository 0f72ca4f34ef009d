//! WebSocket (RFC 6455) sessions in the Kubernetes channel protocols (apimachinery wsstream):
//! every message starts with a channel byte (an ASCII digit, and base64 data, in the
//! `base64.` variants).
//!
//! - exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. `v5.channel.k8s.io` adds
//!   the CLOSE signal, a message `[255, channel]` that half-closes stdin. The connection's
//!   close ends every channel; the server never closes a channel on its own.
//! - port-forward (`v4.channel.k8s.io` on /portforward): two channels per `port` query
//!   parameter, data (2i) and error (2i+1); the first message on each carries the port as two
//!   little-endian bytes.
//! - `SPDY/3.1+portforward.k8s.io`: binary messages carry a SPDY connection ([`tunnel`]);
//!   what crictl and kubectl use for port-forward over WebSocket.

pub(crate) mod frame;
pub(crate) mod tunnel;

use std::sync::Arc;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;

use self::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, ReadError};
use super::mux::{Framing, Mux, Pushed};
use super::status::Version;
use super::{
    Closed, PortForwardSession, PortForwardStream, RemoteCommand, RemoteCommandOptions,
    StatusWriter, resize,
};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest base64 text message we collect before decoding (a 32 KiB chunk is 44 KiB of text).
pub(crate) const MAX_TEXT_MESSAGE: usize = 256 << 10;
const READ_CHUNK: usize = 16 << 10;

const STDIN: u32 = 0;
const STDOUT: u32 = 1;
const STDERR: u32 = 2;
const ERROR: u32 = 3;
const RESIZE: u32 = 4;
/// The v5 CLOSE signal's channel byte.
const CLOSE_SIGNAL: u8 = 255;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

pub(crate) enum Mode {
    RemoteCommand {
        opts: RemoteCommandOptions,
        version: Version,
        base64: bool,
    },
    PortForward {
        ports: Vec<u16>,
        base64: bool,
    },
}

pub(crate) enum Ready {
    RemoteCommand(RemoteCommand),
    PortForward(PortForwardSession),
}

/// Starts a channel-protocol session on an upgraded connection.
pub(crate) fn start<IO>(io: IO, mode: Mode) -> (Arc<Mux>, Ready)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let base64 = match &mode {
        Mode::RemoteCommand { base64, .. } | Mode::PortForward { base64, .. } => *base64,
    };
    let mux = Mux::new(Framing::WebSocket { base64 });
    let mut reader = ChannelReader {
        mux: mux.clone(),
        readable: [false; 256],
        close_signal: false,
        base64,
        msg: None,
        chunk: vec![0; READ_CHUNK],
        _pairs: None,
    };
    let ready = match mode {
        Mode::RemoteCommand { opts, version, .. } => {
            for ch in [STDIN, STDOUT, STDERR, ERROR, RESIZE] {
                mux.open(ch, false);
            }
            reader.close_signal = version >= Version::V5;
            let stdin = opts.stdin.then(|| mux.reader(STDIN));
            let stdout = opts.stdout.then(|| mux.writer(STDOUT));
            let stderr = (opts.stderr && !opts.tty).then(|| mux.writer(STDERR));
            let resize = opts.tty.then(|| resize::spawn(mux.reader(RESIZE)));
            for (ch, read) in [(STDIN, opts.stdin), (RESIZE, opts.tty)] {
                if read {
                    reader.readable[ch as usize] = true;
                } else {
                    mux.abandon(ch);
                }
            }
            for ch in [STDOUT, STDERR, ERROR] {
                mux.abandon(ch);
            }
            // kubelet sends an empty message on the first channel it will write, so the client
            // knows the connection is up before any output.
            let first = if stdout.is_some() {
                STDOUT
            } else if stderr.is_some() {
                STDERR
            } else {
                ERROR
            };
            let _ = mux.control_now(frame::channel_message(first as u8, &[], base64));
            let outputs = [
                stdout.as_ref().map(|_| STDOUT),
                stderr.as_ref().map(|_| STDERR),
            ]
            .into_iter()
            .flatten()
            .collect();
            Ready::RemoteCommand(RemoteCommand {
                stdin: stdin.map(|r| Box::pin(r) as _),
                stdout: stdout.map(|w| Box::pin(w) as _),
                stderr: stderr.map(|w| Box::pin(w) as _),
                resize,
                status: StatusWriter::new(mux.clone(), ERROR, outputs, version),
                closed: Closed::new(mux.closed()),
            })
        }
        Mode::PortForward { ports, .. } => {
            let (tx, rx) = mpsc::channel(ports.len().max(1));
            let mut channels = Vec::new();
            for (i, port) in ports.iter().enumerate() {
                let (data, error) = (2 * i as u32, 2 * i as u32 + 1);
                mux.open(data, false);
                mux.open(error, false);
                reader.readable[data as usize] = true;
                mux.abandon(error);
                for ch in [data, error] {
                    let _ = mux.write_now(ch, &port.to_le_bytes());
                }
                let s = PortForwardStream {
                    port: *port,
                    data_in: Box::pin(mux.reader(data)),
                    data_out: Box::pin(mux.writer(data)),
                    error: Box::pin(mux.writer(error)),
                };
                let _ = tx.try_send(s);
                channels.extend([data, error]);
            }
            // kubelet closes the connection once every forwarded port is done; here that is
            // when the backend has dropped (or shut down) every writer.
            let m = mux.clone();
            tokio::spawn(async move {
                m.wait_finished(&channels).await;
                m.close_ok();
            });
            // The sender lives as long as the reader, so `next` ends with the connection.
            reader._pairs = Some(tx);
            Ready::PortForward(PortForwardSession { rx })
        }
    };
    tokio::spawn(mux.clone().run_writer(wr));
    let m = mux.clone();
    tokio::spawn(async move {
        let ended = tokio::select! {
            r = reader.run(&mut rd) => r,
            _ = m.linger_over() => Ok(()),
        };
        let drain = match ended {
            Ok(()) => false,
            Err(ReadError::Protocol { code, msg }) => {
                log::warn!("streaming: closing a WebSocket connection: {msg}");
                m.abort(frame::close_frame(code, &msg));
                true
            }
            Err(e) => {
                log::debug!("streaming: WebSocket connection ended: {e}");
                false
            }
        };
        m.reader_finished(&mut rd, drain).await;
        drop(reader);
    });
    (mux, ready)
}

struct Message {
    /// The channel, once the first payload byte has arrived.
    channel: Option<u8>,
    /// A v5 CLOSE signal: the bytes after 255.
    signal: Option<Vec<u8>>,
    /// Base64 variants: the whole text, decoded at the end.
    text: Vec<u8>,
}

struct ChannelReader {
    mux: Arc<Mux>,
    readable: [bool; 256],
    close_signal: bool,
    base64: bool,
    msg: Option<Message>,
    chunk: Vec<u8>,
    _pairs: Option<mpsc::Sender<PortForwardStream>>,
}

impl ChannelReader {
    async fn run<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<(), ReadError> {
        loop {
            let Some(h) = frame::read_head(rd).await? else {
                return Ok(());
            };
            if h.is_control() {
                let mut p = vec![0u8; h.len as usize];
                rd.read_exact(&mut p).await?;
                frame::unmask(&mut p, h.mask, 0);
                match h.opcode {
                    OP_PING
                        if self.mux.control(frame::frame(OP_PONG, &p)).await == Pushed::Closing =>
                    {
                        return Ok(());
                    }
                    OP_CLOSE => {
                        let code = frame::parse_close(&p)?;
                        // Echo the code, as RFC 6455 section 5.5.1 asks, after what is queued.
                        self.mux
                            .close(frame::close_frame(code.unwrap_or(frame::CLOSE_NORMAL), ""));
                        return Ok(());
                    }
                    _ => {} // pong
                }
                continue;
            }
            match (h.opcode, self.msg.is_some()) {
                (OP_CONTINUATION, false) => {
                    return Err(frame::protocol("continuation frame outside a message"));
                }
                (OP_TEXT | OP_BINARY, true) => {
                    return Err(frame::protocol(
                        "a new message began before the previous one ended",
                    ));
                }
                (OP_TEXT | OP_BINARY, false) => {
                    self.msg = Some(Message {
                        channel: None,
                        signal: None,
                        text: Vec::new(),
                    });
                }
                _ => {}
            }
            let mut offset = 0u64;
            while offset < h.len {
                let n = (h.len - offset).min(READ_CHUNK as u64) as usize;
                let mut chunk = std::mem::take(&mut self.chunk);
                let r = rd.read_exact(&mut chunk[..n]).await;
                if let Err(e) = r {
                    self.chunk = chunk;
                    return Err(e.into());
                }
                frame::unmask(&mut chunk[..n], h.mask, offset);
                let r = self.bytes(&chunk[..n]).await;
                self.chunk = chunk;
                r?;
                offset += n as u64;
            }
            if h.fin {
                self.end_message().await?;
            }
        }
    }

    async fn bytes(&mut self, mut d: &[u8]) -> Result<(), ReadError> {
        let msg = self.msg.as_mut().expect("a message is open");
        if self.base64 {
            if msg.text.len() + d.len() > MAX_TEXT_MESSAGE {
                return Err(ReadError::Protocol {
                    code: frame::CLOSE_TOO_BIG,
                    msg: format!("message larger than {MAX_TEXT_MESSAGE} bytes"),
                });
            }
            msg.text.extend_from_slice(d);
            return Ok(());
        }
        if msg.channel.is_none() && msg.signal.is_none() {
            let Some((&c, rest)) = d.split_first() else {
                return Ok(());
            };
            d = rest;
            if self.close_signal && c == CLOSE_SIGNAL {
                msg.signal = Some(Vec::new());
            } else {
                msg.channel = Some(c);
            }
        }
        if let Some(sig) = msg.signal.as_mut() {
            sig.extend_from_slice(d);
            if sig.len() > 1 {
                return Err(frame::protocol(
                    "a CLOSE signal must name exactly one channel",
                ));
            }
            return Ok(());
        }
        let ch = msg.channel.expect("set above");
        self.deliver(ch, d).await
    }

    async fn deliver(&self, ch: u8, d: &[u8]) -> Result<(), ReadError> {
        // Data for a channel nobody reads is dropped, as kubelet does.
        if d.is_empty() || !self.readable[ch as usize] {
            return Ok(());
        }
        match self.mux.push(u32::from(ch), d).await {
            Pushed::Closing => Err(ReadError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection closing",
            ))),
            _ => Ok(()),
        }
    }

    async fn end_message(&mut self) -> Result<(), ReadError> {
        let msg = self.msg.take().expect("a message is open");
        if self.base64 {
            let Some((&c, text)) = msg.text.split_first() else {
                return Ok(());
            };
            let ch = c.wrapping_sub(b'0');
            let data = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ReadError::Protocol {
                    code: frame::CLOSE_INVALID_DATA,
                    msg: format!("channel {ch}: invalid base64: {e}"),
                })?;
            return self.deliver(ch, &data).await;
        }
        if let Some(sig) = msg.signal {
            let [ch] = sig[..] else {
                return Err(frame::protocol(
                    "a CLOSE signal must name exactly one channel",
                ));
            };
            if !self.mux.has_stream(u32::from(ch)) {
                return Err(frame::protocol(format!(
                    "CLOSE signal for channel {ch}, which does not exist"
                )));
            }
            self.mux.end_inbound(u32::from(ch));
        }
        Ok(())
    }
}
