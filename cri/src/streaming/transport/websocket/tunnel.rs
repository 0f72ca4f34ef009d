//! SPDY tunnelled through WebSocket (`SPDY/3.1+portforward.k8s.io`, client-go's
//! tools/portforward tunneling dialer, which crictl and kubectl use for
//! `port-forward --transport websocket`): the client writes its SPDY bytes as binary messages
//! and reads ours the same way. This turns the WebSocket into a byte stream for the SPDY
//! session:
//!
//! ```text
//!  socket ──frames──▶ unframe task ──bytes──▶ ┌────────┐ ──▶ SPDY session
//!  socket ◀─frames── writer task ◀── frame task ◀── │ duplex │ ◀── SPDY session
//!                         ▲ pongs, close          └────────┘
//! ```
//!
//! Each arrow is bounded (the duplex buffer, a queue of 16 frames), so a slow side slows the
//! other down instead of filling memory. The SPDY session's end (its write side shut down)
//! becomes a normal close frame; the client's close frame becomes the end of the byte stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};

use super::frame::{self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, ReadError};
use crate::streaming::transport::mux::{LINGER, MAX_CHUNK, STREAM_BUFFER};

const FRAME_QUEUE: usize = 16;
const READ_CHUNK: usize = 16 << 10;

/// Wraps an upgraded WebSocket connection; returns the byte stream the SPDY session reads and
/// writes.
pub(crate) fn start<IO>(io: IO) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session_side, tunnel_side) = tokio::io::duplex(STREAM_BUFFER);
    let (mut sock_rd, mut sock_wr) = tokio::io::split(io);
    let (mut bytes_rd, mut bytes_wr) = tokio::io::split(tunnel_side);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(FRAME_QUEUE);
    let (done_tx, done_rx) = watch::channel(false);

    // Writer: the only code writing the socket; stops after a close frame.
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            let is_close = f.first().map(|b| b & 0x0f) == Some(OP_CLOSE);
            if sock_wr.write_all(&f).await.is_err() {
                break;
            }
            if is_close {
                break;
            }
        }
        let _ = sock_wr.flush().await;
        let _ = sock_wr.shutdown().await;
        let _ = done_tx.send(true);
    });

    // Frame: SPDY bytes out as binary messages; the session's end as a normal close.
    let out = tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match bytes_rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = out.send(frame::close_frame(frame::CLOSE_NORMAL, "")).await;
                    return;
                }
                Ok(n) => {
                    if out.send(frame::frame(OP_BINARY, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    // Unframe: binary payloads in as bytes; pings answered; close echoed.
    tokio::spawn(async move {
        let mut done = done_rx;
        let r = tokio::select! {
            r = unframe(&mut sock_rd, &mut bytes_wr, &tx) => r,
            _ = async {
                let _ = done.wait_for(|d| *d).await;
                tokio::time::sleep(LINGER).await;
            } => Ok(()),
        };
        if let Err(e) = r {
            match e {
                ReadError::Protocol { code, msg } => {
                    log::warn!("streaming: closing a SPDY-over-WebSocket tunnel: {msg}");
                    let _ = tx.send(frame::close_frame(code, &msg)).await;
                }
                e => log::debug!("streaming: SPDY-over-WebSocket tunnel ended: {e}"),
            }
        }
        // The SPDY session reads EOF; its end closes our frame task and so the socket.
        let _ = bytes_wr.shutdown().await;
    });
    session_side
}

async fn unframe<R, W>(
    rd: &mut R,
    to_session: &mut W,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<(), ReadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut in_message = false;
    let mut session_alive = true;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let Some(h) = frame::read_head(rd).await? else {
            return Ok(());
        };
        if h.is_control() {
            let mut p = vec![0u8; h.len as usize];
            rd.read_exact(&mut p).await?;
            frame::unmask(&mut p, h.mask, 0);
            match h.opcode {
                OP_PING => {
                    let _ = tx.send(frame::frame(OP_PONG, &p)).await;
                }
                OP_CLOSE => {
                    let code = frame::parse_close(&p)?.unwrap_or(frame::CLOSE_NORMAL);
                    let _ = tx.send(frame::close_frame(code, "")).await;
                    return Ok(());
                }
                _ => {}
            }
            continue;
        }
        match (h.opcode, in_message) {
            (OP_BINARY, false) => in_message = true,
            (OP_CONTINUATION, true) => {}
            (OP_CONTINUATION, false) => {
                return Err(frame::protocol("continuation frame outside a message"));
            }
            (OP_BINARY, true) => {
                return Err(frame::protocol(
                    "a new message began before the previous one ended",
                ));
            }
            // client-go's tunnel refuses anything but binary messages; so do we.
            _ => {
                return Err(ReadError::Protocol {
                    code: 1003,
                    msg: "the SPDY tunnel carries binary messages only".into(),
                });
            }
        }
        let mut offset = 0u64;
        while offset < h.len {
            let n = (h.len - offset).min(READ_CHUNK as u64) as usize;
            rd.read_exact(&mut chunk[..n]).await?;
            frame::unmask(&mut chunk[..n], h.mask, offset);
            offset += n as u64;
            // Once the session is gone its bytes are dropped; the socket is still read until
            // the client closes, so that our close frame is not lost to a reset.
            if session_alive && to_session.write_all(&chunk[..n]).await.is_err() {
                session_alive = false;
            }
        }
        if h.fin {
            in_message = false;
        }
    }
}
