//! The HTTP/1.1 front: accept (and TLS), route, negotiate, answer 101 and hand the upgraded
//! connection to SPDY or WebSocket. Every refusal is a short text body that says what was
//! wrong; nothing is redeemed (so no token is spent) until the request is known to be one we
//! can serve.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::negotiate::{self, Refusal, SpdyChoice, Upgrade, WsChoice};
use super::{Backend, Purpose, Route, spdy, websocket};

/// How long a client may take to send its request head (and to finish a TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// kubelet's stream creation timeout: the SPDY client must open its streams within it.
pub(crate) const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

type Body = Full<Bytes>;

pub(crate) async fn serve<B: Backend>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<B>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            r = shutdown.changed() => {
                // A dropped sender means nobody can ask us to keep going either.
                if r.is_err() || *shutdown.borrow() {
                    return Ok(());
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("streaming: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let backend = backend.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_http(tcp, backend).await,
                Some(a) => match tokio::time::timeout(HEADER_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(tls)) => serve_http(tls, backend).await,
                    Ok(Err(e)) => log::debug!("streaming: TLS handshake with {peer} failed: {e}"),
                    Err(_) => log::debug!("streaming: TLS handshake with {peer} timed out"),
                },
            }
        });
    }
}

async fn serve_http<IO, B>(io: IO, backend: Arc<B>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let svc = service_fn(move |req| {
        let backend = backend.clone();
        async move { Ok::<_, Infallible>(handle(req, backend)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        log::debug!("streaming: HTTP connection ended: {e}");
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn refusal(r: Refusal) -> Response<Body> {
    let mut resp = text(r.status, &r.message);
    for (k, v) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// `/exec/<token>` and friends; the token is one path segment.
pub(crate) fn route(path: &str) -> Option<(Route, &str)> {
    let rest = path.strip_prefix('/')?;
    let (kind, token) = rest.split_once('/')?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let route = match kind {
        "exec" => Route::Exec,
        "attach" => Route::Attach,
        "portforward" => Route::PortForward,
        _ => return None,
    };
    Some((route, token))
}

enum Plan {
    Spdy(SpdyChoice),
    WebSocket(WsChoice, Vec<u16>),
}

fn handle<B: Backend>(mut req: Request<Incoming>, backend: Arc<B>) -> Response<Body> {
    let Some((route, token)) = route(req.uri().path()) else {
        return text(
            StatusCode::NOT_FOUND,
            "404 page not found: streaming URLs are /exec/<token>, /attach/<token> and /portforward/<token>",
        );
    };
    let token = token.to_string();
    if req.method() != Method::GET && req.method() != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {} not allowed: use GET or POST", req.method()),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, POST"));
        return r;
    }
    let port_forward = route == Route::PortForward;
    let upgrade = match negotiate::upgrade(req.headers()) {
        Ok(u) => u,
        Err(r) => return refusal(r),
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    let plan = match &upgrade {
        Upgrade::Spdy => {
            let (name, choice) = match negotiate::spdy(req.headers(), port_forward) {
                Ok(x) => x,
                Err(r) => return refusal(r),
            };
            h.insert(hyper::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert("X-Stream-Protocol-Version", HeaderValue::from_static(name));
            Plan::Spdy(choice)
        }
        Upgrade::WebSocket { key } => {
            let (name, choice) = match negotiate::websocket(req.headers(), port_forward) {
                Ok(x) => x,
                Err(r) => return refusal(r),
            };
            let ports = if let WsChoice::PortForward { .. } = choice {
                match negotiate::ports(req.uri().query()) {
                    Ok(p) => p,
                    Err(r) => return refusal(r),
                }
            } else {
                Vec::new()
            };
            h.insert(
                hyper::header::UPGRADE,
                HeaderValue::from_static("websocket"),
            );
            let accept = websocket::accept_key(key);
            h.insert(
                "Sec-WebSocket-Accept",
                HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
            );
            if let Some(name) = name {
                h.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(name));
            }
            Plan::WebSocket(choice, ports)
        }
    };
    let Some((purpose, ticket)) = backend.redeem(route, &token) else {
        return text(
            StatusCode::NOT_FOUND,
            "404 page not found: unknown, expired or already used streaming token",
        );
    };
    let opts = match (&purpose, port_forward) {
        (Purpose::RemoteCommand(o), false) => Some(*o),
        (Purpose::PortForward, true) => None,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "404 page not found: this token is not for this kind of request",
            );
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                log::warn!("streaming: upgrade of a {route:?} request failed: {e}");
                return;
            }
        };
        match (plan, opts) {
            (Plan::Spdy(SpdyChoice::RemoteCommand(version)), Some(opts)) => {
                let (mux, ready) = spdy::start(io, spdy::Mode::RemoteCommand { opts, version });
                run_spdy(mux, ready, backend, ticket).await;
            }
            (Plan::Spdy(_), _) => {
                let (mux, ready) = spdy::start(io, spdy::Mode::PortForward);
                run_spdy(mux, ready, backend, ticket).await;
            }
            (Plan::WebSocket(WsChoice::SpdyTunnel, _), _) => {
                let tunnel = websocket::tunnel::start(io);
                let (mux, ready) = spdy::start(tunnel, spdy::Mode::PortForward);
                run_spdy(mux, ready, backend, ticket).await;
            }
            (Plan::WebSocket(WsChoice::RemoteCommand { version, base64 }, _), Some(opts)) => {
                let mode = websocket::Mode::RemoteCommand {
                    opts,
                    version,
                    base64,
                };
                let (_mux, ready) = websocket::start(io, mode);
                if let websocket::Ready::RemoteCommand(rc) = ready {
                    backend.remote_command(ticket, rc).await;
                }
            }
            (Plan::WebSocket(WsChoice::PortForward { base64 }, ports), _) => {
                let (mux, ready) =
                    websocket::start(io, websocket::Mode::PortForward { ports, base64 });
                if let websocket::Ready::PortForward(session) = ready {
                    backend.port_forward(ticket, session).await;
                }
                mux.close_ok();
            }
            (Plan::WebSocket(WsChoice::RemoteCommand { .. }, _), None) => {
                // Negotiated by route and checked against the purpose above: cannot happen.
                log::warn!("streaming: a port-forward token on a remote-command upgrade");
            }
        }
    });
    resp
}

pub(super) async fn run_spdy<B: Backend>(
    mux: Arc<super::mux::Mux>,
    ready: spdy::Ready,
    backend: Arc<B>,
    ticket: B::Ticket,
) {
    match ready {
        spdy::Ready::RemoteCommand(rx) => {
            match tokio::time::timeout(STREAM_CREATION_TIMEOUT, rx).await {
                Ok(Ok(rc)) => backend.remote_command(ticket, rc).await,
                Ok(Err(_)) => {
                    log::debug!("streaming: the client left before opening its streams");
                }
                Err(_) => {
                    log::warn!(
                        "streaming: timed out after {STREAM_CREATION_TIMEOUT:?} waiting for the client to create streams"
                    );
                    mux.close_ok();
                }
            }
        }
        spdy::Ready::PortForward(session) => {
            backend.port_forward(ticket, session).await;
            mux.close_ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/exec/abc"), Some((Route::Exec, "abc")));
        assert_eq!(route("/attach/x-y"), Some((Route::Attach, "x-y")));
        assert_eq!(route("/portforward/t"), Some((Route::PortForward, "t")));
        for bad in ["/exec/", "/exec", "/exec/a/b", "/logs/a", "exec/a", "/"] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }
}
