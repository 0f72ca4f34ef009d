//! port-forward end to end: SPDY, SPDY tunnelled in WebSocket (what crictl sends with
//! `--transport websocket`), and the WebSocket channel protocol.

use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{self, Frame, SpdyReader, SpdyWriter, within};
use super::{Event, Fake, Server};
use crate::streaming::transport::Purpose;
use crate::streaming::transport::websocket::frame as ws;

/// Two forwarded connections and one refused, as client-go opens them: the error stream
/// first (half-closed at once), then the data stream, with a shared requestID.
async fn forward_pairs<S>(s: S, events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let mut ids = Vec::new();
    for (req, port) in [("0", "8080"), ("1", "9090"), ("2", "1")] {
        let e = wr
            .open(
                &[("streamType", "error"), ("port", port), ("requestID", req)],
                true,
            )
            .await;
        let d = wr
            .open(
                &[("streamType", "data"), ("port", port), ("requestID", req)],
                false,
            )
            .await;
        ids.push((e, d));
    }
    rd.replies(6).await;
    let mut ports = Vec::new();
    for _ in 0..3 {
        match within("forward event", events.recv()).await {
            Some(Event::Forward(p)) => ports.push(p),
            other => panic!("expected a forward, got {other:?}"),
        }
    }
    ports.sort();
    assert_eq!(ports, vec![1, 8080, 9090]);
    let ((_, d0), (_, d1), (e2, _)) = (ids[0], ids[1], ids[2]);
    wr.data(d0, b"to 8080", true).await;
    wr.data(d1, b"to 9090", true).await;
    let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut fins = std::collections::HashSet::new();
    // Echoes come back and end with FIN; the refused port's error stream says why.
    while !(fins.contains(&d0) && fins.contains(&d1) && fins.contains(&e2)) {
        match rd.next().await.expect("frames until every stream ended") {
            Frame::Data { id, fin, data } => {
                got.entry(id).or_default().extend_from_slice(&data);
                if fin {
                    fins.insert(id);
                }
            }
            Frame::WindowUpdate | Frame::Reply(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[&d0], b"to 8080");
    assert_eq!(got[&d1], b"to 9090");
    assert_eq!(got[&e2], b"connection refused");
    // client-go resets the data stream when its copy is done; nothing breaks.
    wr.raw(&crate::streaming::transport::spdy::frame::rst_stream(d0, 5))
        .await;
    let d = wr
        .open(
            &[("streamType", "data"), ("port", "7070"), ("requestID", "9")],
            false,
        )
        .await;
    let e = wr
        .open(
            &[
                ("streamType", "error"),
                ("port", "7070"),
                ("requestID", "9"),
            ],
            true,
        )
        .await;
    rd.replies(2).await;
    wr.data(d, b"again", false).await;
    loop {
        if let Frame::Data { id, data, .. } = rd.next().await.unwrap()
            && id == d
        {
            assert_eq!(data, b"again");
            break;
        }
    }
    let _ = e;
}

#[tokio::test]
async fn spdy_port_forward_pairs() {
    let (fake, mut ev) = Fake::new();
    fake.token("pf-1", Purpose::PortForward);
    let srv = Server::start(fake, None).await;
    let mut s = srv.connect().await;
    let r = client::request(
        &mut s,
        "POST",
        "/portforward/pf-1",
        &client::spdy_headers(&["portforward.k8s.io"]),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.body);
    assert_eq!(
        r.header("x-stream-protocol-version"),
        Some("portforward.k8s.io")
    );
    forward_pairs(s, &mut ev).await;
}

#[tokio::test]
async fn spdy_tunnelled_in_websocket_port_forward_pairs() {
    let (fake, mut ev) = Fake::new();
    fake.token("pf-1", Purpose::PortForward);
    let srv = Server::start(fake, None).await;
    let mut s = srv.connect().await;
    let r = client::request(
        &mut s,
        "GET",
        "/portforward/pf-1",
        &client::ws_headers("SPDY/3.1+portforward.k8s.io"),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.body);
    assert_eq!(
        r.header("sec-websocket-protocol"),
        Some("SPDY/3.1+portforward.k8s.io")
    );
    forward_pairs(client::ws_tunnel(s), &mut ev).await;
}

#[tokio::test]
async fn spdy_port_forward_refuses_streams_without_a_port() {
    let (fake, _ev) = Fake::new();
    fake.token("pf-1", Purpose::PortForward);
    let srv = Server::start(fake, None).await;
    let mut s = srv.connect().await;
    client::request(
        &mut s,
        "POST",
        "/portforward/pf-1",
        &client::spdy_headers(&["portforward.k8s.io"]),
    )
    .await;
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let a = wr.open(&[("streamType", "data")], false).await;
    let b = wr
        .open(&[("streamType", "stdin"), ("port", "80")], false)
        .await;
    let c = wr
        .open(&[("streamType", "data"), ("port", "0")], false)
        .await;
    for want in [a, b, c] {
        match rd.next().await {
            Some(Frame::Rst { id, .. }) => assert_eq!(id, want),
            other => panic!("expected RST_STREAM for {want}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_channel_port_forward() {
    let (fake, mut ev) = Fake::new();
    fake.token("pf-1", Purpose::PortForward);
    fake.token("pf-2", Purpose::PortForward);
    let srv = Server::start(fake, None).await;

    // Without ports there is nothing to forward: refused before the token is spent.
    let mut s = srv.connect().await;
    let r = client::request(
        &mut s,
        "GET",
        "/portforward/pf-1",
        &client::ws_headers("v4.channel.k8s.io"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("port"), "{}", r.body);

    let mut s = srv.connect().await;
    let r = client::request(
        &mut s,
        "GET",
        "/portforward/pf-1?port=8080&port=1",
        &client::ws_headers("v4.channel.k8s.io"),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.body);
    let (mut rd, mut wr) = tokio::io::split(s);
    // The first message on each channel is its port, little endian.
    let mut firsts = std::collections::HashMap::new();
    while firsts.len() < 4 {
        let (op, _, p) = client::ws_next(&mut rd).await.unwrap();
        assert_eq!(op, ws::OP_BINARY);
        firsts.entry(p[0]).or_insert(p[1..].to_vec());
    }
    assert_eq!(firsts[&0], 8080u16.to_le_bytes());
    assert_eq!(firsts[&1], 8080u16.to_le_bytes());
    assert_eq!(firsts[&2], 1u16.to_le_bytes());
    assert_eq!(firsts[&3], 1u16.to_le_bytes());
    within("forward", ev.recv()).await;
    within("forward", ev.recv()).await;
    client::ws_send(&mut wr, ws::OP_BINARY, b"\x00payload").await;
    let mut echoed = Vec::new();
    let mut refused = Vec::new();
    while echoed.len() < 7 || refused.len() < 18 {
        let (_, _, p) = client::ws_next(&mut rd).await.unwrap();
        match p[0] {
            0 => echoed.extend_from_slice(&p[1..]),
            3 => refused.extend_from_slice(&p[1..]),
            _ => {}
        }
    }
    assert_eq!(echoed, b"payload");
    assert_eq!(refused, b"connection refused");
    client::ws_send(&mut wr, ws::OP_CLOSE, &[0x03, 0xe8]).await;
    let (_, code, _) = client::ws_until_close(&mut rd, false).await;
    assert_eq!(code, Some(1000));
}
