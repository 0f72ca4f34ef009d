//! The reader side of a SPDY connection: frames in, streams assembled for the backend.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::frame::{self, Control, Head, goaway, rst};
use super::headers::{HeaderDecoder, HeaderEncoder, Headers};
use crate::streaming::transport::mux::{Framing, Mux, Pushed};
use crate::streaming::transport::status::Version;
use crate::streaming::transport::{
    Closed, PortForwardSession, PortForwardStream, RemoteCommand, RemoteCommandOptions,
    StatusWriter, resize,
};

/// Streams one connection may have open at once; more are refused (REFUSED_STREAM).
const MAX_STREAMS: usize = 1024;
/// How long half a port-forward pair may wait for the other half (kubelet's stream creation
/// timeout).
pub(crate) const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest piece of a DATA payload read at once.
const READ_CHUNK: usize = 16 << 10;
/// Complete port-forward pairs waiting for the backend to take them.
const PAIR_QUEUE: usize = 64;

pub(crate) enum Mode {
    RemoteCommand {
        opts: RemoteCommandOptions,
        version: Version,
    },
    PortForward,
}

pub(crate) enum Ready {
    /// Resolves once the client has opened every stream (or never, if the connection ends
    /// first: the sender is dropped).
    RemoteCommand(oneshot::Receiver<RemoteCommand>),
    PortForward(PortForwardSession),
}

/// Starts serving a SPDY connection on `io` (an upgraded HTTP connection or a WebSocket
/// tunnel): the writer and reader run on tasks of their own.
pub(crate) fn start<IO>(io: IO, mode: Mode) -> (Arc<Mux>, Ready)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let mux = Mux::new(Framing::Spdy);
    tokio::spawn(mux.clone().run_writer(wr));
    let (assembly, ready) = match mode {
        Mode::RemoteCommand { opts, version } => {
            let (tx, rx) = oneshot::channel();
            (
                Assembly::RemoteCommand(RemoteCommandAssembly {
                    opts,
                    version,
                    ids: Default::default(),
                    tx: Some(tx),
                }),
                Ready::RemoteCommand(rx),
            )
        }
        Mode::PortForward => {
            let (tx, rx) = mpsc::channel(PAIR_QUEUE);
            (
                Assembly::PortForward(PortForwardAssembly {
                    pairs: HashMap::new(),
                    tx,
                }),
                Ready::PortForward(PortForwardSession { rx }),
            )
        }
    };
    let mut session = Session {
        mux: mux.clone(),
        decoder: HeaderDecoder::new(),
        encoder: HeaderEncoder::new(),
        last_id: 0,
        goaway_received: false,
        assembly,
        chunk: vec![0; READ_CHUNK],
    };
    let m = mux.clone();
    tokio::spawn(async move {
        let ended = tokio::select! {
            r = session.run(&mut rd) => r,
            _ = m.linger_over() => Ok(()),
        };
        let drain = match ended {
            Ok(()) => false,
            Err(SessionError::Protocol(msg)) => {
                log::warn!("streaming: closing a SPDY connection: {msg}");
                m.abort(frame::goaway(session.last_id, goaway::PROTOCOL_ERROR));
                true
            }
            Err(e) => {
                log::debug!("streaming: SPDY connection ended: {e}");
                false
            }
        };
        m.reader_finished(&mut rd, drain).await;
        // Dropping the session drops the pair sender: PortForwardSession::next returns None.
        drop(session);
    });
    (mux, ready)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("reading the connection: {0}")]
    Io(io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("the connection is closing")]
    Closing,
}

impl From<io::Error> for SessionError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SessionError::Truncated
        } else {
            SessionError::Io(e)
        }
    }
}

impl From<frame::FrameError> for SessionError {
    fn from(e: frame::FrameError) -> Self {
        SessionError::Protocol(e.to_string())
    }
}

fn protocol(msg: String) -> SessionError {
    SessionError::Protocol(format!("SPDY protocol error: {msg}"))
}

struct Session {
    mux: Arc<Mux>,
    decoder: HeaderDecoder,
    /// Only this task writes header blocks, and it queues them in order, so the peer's
    /// decompressor sees them in the order they were compressed.
    encoder: HeaderEncoder,
    last_id: u32,
    goaway_received: bool,
    assembly: Assembly,
    chunk: Vec<u8>,
}

impl Session {
    async fn run<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<(), SessionError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Read the 8-byte head with cancel-safe reads, so the timer can run between frames.
            let mut head = [0u8; 8];
            let mut filled = 0;
            while filled < 8 {
                tokio::select! {
                    n = rd.read(&mut head[filled..]) => {
                        match n? {
                            0 if filled == 0 => return Ok(()),
                            0 => return Err(SessionError::Truncated),
                            n => filled += n,
                        }
                    }
                    _ = tick.tick() => self.expire().await?,
                }
            }
            match frame::parse_head(head) {
                Head::Control {
                    version,
                    kind,
                    flags,
                    len,
                } => {
                    if version != frame::VERSION {
                        return Err(protocol(format!(
                            "control frame of SPDY version {version}; only version 3 is spoken"
                        )));
                    }
                    if len > frame::MAX_CONTROL_PAYLOAD {
                        return Err(protocol(format!(
                            "control frame of type {kind} with a {len} byte payload (limit {})",
                            frame::MAX_CONTROL_PAYLOAD
                        )));
                    }
                    let mut p = vec![0u8; len as usize];
                    rd.read_exact(&mut p).await?;
                    let c = frame::parse_control(kind, flags, &p)?;
                    self.on_control(c).await?;
                }
                Head::Data { stream, flags, len } => {
                    self.on_data(rd, stream, flags, len).await?;
                }
            }
        }
    }

    async fn control(&self, f: Vec<u8>) -> Result<(), SessionError> {
        match self.mux.control(f).await {
            Pushed::Closing => Err(SessionError::Closing),
            _ => Ok(()),
        }
    }

    async fn on_data<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        stream: u32,
        flags: u8,
        len: u32,
    ) -> Result<(), SessionError> {
        if stream == 0 {
            return Err(protocol("DATA frame on stream 0".into()));
        }
        if stream > self.last_id {
            return Err(protocol(format!(
                "DATA frame for stream {stream}, which was never opened"
            )));
        }
        // A stream we forgot (closed, reset) gets its late data dropped; one the peer already
        // half-closed gets a reset (SPDY/3 section 2.4.2).
        if self.mux.has_stream(stream) && self.mux.inbound_ended(stream) {
            self.control(frame::rst_stream(stream, rst::STREAM_ALREADY_CLOSED))
                .await?;
        }
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(READ_CHUNK);
            rd.read_exact(&mut self.chunk[..n]).await?;
            left -= n;
            if self.mux.push(stream, &self.chunk[..n]).await == Pushed::Closing {
                return Err(SessionError::Closing);
            }
        }
        if flags & frame::FLAG_FIN != 0 {
            self.mux.end_inbound(stream);
        }
        Ok(())
    }

    async fn on_control(&mut self, c: Control) -> Result<(), SessionError> {
        match c {
            Control::SynStream {
                stream, fin, block, ..
            } => {
                // Decode first: skipping a block would desynchronise the zlib context.
                let headers = self.decoder.decode(&block)?;
                if stream % 2 == 0 {
                    return Err(protocol(format!(
                        "client opened stream {stream}; client streams have odd ids"
                    )));
                }
                if stream <= self.last_id {
                    return Err(protocol(format!(
                        "stream id {stream} is not greater than the previous one, {}",
                        self.last_id
                    )));
                }
                self.last_id = stream;
                if self.goaway_received || !self.mux.is_open() {
                    return self
                        .control(frame::rst_stream(stream, rst::REFUSED_STREAM))
                        .await;
                }
                if self.mux.stream_count() >= MAX_STREAMS {
                    log::warn!("streaming: refusing stream {stream}: {MAX_STREAMS} streams open");
                    return self
                        .control(frame::rst_stream(stream, rst::REFUSED_STREAM))
                        .await;
                }
                self.mux.open(stream, fin);
                self.on_stream(stream, headers).await
            }
            Control::SynReply { stream, .. } => Err(protocol(format!(
                "SYN_REPLY for stream {stream}: this server opens no streams"
            ))),
            Control::RstStream { stream, status } => {
                log::debug!("streaming: client reset stream {stream} (status {status})");
                self.mux.reset(stream);
                Ok(())
            }
            Control::Settings { entries, .. } => {
                for (id, value) in entries {
                    if id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                        if value > i32::MAX as u32 {
                            return Err(protocol(format!("initial window of {value} bytes")));
                        }
                        self.mux.initial_window(value);
                    }
                }
                Ok(())
            }
            // Odd ids are the client's pings, which we echo; even ones would answer ours, and
            // we send none.
            Control::Ping { id } if id % 2 == 1 => self.control(frame::ping(id)).await,
            Control::Ping { .. } => Ok(()),
            Control::GoAway { .. } => {
                self.goaway_received = true;
                Ok(())
            }
            Control::Headers { stream, fin, block } => {
                self.decoder.decode(&block)?;
                if fin {
                    self.mux.end_inbound(stream);
                }
                Ok(())
            }
            Control::WindowUpdate { stream, delta } => {
                if delta == 0 {
                    if stream == 0 {
                        return Err(protocol("connection WINDOW_UPDATE of 0".into()));
                    }
                    self.mux.reset(stream);
                    return self
                        .control(frame::rst_stream(stream, rst::PROTOCOL_ERROR))
                        .await;
                }
                if let Err(e) = self.mux.window_update(stream, delta) {
                    if stream == 0 {
                        return Err(protocol(e.into()));
                    }
                    self.mux.reset(stream);
                    return self
                        .control(frame::rst_stream(stream, rst::FLOW_CONTROL_ERROR))
                        .await;
                }
                Ok(())
            }
            Control::Unknown { kind } => {
                log::debug!("streaming: ignoring SPDY control frame of type {kind}");
                Ok(())
            }
        }
    }

    async fn reply(&mut self, stream: u32) -> Result<(), SessionError> {
        let block = self.encoder.encode(&Headers::default());
        self.control(frame::syn_reply(stream, false, &block)).await
    }

    async fn refuse(&mut self, stream: u32, why: &str) -> Result<(), SessionError> {
        log::warn!("streaming: refusing SPDY stream {stream}: {why}");
        self.mux.reset(stream);
        self.control(frame::rst_stream(stream, rst::REFUSED_STREAM))
            .await
    }

    async fn on_stream(&mut self, stream: u32, h: Headers) -> Result<(), SessionError> {
        if let Assembly::RemoteCommand(a) = &mut self.assembly {
            let kind = h.get("streamType").unwrap_or("").to_string();
            a.add(&self.mux, stream, &kind);
            // kubelet replies to every stream, even one it ignores.
            return self.reply(stream).await;
        }
        match self.pair_stream(stream, &h) {
            Ok(request) => {
                self.reply(stream).await?;
                if let Assembly::PortForward(a) = &mut self.assembly {
                    a.complete(&self.mux, &request);
                }
                Ok(())
            }
            Err(why) => self.refuse(stream, &why).await,
        }
    }

    /// Files a port-forward stream under its request; returns the request id, or why the
    /// stream is refused.
    fn pair_stream(&mut self, stream: u32, h: &Headers) -> Result<String, String> {
        let Assembly::PortForward(a) = &mut self.assembly else {
            return Err("not a port-forward connection".into());
        };
        let port = match h.get("port") {
            None => return Err("the \"port\" header is required".into()),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        let is_data = match h.get("streamType").unwrap_or("") {
            "data" => true,
            "error" => false,
            "" => return Err("the \"streamType\" header is required".into()),
            other => {
                return Err(format!(
                    "stream type {other:?} (port-forward streams are data or error)"
                ));
            }
        };
        // Old clients send no requestID: kubelet pairs an error stream with the data stream
        // two ids later.
        let request = match h.get("requestID") {
            Some(r) if !r.is_empty() => r.to_string(),
            _ if is_data => stream.saturating_sub(2).to_string(),
            _ => stream.to_string(),
        };
        let pair = a.pairs.entry(request.clone()).or_insert_with(|| Pair {
            port,
            data: None,
            error: None,
            since: Instant::now(),
        });
        let slot = if is_data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let kind = if is_data { "data" } else { "error" };
            return Err(format!("request {request} already has a {kind} stream"));
        }
        *slot = Some(stream);
        if is_data {
            pair.port = port;
        }
        Ok(request)
    }

    /// Port-forward pairs whose other half never came: report on the error stream and drop.
    async fn expire(&mut self) -> Result<(), SessionError> {
        let Assembly::PortForward(a) = &mut self.assembly else {
            return Ok(());
        };
        let now = Instant::now();
        let stale: Vec<(String, Pair)> = a
            .pairs
            .extract_if(|_, p| now.duration_since(p.since) >= PAIR_TIMEOUT)
            .collect();
        for (request, p) in stale {
            log::warn!("streaming: port-forward request {request}: timed out waiting for streams");
            if let Some(e) = p.error {
                let msg = format!("timed out waiting for the data stream of request {request}");
                let _ = self.mux.write_now(e, msg.as_bytes());
                self.mux.abandon(e);
                self.mux.finish_outbound(e);
            }
            if let Some(d) = p.data {
                self.mux.reset(d);
                self.control(frame::rst_stream(d, rst::CANCEL)).await?;
            }
        }
        Ok(())
    }
}

enum Assembly {
    RemoteCommand(RemoteCommandAssembly),
    PortForward(PortForwardAssembly),
}

struct RemoteCommandAssembly {
    opts: RemoteCommandOptions,
    version: Version,
    /// error, stdin, stdout, stderr, resize
    ids: [Option<u32>; 5],
    tx: Option<oneshot::Sender<RemoteCommand>>,
}

const ERROR: usize = 0;
const STDIN: usize = 1;
const STDOUT: usize = 2;
const STDERR: usize = 3;
const RESIZE: usize = 4;

impl RemoteCommandAssembly {
    fn add(&mut self, mux: &Arc<Mux>, stream: u32, kind: &str) {
        let slot = match kind {
            "error" => ERROR,
            "stdin" => STDIN,
            "stdout" => STDOUT,
            "stderr" => STDERR,
            "resize" => RESIZE,
            other => {
                log::warn!("streaming: ignoring SPDY stream {stream} of unknown type {other:?}");
                mux.abandon(stream);
                return;
            }
        };
        if self.tx.is_none() || self.ids[slot].is_some() {
            log::warn!("streaming: ignoring extra SPDY {kind} stream {stream}");
            mux.abandon(stream);
            return;
        }
        self.ids[slot] = Some(stream);
        if self.complete() {
            self.deliver(mux);
        }
    }

    fn wanted(&self) -> [bool; 5] {
        let o = self.opts;
        [
            true,
            o.stdin,
            o.stdout,
            o.stderr && !o.tty,
            o.tty && self.version >= Version::V3,
        ]
    }

    fn complete(&self) -> bool {
        self.wanted()
            .iter()
            .zip(&self.ids)
            .all(|(want, id)| !want || id.is_some())
    }

    fn deliver(&mut self, mux: &Arc<Mux>) {
        let wanted = self.wanted();
        let take = |i: usize| {
            let id = self.ids[i];
            if !wanted[i]
                && let Some(id) = id
            {
                mux.abandon(id);
            }
            id.filter(|_| wanted[i])
        };
        let (error, stdin, stdout, stderr, resize_id) = (
            take(ERROR),
            take(STDIN),
            take(STDOUT),
            take(STDERR),
            take(RESIZE),
        );
        let error = error.expect("complete() checked the error stream");
        // Only stdin and resize carry data from the client; the others are ours to write.
        for id in [Some(error), stdout, stderr].into_iter().flatten() {
            mux.abandon(id);
        }
        let resize = if self.opts.tty {
            Some(match resize_id {
                Some(id) => resize::spawn(mux.reader(id)),
                // v1 and v2 have no resize stream: a receiver that ends at once.
                None => mpsc::channel(1).1,
            })
        } else {
            None
        };
        let outputs: Vec<u32> = [stdout, stderr].into_iter().flatten().collect();
        let rc = RemoteCommand {
            stdin: stdin.map(|id| Box::pin(mux.reader(id)) as _),
            stdout: stdout.map(|id| Box::pin(mux.writer(id)) as _),
            stderr: stderr.map(|id| Box::pin(mux.writer(id)) as _),
            resize,
            status: StatusWriter::new(mux.clone(), error, outputs, self.version),
            closed: Closed::new(mux.closed()),
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(rc);
        }
    }
}

struct Pair {
    port: u16,
    data: Option<u32>,
    error: Option<u32>,
    since: Instant,
}

struct PortForwardAssembly {
    pairs: HashMap<String, Pair>,
    tx: mpsc::Sender<PortForwardStream>,
}

impl PortForwardAssembly {
    fn complete(&mut self, mux: &Arc<Mux>, request: &str) {
        let Some(p) = self.pairs.get(request) else {
            return;
        };
        let (Some(data), Some(error)) = (p.data, p.error) else {
            return;
        };
        let port = p.port;
        self.pairs.remove(request);
        // The client half-closes the error stream at once; nothing of it is read.
        mux.abandon(error);
        let s = PortForwardStream {
            port,
            data_in: Box::pin(mux.reader(data)),
            data_out: Box::pin(mux.writer(data)),
            error: Box::pin(mux.writer(error)),
        };
        if let Err(e) = self.tx.try_send(s) {
            log::warn!(
                "streaming: port-forward request {request}: the backend is not taking streams ({e}); refusing it"
            );
            // Dropping the handles ends both streams.
        }
    }
}
