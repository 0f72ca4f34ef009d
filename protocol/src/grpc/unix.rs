//! gRPC over a unix socket (HTTP/2 cleartext), as ctr and the containerd client dial it, and
//! as every gRPC library dials it: our servers take their connections from [`incoming`].

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

use super::authority::Front;

/// Connect a channel to the gRPC server listening on the unix socket at `path`.
///
/// The channel redials the same path if the connection drops. Callers set per-call deadlines
/// with `tonic::Request::set_timeout`; ctr's limits are 16 MiB per message either way.
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.as_ref().to_owned();
    // The URI is required by the API but unused: the connector below ignores it. HTTP/2 over
    // cleartext is what tonic speaks for an `http` URI.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Like [`connect`], but returns at once: the first call dials, and a call made while the
/// server is down fails with Unavailable instead of blocking. For long-running clients (corral-cri)
/// that must start, and keep serving, whether or not the daemon is up.
pub fn connect_lazy(path: impl AsRef<Path>) -> Channel {
    let path: PathBuf = path.as_ref().to_owned();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

/// The connections a gRPC server accepts on `listener`, for tonic's `serve_with_incoming*`.
///
/// Each goes through the HTTP/2 front of [`super::authority`], so that clients built on grpc
/// C-core or grpc-java, which send the socket path as `:authority`, are served as grpc-go's are.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<ServerConnection>> {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(ServerConnection::new))
}

/// How much the front reads from the socket at a time when it has to look at the bytes.
const READ_CHUNK: usize = 16 * 1024;

/// An accepted connection as the server sees it: the client's header blocks rewritten by the
/// front ([`super::authority::Front`]), everything else as it came. It runs inside the server's
/// reads and writes: no task or thread of its own.
pub struct ServerConnection {
    io: UnixStream,
    front: Front,
    /// Bytes read from the socket go here when the front must look at them.
    chunk: Box<[u8]>,
    /// What the server is to read next, and how much of it it has read.
    out: Vec<u8>,
    out_pos: usize,
    /// Why the front gave up on the client's bytes; every later read fails with it.
    failed: Option<String>,
}

impl ServerConnection {
    pub fn new(io: UnixStream) -> ServerConnection {
        ServerConnection {
            io,
            front: Front::new(),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_pos: 0,
            failed: None,
        }
    }

    /// Says which client and socket a rejected connection was, for the log line.
    fn describe_peer(&self) -> String {
        let socket = self
            .io
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "a unix socket".into());
        match self.io.peer_cred().ok().and_then(|c| c.pid()) {
            Some(pid) => format!("{socket} (client pid {pid})"),
            None => socket,
        }
    }
}

impl Connected for ServerConnection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for ServerConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(why) = &this.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())));
            }
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(left) = this.front.passthrough() {
                // A payload that goes through unchanged (DATA above all): straight from the
                // socket into the server's buffer.
                let dst = buf.initialize_unfilled_to(left.min(buf.remaining()));
                let mut direct = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                this.front.passed(n);
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.front.from_client(&this.chunk[..n], &mut this.out) {
                let why = format!(
                    "closing a gRPC connection on {}: the client sent malformed HTTP/2: {e}",
                    this.describe_peer()
                );
                log::warn!("{why}");
                this.failed = Some(why);
            }
        }
    }
}

impl AsyncWrite for ServerConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.front.from_server(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.front.from_server(&b[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
