//! The streaming transport: an HTTP/1.1 server whose requests upgrade to SPDY/3.1 or WebSocket
//! and carry the streams of one exec, attach or port-forward. It knows nothing of containers:
//! a [`Backend`] redeems the token in the URL and gets the streams.

mod negotiate;
mod resize;
mod spdy;
mod status;
mod websocket;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

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

pub struct StatusWriter {
    _private: (),
}

impl StatusWriter {
    /// Flushes stdout/stderr written so far, writes the outcome, and ends the session cleanly.
    pub async fn finish(self, _outcome: Outcome) -> std::io::Result<()> {
        Err(building())
    }
}

pub struct Closed {
    _private: (),
}

impl Closed {
    pub async fn wait(&mut self) {}
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
    _private: (),
}

impl PortForwardSession {
    /// The next stream pair; None once the connection has ended.
    pub async fn next(&mut self) -> Option<PortForwardStream> {
        None
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
pub async fn serve<B: Backend>(
    _listener: tokio::net::TcpListener,
    _tls: Option<Arc<rustls::ServerConfig>>,
    _backend: Arc<B>,
    _shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    Err(building())
}

/// Loads a TLS config from PEM cert and key files, with errors naming the file.
pub fn load_tls(_cert: &Path, _key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    Err(building())
}

/// Placeholder while the transport is being built, so that the backends can compile against
/// the seam meanwhile.
fn building() -> std::io::Error {
    std::io::Error::other("the streaming transport is still being built on branch stream-transport")
}
