//! Tests of the transport over real sockets, with a fake backend and our own client framers.

mod backpressure;
mod client;
mod crictl;
mod deadlines;
mod hostile;
mod portforward;
mod remotecommand;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{
    Backend, Outcome, PortForwardSession, Purpose, RemoteCommand, RemoteCommandOptions, Route,
    TermSize,
};

/// What the fake backend saw, for the tests to assert on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Resize(TermSize),
    Forward(u16),
    RemoteCommandStarted(String),
}

/// A backend whose behaviour is picked by the token's prefix:
/// - `echo…`: stdin to stdout, a line on stderr, exit 3 after stdin ends;
/// - `hello…`: "hello\n" on stdout, success;
/// - `fail…`: an error outcome;
/// - `tty…`: resizes reported as events, stdin echoed, success after stdin ends;
/// - port-forward: each stream echoed; port 1 reports a refused connection.
pub(crate) struct Fake {
    tokens: Mutex<HashMap<String, Purpose>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Fake {
    pub(crate) fn new() -> (Arc<Fake>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Fake {
                tokens: Mutex::new(HashMap::new()),
                events: tx,
            }),
            rx,
        )
    }

    pub(crate) fn token(&self, token: &str, purpose: Purpose) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_string(), purpose);
    }
}

pub(crate) fn rc(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Purpose {
    Purpose::RemoteCommand(RemoteCommandOptions {
        stdin,
        stdout,
        stderr,
        tty,
    })
}

async fn echo(rc: &mut RemoteCommand) {
    let (Some(stdin), Some(stdout)) = (rc.stdin.as_mut(), rc.stdout.as_mut()) else {
        return;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        let n = stdin.read(&mut buf).await.unwrap();
        if n == 0 {
            return;
        }
        if stdout.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Backend for Fake {
    type Ticket = String;

    fn redeem(&self, _route: Route, token: &str) -> Option<(Purpose, String)> {
        let p = self.tokens.lock().unwrap().remove(token)?;
        Some((p, token.to_string()))
    }

    fn remote_command(
        &self,
        ticket: String,
        mut rc: RemoteCommand,
    ) -> impl Future<Output = ()> + Send {
        let events = self.events.clone();
        async move {
            let _ = events.send(Event::RemoteCommandStarted(ticket.clone()));
            let outcome = if ticket.starts_with("echo") {
                if let Some(e) = rc.stderr.as_mut() {
                    e.write_all(b"to stderr\n").await.unwrap();
                }
                echo(&mut rc).await;
                Outcome::Exit(3)
            } else if ticket.starts_with("hello") {
                rc.stdout
                    .as_mut()
                    .unwrap()
                    .write_all(b"hello\n")
                    .await
                    .unwrap();
                Outcome::Success
            } else if ticket.starts_with("fail") {
                Outcome::Error("exec: \"nope\": executable file not found in $PATH".into())
            } else if ticket.starts_with("tty") {
                let mut resize = rc.resize.take().expect("tty gets a resize receiver");
                let ev = events.clone();
                let sizes = tokio::spawn(async move {
                    while let Some(s) = resize.recv().await {
                        let _ = ev.send(Event::Resize(s));
                    }
                });
                echo(&mut rc).await;
                sizes.abort();
                Outcome::Success
            } else {
                Outcome::Error(format!("the fake backend has no behaviour for {ticket}"))
            };
            let _ = rc.status.finish(outcome).await;
        }
    }

    fn port_forward(
        &self,
        _ticket: String,
        mut session: PortForwardSession,
    ) -> impl Future<Output = ()> + Send {
        let events = self.events.clone();
        async move {
            while let Some(mut s) = session.next().await {
                let _ = events.send(Event::Forward(s.port));
                tokio::spawn(async move {
                    if s.port == 1 {
                        let _ = s.error.write_all(b"connection refused").await;
                        return;
                    }
                    let mut buf = vec![0u8; 8192];
                    loop {
                        let n = match s.data_in.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if s.data_out.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
}

/// A running server on an ephemeral port; stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start(
        backend: Arc<Fake>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(super::serve(l, tls, backend, rx));
        Server { addr, stop, task }
    }

    pub(crate) async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

#[tokio::test]
async fn serve_returns_when_shutdown_fires() {
    let (fake, _ev) = Fake::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(super::serve(l, None, fake, rx));
    stop.send(true).unwrap();
    client::within("serve to return", task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn plain_requests_get_clear_refusals() {
    let (fake, _ev) = Fake::new();
    fake.token("hello-1", rc(false, true, false, false));
    let srv = Server::start(fake.clone(), None).await;

    let mut s = srv.connect().await;
    let r = client::request(&mut s, "GET", "/logs/abc", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/exec/<token>"), "{}", r.body);

    let mut s = srv.connect().await;
    let r = client::request(&mut s, "DELETE", "/exec/hello-1", &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));

    // Not an upgrade: refused before the token is spent.
    let mut s = srv.connect().await;
    let r = client::request(&mut s, "GET", "/exec/hello-1", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Upgrade"), "{}", r.body);

    // No common version: 403 listing ours, token still unspent.
    let mut s = srv.connect().await;
    let h = client::spdy_headers(&["v9.channel.k8s.io"]);
    let r = client::request(&mut s, "POST", "/exec/hello-1", &h).await;
    assert_eq!(r.status, 403);
    assert!(r.headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("x-accepted-stream-protocol-versions") && v == "v4.channel.k8s.io"
    }));
    assert!(fake.tokens.lock().unwrap().contains_key("hello-1"));

    let mut s = srv.connect().await;
    let r = client::request(
        &mut s,
        "POST",
        "/exec/unknown",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("token"), "{}", r.body);

    // An exec token on the port-forward route is not found either.
    let mut s = srv.connect().await;
    let r = client::request(
        &mut s,
        "POST",
        "/portforward/hello-1",
        &client::spdy_headers(&["portforward.k8s.io"]),
    )
    .await;
    assert_eq!(r.status, 404);
}
