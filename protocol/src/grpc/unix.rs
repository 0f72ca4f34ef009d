//! gRPC over a unix socket (HTTP/2 cleartext), as ctr and the containerd client dial it.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

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
