//! A client that does not read (or a backend that does not read) never makes the server
//! buffer more than its bounds: the other side waits instead, and nothing is lost.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::client::{Frame, SpdyReader, SpdyWriter, within};
use crate::streaming::transport::mux::{Mux, STREAM_BUFFER};
use crate::streaming::transport::spdy::frame;
use crate::streaming::transport::status::Version;
use crate::streaming::transport::websocket::frame as ws;
use crate::streaming::transport::{Outcome, RemoteCommand, RemoteCommandOptions, spdy, websocket};

const TOTAL: usize = 64 << 20;
/// What may sit between the two programs: our stream buffer, the writer's batch, and the
/// kernel's (shrunk) socket buffers, with room to spare. Far below TOTAL.
const SLACK: usize = 8 << 20;

/// A connected pair with small kernel buffers, so that our own bounds are what is measured.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    sock.set_send_buffer_size(16 << 10).unwrap();
    let (client, accepted) = tokio::join!(sock.connect(l.local_addr().unwrap()), l.accept());
    let server = accepted.unwrap().0;
    nix::sys::socket::setsockopt(
        &server.as_fd(),
        nix::sys::socket::sockopt::SndBuf,
        &(16 << 10),
    )
    .unwrap();
    nix::sys::socket::setsockopt(
        &server.as_fd(),
        nix::sys::socket::sockopt::RcvBuf,
        &(16 << 10),
    )
    .unwrap();
    (server, client.unwrap())
}

/// Polls `n` until it has not moved for a while (or the deadline passes); returns it.
async fn settled(n: &AtomicUsize) -> usize {
    let start = Instant::now();
    let mut last = n.load(Ordering::SeqCst);
    let mut still = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = n.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_millis(750) && now > 0 {
            break;
        }
    }
    last
}

fn opts(stdin: bool) -> RemoteCommandOptions {
    RemoteCommandOptions {
        stdin,
        stdout: true,
        stderr: false,
        tty: false,
    }
}

/// The backend writes TOTAL bytes of stdout; returns the count written so far.
fn flood(mut rc: RemoteCommand) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let task = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        let out = rc.stdout.as_mut().unwrap();
        while w.load(Ordering::SeqCst) < TOTAL {
            out.write_all(&chunk).await.unwrap();
            w.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        rc.status.finish(Outcome::Success).await.unwrap();
    });
    (written, task)
}

fn check_bound(mux: &Mux, written: usize) {
    assert!(written < SLACK, "{written} bytes accepted from the backend");
    assert!(
        mux.buffered() <= STREAM_BUFFER,
        "{} bytes buffered",
        mux.buffered()
    );
}

#[tokio::test]
async fn spdy_client_that_does_not_read_holds_the_backend_back() {
    let (server, client) = tcp_pair().await;
    let (mux, ready) = spdy::start(
        server,
        spdy::Mode::RemoteCommand {
            opts: opts(false),
            version: Version::V4,
        },
    );
    let (rd, wr) = tokio::io::split(client);
    let mut wr = SpdyWriter::new(wr);
    wr.open(&[("streamType", "error")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let spdy::Ready::RemoteCommand(rx) = ready else {
        panic!()
    };
    let rc = within("streams", rx).await.unwrap();
    let (written, task) = flood(rc);
    check_bound(&mux, settled(&written).await);
    // Now read: everything arrives, then the status.
    let mut rd = SpdyReader::new(rd);
    let c = within("all output", rd.until_goaway()).await;
    assert_eq!(c.data[&stdout].len(), TOTAL);
    within("backend", task).await.unwrap();
}

#[tokio::test]
async fn websocket_client_that_does_not_read_holds_the_backend_back() {
    let (server, client) = tcp_pair().await;
    let (mux, ready) = websocket::start(
        server,
        websocket::Mode::RemoteCommand {
            opts: opts(false),
            version: Version::V5,
            base64: false,
        },
    );
    let websocket::Ready::RemoteCommand(rc) = ready else {
        panic!()
    };
    let (written, task) = flood(rc);
    check_bound(&mux, settled(&written).await);
    let (mut rd, _wr) = tokio::io::split(client);
    let (data, code, _) = within("all output", super::client::ws_until_close(&mut rd, false)).await;
    assert_eq!(code, Some(1000));
    assert_eq!(data[&1].len(), TOTAL);
    within("backend", task).await.unwrap();
}

#[tokio::test]
async fn spdy_backend_that_does_not_read_stdin_holds_the_client_back() {
    let (server, client) = tcp_pair().await;
    let (mux, ready) = spdy::start(
        server,
        spdy::Mode::RemoteCommand {
            opts: opts(true),
            version: Version::V4,
        },
    );
    let (_rd, wr) = tokio::io::split(client);
    let mut wr = SpdyWriter::new(wr);
    wr.open(&[("streamType", "error")], false).await;
    let stdin = wr.open(&[("streamType", "stdin")], false).await;
    wr.open(&[("streamType", "stdout")], false).await;
    let spdy::Ready::RemoteCommand(rx) = ready else {
        panic!()
    };
    let mut rc = within("streams", rx).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let client = tokio::spawn(async move {
        let chunk = vec![b'y'; 32 << 10];
        while s.load(Ordering::SeqCst) < TOTAL {
            wr.data(stdin, &chunk, false).await;
            s.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        wr.data(stdin, &[], true).await;
        wr
    });
    let n = settled(&sent).await;
    assert!(
        n < SLACK,
        "{n} bytes of stdin taken while the backend read nothing"
    );
    assert!(
        mux.buffered() <= STREAM_BUFFER,
        "{} bytes buffered",
        mux.buffered()
    );
    let mut stdin_rd = rc.stdin.take().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = within("stdin", stdin_rd.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == b'y'));
        total += n;
    }
    assert_eq!(total, TOTAL);
    drop(within("client", client).await.unwrap());
}

#[tokio::test]
async fn spdy_peer_that_keeps_a_window_gets_no_more_than_it_granted() {
    let (server, client) = tokio::io::duplex(1 << 20);
    let (_mux, ready) = spdy::start(
        server,
        spdy::Mode::RemoteCommand {
            opts: opts(false),
            version: Version::V4,
        },
    );
    let (rd, wr) = tokio::io::split(client);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    let window = 16 << 10;
    wr.raw(&frame::settings(&[(
        frame::SETTINGS_INITIAL_WINDOW_SIZE,
        window,
    )]))
    .await;
    wr.open(&[("streamType", "error")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let spdy::Ready::RemoteCommand(rx) = ready else {
        panic!()
    };
    let mut rc = within("streams", rx).await.unwrap();
    let size = 100 << 10;
    let backend = tokio::spawn(async move {
        rc.stdout
            .as_mut()
            .unwrap()
            .write_all(&vec![b'z'; size])
            .await
            .unwrap();
        rc.status.finish(Outcome::Success).await.unwrap();
    });
    let mut granted = window as usize;
    let mut got = 0usize;
    while got < size {
        match rd.next().await.expect("more output") {
            Frame::Data { id, data, .. } if id == stdout => {
                got += data.len();
                assert!(got <= granted, "received {got} with {granted} granted");
                if got == granted {
                    wr.raw(&frame::window_update(stdout, 20 << 10)).await;
                    granted += 20 << 10;
                }
            }
            _ => {}
        }
    }
    assert_eq!(got, size);
    within("backend", backend).await.unwrap();
}

#[tokio::test]
async fn websocket_inbound_is_bounded_too() {
    let (server, client) = tcp_pair().await;
    let (mux, ready) = websocket::start(
        server,
        websocket::Mode::RemoteCommand {
            opts: opts(true),
            version: Version::V5,
            base64: false,
        },
    );
    let websocket::Ready::RemoteCommand(mut rc) = ready else {
        panic!()
    };
    let (_rd, mut wr) = tokio::io::split(client);
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let client = tokio::spawn(async move {
        // One 64 MiB message: streamed, never held whole.
        let mut head = ws::head(ws::OP_BINARY, true, TOTAL + 1);
        head[1] |= 0x80;
        head.extend_from_slice(&[0, 0, 0, 0]);
        wr.write_all(&head).await.unwrap();
        wr.write_all(&[0]).await.unwrap();
        let chunk = vec![b'q'; 32 << 10];
        while s.load(Ordering::SeqCst) < TOTAL {
            wr.write_all(&chunk).await.unwrap();
            s.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        wr.write_all(&ws::client_frame(ws::OP_BINARY, true, &[255, 0], [0; 4]))
            .await
            .unwrap();
        wr
    });
    let n = settled(&sent).await;
    assert!(
        n < SLACK,
        "{n} bytes of stdin taken while the backend read nothing"
    );
    assert!(
        mux.buffered() <= STREAM_BUFFER,
        "{} bytes buffered",
        mux.buffered()
    );
    let mut stdin = rc.stdin.take().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = within("stdin", stdin.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, TOTAL);
    drop(within("client", client).await.unwrap());
}
