//! exec/attach end to end: SPDY and WebSocket clients against `serve` with the fake backend.

use tokio::io::AsyncWriteExt;

use super::client::{self, Frame, SpdyReader, SpdyWriter, within};
use super::{Event, Fake, Server, rc};
use crate::streaming::transport::TermSize;
use crate::streaming::transport::spdy::frame::goaway;
use crate::streaming::transport::websocket::{self, frame as ws};

const EXIT_3: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;

#[tokio::test]
async fn spdy_v4_exec_echoes_and_reports_the_exit_code() {
    let (fake, _ev) = Fake::new();
    fake.token("echo-1", rc(true, true, true, false));
    let srv = Server::start(fake.clone(), None).await;
    let mut s = srv.connect().await;
    // What client-go's SPDY executor offers.
    let h = client::spdy_headers(&[
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ]);
    let r = client::request(&mut s, "POST", "/exec/echo-1", &h).await;
    assert_eq!(r.status, 101, "{}", r.body);
    assert_eq!(
        r.header("x-stream-protocol-version"),
        Some("v4.channel.k8s.io")
    );
    assert_eq!(r.header("upgrade"), Some("SPDY/3.1"));
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let error = wr.open(&[("streamType", "error")], false).await;
    let stdin = wr.open(&[("streamType", "stdin")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let stderr = wr.open(&[("streamType", "stderr")], false).await;
    let mut replies = rd.replies(4).await;
    replies.sort();
    assert_eq!(replies, vec![error, stdin, stdout, stderr]);
    wr.data(stdin, b"hello ", false).await;
    wr.data(stdin, b"world", true).await;
    let c = within("session end", rd.until_goaway()).await;
    assert_eq!(c.text(stdout), "hello world");
    assert_eq!(c.text(stderr), "to stderr\n");
    assert_eq!(c.text(error), EXIT_3);
    for id in [stdout, stderr, error] {
        assert!(c.fins.contains(&id), "stream {id} ended with FIN: {c:?}");
    }
    assert_eq!(c.goaway, Some(goaway::OK));
    // The server closes after GOAWAY.
    drop(wr);
    rd.rest().await;

    // The token was spent.
    let mut s = srv.connect().await;
    let r = client::request(&mut s, "POST", "/exec/echo-1", &h).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn spdy_v2_reports_errors_as_text_and_success_as_nothing() {
    let (fake, _ev) = Fake::new();
    fake.token("fail-1", rc(false, true, false, false));
    fake.token("hello-1", rc(false, true, false, false));
    let srv = Server::start(fake, None).await;
    for (token, want) in [
        (
            "fail-1",
            "Internal error occurred: exec: \"nope\": executable file not found in $PATH",
        ),
        ("hello-1", ""),
    ] {
        let mut s = srv.connect().await;
        let h = client::spdy_headers(&["v2.channel.k8s.io"]);
        let r = client::request(&mut s, "POST", &format!("/exec/{token}"), &h).await;
        assert_eq!(
            r.header("x-stream-protocol-version"),
            Some("v2.channel.k8s.io")
        );
        let (rd, wr) = tokio::io::split(s);
        let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
        let error = wr.open(&[("streamType", "error")], false).await;
        let stdout = wr.open(&[("streamType", "stdout")], false).await;
        rd.replies(2).await;
        let c = rd.until_goaway().await;
        assert_eq!(c.text(error), want);
        if token.starts_with("hello") {
            assert_eq!(c.text(stdout), "hello\n");
        }
    }
}

#[tokio::test]
async fn spdy_tty_delivers_resizes() {
    let (fake, mut ev) = Fake::new();
    fake.token("tty-1", rc(true, true, false, true));
    let srv = Server::start(fake, None).await;
    let mut s = srv.connect().await;
    let h = client::spdy_headers(&["v4.channel.k8s.io"]);
    client::request(&mut s, "POST", "/attach/tty-1", &h).await;
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let _error = wr.open(&[("streamType", "error")], false).await;
    let stdin = wr.open(&[("streamType", "stdin")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let resize = wr.open(&[("streamType", "resize")], false).await;
    rd.replies(4).await;
    assert_eq!(
        within("start", ev.recv()).await,
        Some(Event::RemoteCommandStarted("tty-1".into()))
    );
    // Go's json.Encoder output, one size split across two frames.
    wr.data(resize, b"{\"Width\":80,\"Hei", false).await;
    wr.data(resize, b"ght\":24}\n{\"Width\":120,\"Height\":40}\n", false)
        .await;
    assert_eq!(
        within("resize", ev.recv()).await,
        Some(Event::Resize(TermSize {
            width: 80,
            height: 24
        }))
    );
    assert_eq!(
        within("resize", ev.recv()).await,
        Some(Event::Resize(TermSize {
            width: 120,
            height: 40
        }))
    );
    wr.data(stdin, b"ls\r", true).await;
    let c = rd.until_goaway().await;
    assert_eq!(c.text(stdout), "ls\r");
}

#[tokio::test]
async fn spdy_without_all_streams_gets_nothing_run_and_extra_streams_are_ignored() {
    let (fake, mut ev) = Fake::new();
    fake.token("hello-1", rc(false, true, false, false));
    let srv = Server::start(fake, None).await;
    let mut s = srv.connect().await;
    client::request(
        &mut s,
        "POST",
        "/exec/hello-1",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    // An unknown type and the error stream: still missing stdout, so nothing starts.
    wr.open(&[("streamType", "bogus")], false).await;
    let error = wr.open(&[("streamType", "error")], false).await;
    rd.replies(2).await;
    assert!(
        ev.try_recv().is_err(),
        "nothing runs before every stream is open"
    );
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let c = rd.until_goaway().await;
    assert_eq!(c.replies, vec![stdout]);
    assert_eq!(c.text(stdout), "hello\n");
    assert_eq!(c.text(error), r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn spdy_pings_are_echoed() {
    let (fake, _ev) = Fake::new();
    fake.token("hello-1", rc(false, true, false, false));
    let srv = Server::start(fake, None).await;
    let mut s = srv.connect().await;
    client::request(
        &mut s,
        "POST",
        "/exec/hello-1",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    wr.raw(&crate::streaming::transport::spdy::frame::ping(7))
        .await;
    match rd.next().await {
        Some(Frame::Ping(7)) => {}
        other => panic!("expected the ping back, got {other:?}"),
    }
}

async fn ws_exec(
    srv: &Server,
    path: &str,
    protocol: &'static str,
) -> (
    tokio::io::ReadHalf<tokio::net::TcpStream>,
    tokio::io::WriteHalf<tokio::net::TcpStream>,
) {
    let mut s = srv.connect().await;
    let r = client::request(&mut s, "GET", path, &client::ws_headers(protocol)).await;
    assert_eq!(r.status, 101, "{}", r.body);
    // RFC 6455's own example key and answer.
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(
        websocket::accept_key(client::WS_KEY),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let first = protocol.split(',').next().unwrap().trim();
    assert_eq!(r.header("sec-websocket-protocol"), Some(first));
    tokio::io::split(s)
}

#[tokio::test]
async fn websocket_v5_exec_echoes_closes_stdin_and_reports_the_exit_code() {
    let (fake, _ev) = Fake::new();
    fake.token("echo-1", rc(true, true, true, false));
    let srv = Server::start(fake, None).await;
    let (mut rd, mut wr) = ws_exec(&srv, "/exec/echo-1", "v5.channel.k8s.io").await;
    let mut msg = vec![0u8];
    msg.extend_from_slice(b"hello");
    client::ws_send(&mut wr, ws::OP_BINARY, &msg).await;
    // A fragmented message: the channel byte in the first fragment, data in the next.
    wr.write_all(&ws::client_frame(ws::OP_BINARY, false, &[0], client::MASK))
        .await
        .unwrap();
    wr.write_all(&ws::client_frame(
        ws::OP_CONTINUATION,
        true,
        b" world",
        client::MASK,
    ))
    .await
    .unwrap();
    // A ping between messages is answered.
    client::ws_send(&mut wr, ws::OP_PING, b"are you there").await;
    // v5 CLOSE signal: stdin ends, the backend finishes.
    client::ws_send(&mut wr, ws::OP_BINARY, &[255, 0]).await;
    let mut pong = None;
    let mut data: std::collections::HashMap<u8, Vec<u8>> = Default::default();
    let mut order = Vec::new();
    let code = loop {
        let (op, _, p) = client::ws_next(&mut rd).await.expect("a close frame");
        match op {
            ws::OP_PONG => pong = Some(p),
            ws::OP_CLOSE => break u16::from_be_bytes([p[0], p[1]]),
            ws::OP_BINARY => {
                if !order.contains(&p[0]) {
                    order.push(p[0]);
                }
                data.entry(p[0]).or_default().extend_from_slice(&p[1..]);
            }
            op => panic!("unexpected opcode {op}"),
        }
    };
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    assert_eq!(code, ws::CLOSE_NORMAL);
    assert_eq!(
        order[0], 1,
        "kubelet's first message is an empty one on stdout"
    );
    assert_eq!(data[&1], b"hello world");
    assert_eq!(data[&2], b"to stderr\n");
    assert_eq!(String::from_utf8_lossy(&data[&3]), EXIT_3);
    client::ws_send(&mut wr, ws::OP_CLOSE, &[0x03, 0xe8]).await;
}

#[tokio::test]
async fn websocket_v4_base64_exec() {
    use base64::Engine;
    let (fake, _ev) = Fake::new();
    fake.token("echo-1", rc(true, true, false, false));
    let srv = Server::start(fake, None).await;
    let (mut rd, mut wr) = ws_exec(&srv, "/exec/echo-1", "v4.base64.channel.k8s.io").await;
    let text = format!(
        "0{}",
        base64::engine::general_purpose::STANDARD.encode(b"over base64")
    );
    client::ws_send(&mut wr, ws::OP_TEXT, text.as_bytes()).await;
    let mut echoed = Vec::new();
    while echoed.len() < 11 {
        let (op, _, p) = client::ws_next(&mut rd).await.unwrap();
        assert_eq!(op, ws::OP_TEXT, "base64 protocols send text");
        if p[0] == b'1' {
            echoed.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(&p[1..])
                    .unwrap(),
            );
        }
    }
    assert_eq!(echoed, b"over base64");
    // v4 has no CLOSE signal: the client's close frame ends stdin and the session, and, as
    // with kubelet, output after it is not delivered.
    client::ws_send(&mut wr, ws::OP_CLOSE, &[0x03, 0xe8]).await;
    let (_, code, _) = client::ws_until_close(&mut rd, true).await;
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn websocket_tty_resize_and_plain_channel_protocol() {
    let (fake, mut ev) = Fake::new();
    fake.token("tty-1", rc(true, true, false, true));
    fake.token("hello-1", rc(false, true, false, false));
    let srv = Server::start(fake, None).await;
    let (mut rd, mut wr) = ws_exec(&srv, "/attach/tty-1", "v5.channel.k8s.io").await;
    within("start", ev.recv()).await;
    let mut msg = vec![4u8];
    msg.extend_from_slice(b"{\"Width\":33,\"Height\":11}");
    client::ws_send(&mut wr, ws::OP_BINARY, &msg).await;
    assert_eq!(
        within("resize", ev.recv()).await,
        Some(Event::Resize(TermSize {
            width: 33,
            height: 11
        }))
    );
    client::ws_send(&mut wr, ws::OP_BINARY, &[255, 0]).await;
    let (data, code, _) = client::ws_until_close(&mut rd, false).await;
    assert_eq!(code, Some(1000));
    assert_eq!(
        String::from_utf8_lossy(&data[&3]),
        r#"{"metadata":{},"status":"Success"}"#
    );

    // channel.k8s.io (v1): plain text status, i.e. nothing on success.
    let (mut rd, _wr) = ws_exec(&srv, "/exec/hello-1", "channel.k8s.io").await;
    let (data, code, _) = client::ws_until_close(&mut rd, false).await;
    assert_eq!(code, Some(1000));
    assert_eq!(data[&1], b"hello\n");
    assert!(data.get(&3).is_none_or(|d| d.is_empty()));
}

#[tokio::test]
async fn client_going_away_is_seen_by_the_backend() {
    use crate::streaming::transport::{Backend, Purpose, RemoteCommand, Route};
    use std::sync::Arc;
    // A backend that waits for the client to leave and reports it.
    struct Waiter(tokio::sync::mpsc::UnboundedSender<()>);
    impl Backend for Waiter {
        type Ticket = ();
        fn redeem(&self, _: Route, _: &str) -> Option<(Purpose, ())> {
            Some((rc(true, true, false, false), ()))
        }
        fn remote_command(
            &self,
            _: (),
            mut rc: RemoteCommand,
        ) -> impl std::future::Future<Output = ()> + Send {
            let tx = self.0.clone();
            async move {
                rc.closed.wait().await;
                // Writes fail once the client is gone.
                let err = rc.stdout.as_mut().unwrap().write_all(b"x").await;
                assert!(err.is_err());
                let _ = tx.send(());
            }
        }
        async fn port_forward(&self, _: (), _: crate::streaming::transport::PortForwardSession) {}
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::streaming::transport::serve(
        l,
        None,
        Arc::new(Waiter(tx)),
        stop_rx,
    ));
    for protocol in ["spdy", "ws"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if protocol == "spdy" {
            client::request(
                &mut s,
                "POST",
                "/exec/t",
                &client::spdy_headers(&["v4.channel.k8s.io"]),
            )
            .await;
            let (rd, wr) = tokio::io::split(s);
            let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
            for t in ["error", "stdin", "stdout"] {
                wr.open(&[("streamType", t)], false).await;
            }
            rd.replies(3).await;
            drop((rd, wr));
        } else {
            client::request(
                &mut s,
                "GET",
                "/exec/t",
                &client::ws_headers("v5.channel.k8s.io"),
            )
            .await;
            drop(s);
        }
        within("the backend to see the client leave", rx.recv())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_backend_that_drops_the_status_writer_reports_an_error() {
    use crate::streaming::transport::{Backend, PortForwardSession, Purpose, RemoteCommand, Route};
    struct Forgetful;
    impl Backend for Forgetful {
        type Ticket = ();
        fn redeem(&self, _: Route, _: &str) -> Option<(Purpose, ())> {
            Some((rc(false, true, false, false), ()))
        }
        async fn remote_command(&self, _: (), mut rc: RemoteCommand) {
            rc.stdout
                .as_mut()
                .unwrap()
                .write_all(b"partial")
                .await
                .unwrap();
        }
        async fn port_forward(&self, _: (), _: PortForwardSession) {}
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::streaming::transport::serve(
        l,
        None,
        std::sync::Arc::new(Forgetful),
        stop_rx,
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    client::request(
        &mut s,
        "POST",
        "/exec/t",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let error = wr.open(&[("streamType", "error")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let c = rd.until_goaway().await;
    assert_eq!(c.text(stdout), "partial");
    assert!(
        c.text(error).contains("ended without an outcome") && c.text(error).contains("Failure"),
        "{}",
        c.text(error)
    );
}
