//! The streaming server behind CRI Exec, Attach and PortForward.
//!
//! kubelet (or crictl) asks over CRI; the answer is a URL with a single-use token, which the
//! client then opens and upgrades to a multiplexed stream protocol (SPDY/3.1 or WebSocket):
//!
//! ```text
//!  crictl exec -it c sh
//!    │ CRI Exec{c, [sh], stdin, tty}           ┌────────────── corral-cri ─────────────┐
//!    ├──────────────────────────────────────▶  │ exec.rs: validate, tokens.rs: issue   │
//!    │ ◀── http://127.0.0.1:PORT/exec/<token>  │                                       │
//!    │ GET /exec/<token>, Upgrade: SPDY/3.1    │ transport/: HTTP, SPDY or WebSocket    │
//!    ├──────────────────────────────────────▶  │   Backend::redeem(token) → Ticket      │
//!    │ stdin, stdout, resize, error streams    │   Backend::remote_command(streams)     │
//!    │ ◀═════════════════════════════════════▶ │ exec.rs: Tasks.Exec/Start/ResizePty/   │
//!    │                                         │   CloseIO/Wait/Delete through corrald  │
//!    │ error stream: exit status, then close   └───────────────────────────────────────┘
//! ```
//!
//! The transport (`transport/`) knows protocols and nothing of containers; the backends here
//! know containers and nothing of protocols. Who owns what:
//! - [`exec`]: a process run through corrald's Tasks API, its stdio on FIFOs under
//!   `<root>/exec/<exec id>/`; killed and deleted when the client goes away.
//! - [`attach`]: a running container's own stdio: output followed from its CRI log (or read
//!   from its output FIFOs when it has no log), input written to its stdin FIFO under
//!   `<root>/io/<container id>/`, which the shim holds open across our restarts.
//! - [`portforward`]: TCP connections made inside the pod's network namespace.
//!
//! Nothing here outlives a connection: a corral-cri restart ends the streams, never a
//! container (an exec left behind by a crash is killed at start-up, see `recover.rs`).

pub mod attach;
pub mod exec;
mod log_follow;
pub mod portforward;
pub mod tokens;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use protocol::grpc::runtime::v1::{AttachRequest, ExecRequest, PortForwardRequest};

use crate::config::Streaming as StreamingConfig;
use crate::core::Cri;
use crate::error::{Error, Result};
use tokens::Tokens;
use transport::{PortForwardSession, Purpose, RemoteCommand, RemoteCommandOptions, Route};

/// What a token stands for: the CRI request it was issued for, checked when it was issued.
pub enum Ticket {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Ticket {
    fn route(&self) -> Route {
        match self {
            Ticket::Exec(_) => Route::Exec,
            Ticket::Attach(_) => Route::Attach,
            Ticket::PortForward(_) => Route::PortForward,
        }
    }

    fn purpose(&self) -> Purpose {
        let options = |stdin, stdout, stderr, tty| {
            Purpose::RemoteCommand(RemoteCommandOptions {
                stdin,
                stdout,
                stderr,
                tty,
            })
        };
        match self {
            Ticket::Exec(r) => options(r.stdin, r.stdout, r.stderr, r.tty),
            Ticket::Attach(r) => options(r.stdin, r.stdout, r.stderr, r.tty),
            Ticket::PortForward(_) => Purpose::PortForward,
        }
    }
}

/// The streaming state every CRI call can reach through [`Cri`]: the tokens waiting for their
/// client, the server's URL once it listens, and the attach output readers shared by
/// attachers of containers without a log.
#[derive(Default)]
pub struct Streaming {
    tokens: Tokens<Ticket>,
    /// `http://127.0.0.1:PORT` (or `https://`), set once the server listens.
    base_url: OnceLock<String>,
    pub(crate) outputs: attach::Outputs,
}

impl Streaming {
    /// The URL a client opens to run `ticket`.
    fn issue(&self, ticket: Ticket) -> Result<String> {
        let base = self.base_url.get().ok_or_else(|| {
            Error::new(
                protocol::Code::Unavailable,
                "the streaming server is not listening",
            )
        })?;
        let route = match ticket.route() {
            Route::Exec => "exec",
            Route::Attach => "attach",
            Route::PortForward => "portforward",
        };
        let token = self.tokens.issue(ticket)?;
        Ok(format!("{base}/{route}/{token}"))
    }
}

/// kubelet's checks of an exec or attach request's streams (`pkg/kubelet/cri/streaming`).
fn check_streams(what: &str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if !stdin && !stdout && !stderr {
        return Err(Error::invalid(format!(
            "{what}: one of stdin, stdout or stderr must be requested"
        )));
    }
    if tty && stderr {
        return Err(Error::invalid(format!(
            "{what}: tty and stderr cannot both be requested (a terminal has one output)"
        )));
    }
    Ok(())
}

/// The transport's view of corral-cri.
pub struct Backend(pub Arc<Cri>);

impl transport::Backend for Backend {
    type Ticket = Ticket;

    fn redeem(&self, route: Route, token: &str) -> Option<(Purpose, Ticket)> {
        // Taken whatever the route: a token shown on the wrong path is spent, as in kubelet.
        let ticket = self.0.streaming.tokens.redeem(token)?;
        if ticket.route() != route {
            log::debug!("streaming token for {:?} used on {route:?}", ticket.route());
            return None;
        }
        Some((ticket.purpose(), ticket))
    }

    fn remote_command(
        &self,
        ticket: Ticket,
        streams: RemoteCommand,
    ) -> impl std::future::Future<Output = ()> + Send {
        let cri = self.0.clone();
        async move {
            match ticket {
                Ticket::Exec(r) => exec::serve(cri, r, streams).await,
                Ticket::Attach(r) => attach::serve(cri, r, streams).await,
                Ticket::PortForward(_) => {
                    let _ = streams
                        .status
                        .finish(transport::Outcome::Error(
                            "a port-forward token cannot run a command".into(),
                        ))
                        .await;
                }
            }
        }
    }

    fn port_forward(
        &self,
        ticket: Ticket,
        session: PortForwardSession,
    ) -> impl std::future::Future<Output = ()> + Send {
        let cri = self.0.clone();
        async move {
            if let Ticket::PortForward(r) = ticket {
                portforward::serve(cri, r, session).await;
            }
        }
    }
}

/// The running server; [`Server::stop`] ends it with the daemon.
pub struct Server {
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    url: String,
}

/// How long a stop waits for the server's task.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    /// Where it listens: `http://ADDRESS:PORT` (or `https://`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => log::warn!("streaming server: {e}"),
            Ok(Err(e)) => log::warn!("streaming server task: {e}"),
            Err(_) => log::warn!("streaming server did not stop within {STOP_TIMEOUT:?}"),
        }
    }
}

/// Binds the streaming server as `[streaming]` says (port 0: a free one), loads its TLS
/// certificate when one is configured, and serves on a task of its own. The URL is known to
/// [`Cri`] from then on.
pub async fn start(cri: Arc<Cri>) -> std::result::Result<Server, String> {
    let cfg: &StreamingConfig = &cri.cfg.streaming;
    let ip: IpAddr = cfg.address.parse().map_err(|e| {
        format!(
            "[streaming] address {:?} is not an IP address: {e}",
            cfg.address
        )
    })?;
    let tls = if cfg.tls_cert_file.as_os_str().is_empty() {
        None
    } else {
        Some(
            transport::load_tls(&cfg.tls_cert_file, &cfg.tls_key_file)
                .map_err(|e| format!("streaming TLS: {e}"))?,
        )
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, cfg.port))
        .await
        .map_err(|e| format!("streaming server: listen on {ip}:{}: {e}", cfg.port))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("streaming server: local address: {e}"))?
        .port();
    let url = base_url(ip, port, tls.is_some());
    let _ = cri.streaming.base_url.set(url.clone());
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let backend = Arc::new(Backend(cri.clone()));
    let task = tokio::spawn(transport::serve(listener, tls, backend, rx));
    log::info!("streaming server (exec, attach, port-forward) on {url}");
    Ok(Server {
        shutdown,
        task,
        url,
    })
}

fn base_url(ip: IpAddr, port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    // SocketAddr's Display brackets an IPv6 address, as a URL wants it.
    format!("{scheme}://{}", SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_listening_address() {
        assert_eq!(
            base_url("127.0.0.1".parse().unwrap(), 10010, false),
            "http://127.0.0.1:10010"
        );
        assert_eq!(
            base_url("::1".parse().unwrap(), 443, true),
            "https://[::1]:443"
        );
    }

    #[test]
    fn stream_requests_are_checked_as_kubelet_does() {
        check_streams("exec", true, false, false, false).unwrap();
        check_streams("exec", false, true, false, true).unwrap();
        let e = check_streams("exec", false, false, false, false).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("stdin, stdout or stderr"), "{e}");
        let e = check_streams("attach", true, true, true, true).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("tty and stderr"), "{e}");
    }

    #[test]
    fn a_token_redeems_on_its_own_route_only() {
        let s = Streaming::default();
        let _ = s.base_url.set("http://127.0.0.1:1".into());
        let url = s
            .issue(Ticket::Exec(ExecRequest {
                container_id: "c".into(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            }))
            .unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:1/exec/"), "{url}");
        let t = s.tokens.redeem(&token).unwrap();
        assert_eq!(
            t.purpose(),
            Purpose::RemoteCommand(RemoteCommandOptions {
                stdout: true,
                ..Default::default()
            })
        );
        assert!(s.tokens.redeem(&token).is_none());
    }
}
