//! PortForward: TCP connections to ports of a pod, as `kubectl port-forward` makes them.
//!
//! Each stream pair the client opens names a port; we connect to `localhost:<port>` inside
//! the pod's network namespace and copy both ways, each direction closed on its own
//! (half-close), until both are done. The socket is created by a short-lived thread that
//! has entered the namespace (a socket stays in the namespace it was made in, wherever it is
//! used afterwards), then handed to tokio. A host-network pod's ports are the host's.
//!
//! A connection that fails (nothing listens, the pod's namespace is gone) is reported on the
//! pair's error stream, as kubelet does, and ends that pair only; the session goes on.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::grpc::runtime::v1::{PortForwardRequest, PortForwardResponse};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::Ticket;
use super::transport::{PortForwardSession, PortForwardStream};
use crate::core::Cri;
use crate::error::{Error, Result};
use crate::network::netns::NetNs;

/// How long a connection to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Cri {
    pub async fn port_forward(&self, r: PortForwardRequest) -> Result<PortForwardResponse> {
        let s = self.store.find_sandbox(&r.pod_sandbox_id)?;
        if !s.ready {
            return Err(Error::precondition(format!(
                "pod sandbox {} is not ready",
                s.id
            )));
        }
        // The ports in the request are advisory: each stream the client opens names its own
        // (kubelet does the same).
        let mut r = r;
        r.pod_sandbox_id = s.id;
        let url = self.streaming.issue(Ticket::PortForward(r))?;
        Ok(PortForwardResponse { url })
    }
}

/// Serves the stream pairs of one port-forward connection until it ends; the connections
/// still open then are closed with it.
pub(super) async fn serve(cri: Arc<Cri>, r: PortForwardRequest, mut session: PortForwardSession) {
    let pod = r.pod_sandbox_id;
    let mut forwards = JoinSet::new();
    loop {
        tokio::select! {
            next = session.next() => match next {
                Some(stream) => {
                    forwards.spawn(forward(cri.clone(), pod.clone(), stream));
                }
                None => break,
            },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    forwards.shutdown().await;
}

/// One stream pair: connect, then copy both ways.
async fn forward(cri: Arc<Cri>, pod: String, stream: PortForwardStream) {
    let PortForwardStream {
        port,
        mut data_in,
        mut data_out,
        mut error,
    } = stream;
    let conn = match connect(&cri, &pod, port).await {
        Ok(c) => c,
        Err(e) => {
            log::debug!("pod {pod}: port-forward to {port}: {e}");
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = conn.into_split();
    let up = async {
        let r = super::exec::pump(&mut data_in, &mut to_pod).await;
        // The client is done sending: so is the pod's peer (FIN), while its answer still
        // flows.
        let _ = to_pod.shutdown().await;
        r
    };
    let down = async {
        let r = super::exec::pump(&mut from_pod, &mut data_out).await;
        let _ = data_out.shutdown().await;
        r
    };
    let (up, down) = tokio::join!(up, down);
    for (what, r) in [("client → pod", up), ("pod → client", down)] {
        if let Err(e) = r {
            log::debug!("pod {pod}: port-forward {port}, {what}: {e}");
        }
    }
}

/// A connection to `localhost:<port>` in pod `pod`'s network (IPv4, then IPv6).
async fn connect(cri: &Cri, pod: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let netns = cri
        .store
        .sandbox(pod)
        .filter(|s| s.ready)
        .map(|s| PathBuf::from(&s.record.netns_path))
        .ok_or_else(|| std::io::Error::other(format!("pod {pod} is not ready")))?;
    let dial = move || -> std::io::Result<TcpStream> {
        let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
        match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
            Ok(s) => Ok(s),
            Err(e4) => TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| {
                std::io::Error::new(
                    e4.kind(),
                    format!("connect to localhost:{port}: IPv4: {e4}; IPv6: {e6}"),
                )
            }),
        }
    };
    let std_stream = if netns.as_os_str().is_empty() {
        // A host-network pod: the host's ports, dialled off the runtime's threads.
        tokio::task::spawn_blocking(dial)
            .await
            .map_err(std::io::Error::other)??
    } else {
        NetNs::open(&netns)?.run_async(dial).await??
    };
    std_stream.set_nonblocking(true)?;
    let _ = std_stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(std_stream)
}
