//! The streaming transport: an HTTP/1.1 server whose requests upgrade to SPDY/3.1 or WebSocket
//! and carry the streams of one exec, attach or port-forward. It knows nothing of containers:
//! a [`Backend`] redeems the token in the URL and gets the streams.
//!
//! ```text
//!  crictl / kubelet ── GET|POST /exec/<token> ──▶ http ── Backend::redeem ──▶ 404 if unknown
//!      Upgrade: SPDY/3.1 + X-Stream-Protocol-Version    │ negotiate (negotiate.rs)
//!      Upgrade: websocket + Sec-WebSocket-Protocol      ▼ 101 Switching Protocols
//!                                    ┌──────────────────┴───────────────────┐
//!                                spdy/ (frames, zlib headers,     websocket/ (frames, channel
//!                                 stream assembly)                 bytes, v5 CLOSE; tunnel/ for
//!                                    │                             SPDY inside WebSocket)
//!                                    └────────── mux.rs: bounded stream buffers,
//!                                                one writer task per connection
//!                                                        │
//!                      Backend::remote_command(RemoteCommand) / port_forward(PortForwardSession)
//! ```
//!
//! Who owns what: the backend owns the handles it is given and ends streams by dropping them
//! (or with [`StatusWriter::finish`]); the transport owns the connection and ends it when the
//! remote command finishes, the port-forward backend returns, the client goes away, or the
//! client breaks the protocol (GOAWAY / close frame with the reason, that connection only).

mod http;
mod mux;
mod negotiate;
mod resize;
mod spdy;
mod status;
mod tls;
mod websocket;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use self::mux::Mux;
use self::status::Version;

/// Which URL path a request came in on: /exec/<token>, /attach/<token>, /portforward/<token>.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Exec,
    Attach,
    PortForward,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCommandOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What a redeemed token allows; decides the subprotocols offered and the streams awaited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    RemoteCommand(RemoteCommandOptions),
    PortForward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// The streams of one exec or attach, handed over once the client has opened every stream
/// its options ask for (SPDY) or the WebSocket handshake is done.
pub struct RemoteCommand {
    /// Reads EOF when the client closes stdin (v5 CLOSE / SPDY half-close).
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    /// None when tty.
    pub stderr: Option<Writer>,
    /// Some when tty.
    pub resize: Option<tokio::sync::mpsc::Receiver<TermSize>>,
    /// The error channel.
    pub status: StatusWriter,
    /// Resolves when the client connection is gone.
    pub closed: Closed,
}

/// How a remote command ended; written on the error channel in the negotiated version's form
/// (v4/v5: metav1.Status JSON, NonZeroExitCode with the ExitCode cause; older: plain text).
pub enum Outcome {
    Success,
    Exit(i32),
    Error(String),
}

/// The error channel of a remote command. Dropping it without [`StatusWriter::finish`] (a
/// backend that panicked or forgot) reports an error outcome and ends the session: an empty
/// error stream would read as success to every client version.
pub struct StatusWriter {
    mux: Option<Arc<Mux>>,
    error: u32,
    outputs: Vec<u32>,
    version: Version,
}

impl StatusWriter {
    pub(crate) fn new(mux: Arc<Mux>, error: u32, outputs: Vec<u32>, version: Version) -> Self {
        StatusWriter {
            mux: Some(mux),
            error,
            outputs,
            version,
        }
    }

    /// Flushes stdout/stderr written so far, writes the outcome, and ends the session cleanly.
    ///
    /// Waits while the client is slow to take the output; returns BrokenPipe if the client is
    /// gone. Further writes to stdout/stderr fail.
    pub async fn finish(mut self, outcome: Outcome) -> std::io::Result<()> {
        let mux = self.mux.take().expect("finish consumes the writer");
        for id in &self.outputs {
            mux.finish_outbound(*id);
        }
        mux.wait_drained(&self.outputs).await;
        if !mux.is_open() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client connection is gone; the outcome was not delivered",
            ));
        }
        let bytes = status::encode(&outcome, self.version);
        let written = if bytes.is_empty() {
            Ok(())
        } else {
            mux.write_now(self.error, &bytes)
        };
        mux.finish_outbound(self.error);
        mux.close_ok();
        written
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        if let Some(mux) = self.mux.take() {
            let outcome = Outcome::Error("the streaming backend ended without an outcome".into());
            let _ = mux.write_now(self.error, &status::encode(&outcome, self.version));
            mux.finish_outbound(self.error);
            mux.close_ok();
        }
    }
}

/// Resolves when the client connection is gone (closed, reset, or ended for a protocol error).
pub struct Closed {
    rx: watch::Receiver<bool>,
}

impl Closed {
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Self {
        Closed { rx }
    }

    pub async fn wait(&mut self) {
        // An error means the connection's state is gone, which is the same news.
        let _ = self.rx.wait_for(|closed| *closed).await;
    }
}

/// One port-forward stream pair the client opened (SPDY: a data and an error stream with the same
/// requestID and port; WebSocket: the channels of one `port` query parameter).
pub struct PortForwardStream {
    pub port: u16,
    pub data_in: Reader,
    pub data_out: Writer,
    /// Write a message to report e.g. a refused connection; drop to close.
    pub error: Writer,
}

pub struct PortForwardSession {
    rx: mpsc::Receiver<PortForwardStream>,
}

impl PortForwardSession {
    /// The next stream pair; None once the connection has ended.
    pub async fn next(&mut self) -> Option<PortForwardStream> {
        self.rx.recv().await
    }
}

pub trait Backend: Send + Sync + 'static {
    type Ticket: Send + 'static;
    /// Consumes a token (single use). None: the server answers 404 and nothing runs.
    fn redeem(&self, route: Route, token: &str) -> Option<(Purpose, Self::Ticket)>;
    fn remote_command(
        &self,
        ticket: Self::Ticket,
        streams: RemoteCommand,
    ) -> impl Future<Output = ()> + Send;
    fn port_forward(
        &self,
        ticket: Self::Ticket,
        session: PortForwardSession,
    ) -> impl Future<Output = ()> + Send;
}

/// Serves HTTP/1.1 (TLS when `tls` is Some) on `listener` until `shutdown` fires; each
/// connection on its own task. Upgrades: SPDY/3.1 and WebSocket (see the issue for subprotocols).
///
/// Shutdown stops accepting; sessions already running end with their connections.
pub async fn serve<B: Backend>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<B>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    http::serve(listener, tls, backend, shutdown).await
}

/// Loads a TLS config from PEM cert and key files, with errors naming the file.
pub fn load_tls(cert: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    tls::load(cert, key)
}
