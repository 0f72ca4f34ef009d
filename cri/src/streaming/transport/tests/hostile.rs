//! Hostile input: each breach of SPDY or WebSocket ends that connection with a protocol error
//! the client can read (GOAWAY PROTOCOL_ERROR; close frame with a code and reason), and
//! nothing else is affected.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::client::{self, Frame, SpdyReader, within};
use super::{Fake, Server, rc};
use crate::streaming::transport::RemoteCommandOptions;
use crate::streaming::transport::mux::{Mux, STREAM_BUFFER};
use crate::streaming::transport::spdy::frame::{self, goaway};
use crate::streaming::transport::spdy::headers::{HeaderEncoder, Headers};
use crate::streaming::transport::status::Version;
use crate::streaming::transport::websocket::frame as ws;
use crate::streaming::transport::{spdy, websocket};

fn opts() -> RemoteCommandOptions {
    RemoteCommandOptions {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    }
}

fn spdy_conn() -> (Arc<Mux>, spdy::Ready, DuplexStream) {
    let (server, client) = tokio::io::duplex(1 << 20);
    let (mux, ready) = spdy::start(
        server,
        spdy::Mode::RemoteCommand {
            opts: opts(),
            version: Version::V4,
        },
    );
    (mux, ready, client)
}

/// Sends `bytes` and expects GOAWAY(PROTOCOL_ERROR) followed by the end of the connection.
async fn spdy_refuses(bytes: &[u8]) {
    let (mux, _ready, client) = spdy_conn();
    let mut closed = mux.closed();
    let (rd, mut wr) = tokio::io::split(client);
    wr.write_all(bytes).await.unwrap();
    let mut rd = SpdyReader::new(rd);
    loop {
        match rd.next().await {
            Some(Frame::GoAway { status }) => {
                assert_eq!(status, goaway::PROTOCOL_ERROR);
                break;
            }
            Some(_) => {}
            None => panic!("connection ended without GOAWAY for {bytes:02x?}"),
        }
    }
    drop(wr);
    rd.rest().await;
    within("closed", closed.wait_for(|c| *c)).await.unwrap();
}

fn syn(id: u32, headers: &[(&str, &str)], enc: &mut HeaderEncoder) -> Vec<u8> {
    frame::syn_stream(id, 0, &enc.encode(&Headers::new(headers)))
}

#[tokio::test]
async fn spdy_protocol_errors_end_the_connection_with_goaway() {
    // A control frame announcing 16 MiB: refused without reading (or allocating) it.
    spdy_refuses(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff]).await;
    // SPDY/2.
    spdy_refuses(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]).await;
    // A header block that is not zlib.
    spdy_refuses(&frame::syn_stream(1, 0, b"definitely not zlib")).await;
    // DATA for a stream never opened.
    let mut d = frame::data_head(99, false, 3).to_vec();
    d.extend_from_slice(b"abc");
    spdy_refuses(&d).await;
    // An even (server-side) stream id, and ids going backwards.
    let mut enc = HeaderEncoder::new();
    spdy_refuses(&syn(2, &[("streamtype", "error")], &mut enc)).await;
    let mut enc = HeaderEncoder::new();
    let mut two = syn(5, &[("streamtype", "error")], &mut enc);
    two.extend(syn(3, &[("streamtype", "stdin")], &mut enc));
    spdy_refuses(&two).await;
    // Malformed fixed-size frames.
    spdy_refuses(&frame::control(frame::TYPE_PING, 0, &[0, 0, 1])).await;
    spdy_refuses(&frame::control(frame::TYPE_RST_STREAM, 0, &[0; 8])).await;
    // A connection-level WINDOW_UPDATE of 0.
    spdy_refuses(&frame::window_update(0, 0)).await;
}

#[tokio::test]
async fn spdy_truncated_frame_ends_only_that_connection() {
    let (mux, ready, client) = spdy_conn();
    let mut closed = mux.closed();
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(&[0x80, 0x03, 0x00]).await.unwrap();
    wr.shutdown().await.unwrap();
    within("closed", closed.wait_for(|c| *c)).await.unwrap();
    let mut rest = Vec::new();
    within("EOF", rd.read_to_end(&mut rest)).await.unwrap();
    // Nothing ran: the streams were never delivered.
    let spdy::Ready::RemoteCommand(rx) = ready else {
        panic!()
    };
    assert!(rx.await.is_err());
}

#[tokio::test]
async fn spdy_giant_data_frame_is_streamed_within_the_buffer_bound() {
    let (mux, ready, client) = spdy_conn();
    let (rd, mut wr) = tokio::io::split(client);
    let mut rd = SpdyReader::new(rd);
    let mut enc = HeaderEncoder::new();
    for (id, t) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
        wr.write_all(&syn(id, &[("streamtype", t)], &mut enc))
            .await
            .unwrap();
    }
    rd.replies(3).await;
    let spdy::Ready::RemoteCommand(rx) = ready else {
        panic!()
    };
    let mut rc = within("streams", rx).await.unwrap();
    // 16 MiB - 1 announced, 1 MiB sent: the server holds at most its stream buffer.
    let sent = 1 << 20;
    let writer = tokio::spawn(async move {
        wr.write_all(&frame::data_head(3, false, (1 << 24) - 1))
            .await
            .unwrap();
        wr.write_all(&vec![7u8; sent]).await.unwrap();
        wr
    });
    within("the buffer to fill", async {
        while mux.buffered() < STREAM_BUFFER {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(mux.buffered(), STREAM_BUFFER);
    let mut stdin = rc.stdin.take().unwrap();
    let mut got = vec![0u8; sent];
    within("stdin", stdin.read_exact(&mut got)).await.unwrap();
    assert!(got.iter().all(|b| *b == 7));
    assert!(mux.buffered() <= STREAM_BUFFER);
    drop(within("writer", writer).await.unwrap());
}

/// The session's streams come back too: dropping them would end the session normally.
fn ws_conn(version: Version, base64: bool) -> (Arc<Mux>, DuplexStream, websocket::Ready) {
    let (server, client) = tokio::io::duplex(1 << 20);
    let (mux, ready) = websocket::start(
        server,
        websocket::Mode::RemoteCommand {
            opts: opts(),
            version,
            base64,
        },
    );
    (mux, client, ready)
}

/// Sends `bytes` and expects a close frame with `code` and a reason containing `why`.
async fn ws_refuses(version: Version, base64: bool, bytes: Vec<u8>, code: u16, why: &str) {
    let (mux, client, _ready) = ws_conn(version, base64);
    let mut closed = mux.closed();
    let (mut rd, mut wr) = tokio::io::split(client);
    let w = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    loop {
        let (op, _, p) = client::ws_next(&mut rd)
            .await
            .unwrap_or_else(|| panic!("connection ended without a close frame ({why})"));
        if op == ws::OP_CLOSE {
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), code, "{why}");
            let reason = String::from_utf8(p[2..].to_vec()).unwrap();
            assert!(reason.contains(why), "{reason:?} !~ {why:?}");
            break;
        }
    }
    drop(w);
    within("closed", closed.wait_for(|c| *c)).await.unwrap();
}

#[tokio::test]
async fn websocket_protocol_errors_end_the_connection_with_a_close_frame() {
    let v5 = Version::V5;
    ws_refuses(
        v5,
        false,
        ws::frame(ws::OP_BINARY, b"\x00hi"),
        1002,
        "must be masked",
    )
    .await;
    ws_refuses(
        v5,
        false,
        ws::client_frame(ws::OP_PING, true, &[0; 126], client::MASK),
        1002,
        "at most 125",
    )
    .await;
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&client::MASK);
    ws_refuses(v5, false, huge, 1002, "most significant bit").await;
    ws_refuses(
        v5,
        false,
        ws::client_frame(ws::OP_CONTINUATION, true, b"x", client::MASK),
        1002,
        "continuation",
    )
    .await;
    let mut two = ws::client_frame(ws::OP_BINARY, false, b"\x00a", client::MASK);
    two.extend(ws::client_frame(
        ws::OP_BINARY,
        true,
        b"\x00b",
        client::MASK,
    ));
    ws_refuses(v5, false, two, 1002, "previous one").await;
    ws_refuses(
        v5,
        false,
        ws::client_frame(ws::OP_BINARY, true, &[255, 0, 1], client::MASK),
        1002,
        "exactly one channel",
    )
    .await;
    ws_refuses(
        v5,
        false,
        ws::client_frame(ws::OP_BINARY, true, &[255, 9], client::MASK),
        1002,
        "does not exist",
    )
    .await;
    let mut rsv = ws::client_frame(ws::OP_BINARY, true, b"\x00x", client::MASK);
    rsv[0] |= 0x20;
    ws_refuses(v5, false, rsv, 1002, "reserved bits").await;
    ws_refuses(
        v5,
        false,
        ws::client_frame(ws::OP_CLOSE, true, &[3], client::MASK),
        1002,
        "1 byte",
    )
    .await;
    // Base64 variants: a message past the limit, and text that is not base64.
    let big = vec![b'A'; websocket::MAX_TEXT_MESSAGE + 10];
    ws_refuses(
        Version::V4,
        true,
        ws::client_frame(ws::OP_TEXT, true, &big, client::MASK),
        1009,
        "larger than",
    )
    .await;
    ws_refuses(
        Version::V4,
        true,
        ws::client_frame(ws::OP_TEXT, true, b"0!!!not base64", client::MASK),
        1007,
        "base64",
    )
    .await;
}

#[tokio::test]
async fn websocket_truncated_frame_ends_the_connection() {
    let (mux, client, _ready) = ws_conn(Version::V5, false);
    let mut closed = mux.closed();
    let (_rd, mut wr) = tokio::io::split(client);
    wr.write_all(&[0x82, 0xfe, 0x01]).await.unwrap();
    wr.shutdown().await.unwrap();
    within("closed", closed.wait_for(|c| *c)).await.unwrap();
}

#[tokio::test]
async fn a_broken_connection_leaves_the_next_one_working() {
    let (fake, _ev) = Fake::new();
    fake.token("hello-1", rc(false, true, false, false));
    fake.token("hello-2", rc(false, true, false, false));
    let srv = Server::start(fake, None).await;
    // SPDY: garbage right after the upgrade.
    let mut s = srv.connect().await;
    client::request(
        &mut s,
        "POST",
        "/exec/hello-1",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    s.write_all(&[0x80, 0x07, 0x00, 0x01, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut rd = SpdyReader::new(s);
    assert!(matches!(
        rd.next().await,
        Some(Frame::GoAway {
            status: goaway::PROTOCOL_ERROR
        })
    ));
    // A second connection on the same server works.
    let mut s = srv.connect().await;
    client::request(
        &mut s,
        "POST",
        "/exec/hello-2",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    let (rd, wr) = tokio::io::split(s);
    let (mut rd, mut wr) = (SpdyReader::new(rd), client::SpdyWriter::new(wr));
    wr.open(&[("streamType", "error")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let c = rd.until_goaway().await;
    assert_eq!(c.text(stdout), "hello\n");
}
