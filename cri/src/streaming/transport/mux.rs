//! The protocol-neutral half of a streaming connection: the streams' buffers, the one task
//! that writes the socket, and the handles ([`StreamReader`], [`StreamWriter`]) the backends
//! read and write. SPDY and the WebSocket channel protocol differ only in how they parse the
//! socket (their own reader loops, which call [`Mux::push`] and friends) and in how a chunk of
//! stream data is framed on the way out ([`Framing`]).
//!
//! ```text
//!   socket read half ──▶ protocol reader loop ──push──▶ [in buf ≤ 64 KiB] ──▶ StreamReader (stdin…)
//!                                  │ control frames (replies, pongs, RST)
//!                                  ▼
//!   socket write half ◀── writer task ◀── control queue ≤ 256 frames
//!                              ▲ ready queue
//!   StreamWriter (stdout…) ──▶ [out buf ≤ 64 KiB]
//! ```
//!
//! Every buffer is bounded, and each bound turns into waiting rather than growth: a stream
//! writer whose buffer is full waits for the writer task, which waits for the socket (and, for
//! SPDY peers that do flow control, for window); the reader loop waits when a stream's inbound
//! buffer is full, so a backend that does not read its stdin stops the connection being read
//! (TCP then pushes back on the client). kubelet's own server (spdystream) behaves the same way.
//!
//! One `std` mutex guards the state of all streams of a connection; it is never held across an
//! await or any I/O.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};

use super::spdy::frame as spdy;
use super::websocket::frame as ws;

/// Bytes a stream buffers in each direction. For SPDY it equals the receive window we grant,
/// so a peer that honours flow control never makes the reader loop wait.
pub(crate) const STREAM_BUFFER: usize = 64 << 10;
/// Largest piece of stream data put in one frame.
pub(crate) const MAX_CHUNK: usize = 32 << 10;
/// The SPDY window both sides start with.
pub(crate) const INITIAL_WINDOW: i64 = 64 << 10;
/// Control frames queued for the writer before the reader loop waits (PING floods, RSTs).
const CONTROL_QUEUE: usize = 256;
/// Bytes the writer task gathers before writing them to the socket in one call.
const BATCH: usize = 64 << 10;
/// Announce consumed SPDY window once this much has been read.
const CREDIT_THRESHOLD: u32 = 16 << 10;
/// After our last frame went out, how long we keep reading (and discarding) so the peer sees
/// an orderly close instead of a reset that could destroy data it has not read yet.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Spdy,
    /// The channel protocols: stream id = channel number, one message per chunk.
    WebSocket {
        base64: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Close requested: send everything queued, then the final frame, then shut down.
    Draining,
    /// Protocol error: drop what is queued, send the final frame, shut down.
    Aborted,
    /// The connection is gone.
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderSide {
    /// No handle yet (SPDY streams wait to be paired or counted): buffer.
    Unclaimed,
    Claimed,
    /// Nobody will read: discard (and credit) what arrives.
    Dropped,
}

struct Slot {
    inbuf: BytesMut,
    in_eof: bool,
    reader: ReaderSide,
    read_waker: Option<Waker>,
    recv_credit: u32,

    outbuf: BytesMut,
    writer_alive: bool,
    fin_requested: bool,
    fin_sent: bool,
    write_waker: Option<Waker>,
    send_window: i64,
    queued: bool,

    reset: bool,
}

impl Slot {
    fn new(in_eof: bool, send_window: i64) -> Slot {
        Slot {
            inbuf: BytesMut::new(),
            in_eof,
            reader: ReaderSide::Unclaimed,
            read_waker: None,
            recv_credit: 0,
            outbuf: BytesMut::new(),
            writer_alive: false,
            fin_requested: false,
            fin_sent: false,
            write_waker: None,
            send_window,
            queued: false,
            reset: false,
        }
    }

    fn out_done(&self) -> bool {
        self.reset || (self.outbuf.is_empty() && (!self.fin_requested || self.fin_sent))
    }
}

struct Inner {
    state: State,
    streams: HashMap<u32, Slot>,
    control: VecDeque<Vec<u8>>,
    ready: VecDeque<u32>,
    final_frame: Option<Vec<u8>>,
    /// Streams with consumed bytes to announce in a WINDOW_UPDATE.
    credit_due: Vec<u32>,
    conn_credit: u32,
    /// SPDY send-side flow control. Counted always, enforced only once the peer shows it does
    /// flow control (a SETTINGS initial window or any WINDOW_UPDATE): kubelet's clients
    /// (moby/spdystream) never send WINDOW_UPDATE, and waiting for one would stall every exec
    /// after 64 KiB of output.
    enforce_stream_window: bool,
    enforce_conn_window: bool,
    conn_send_window: i64,
    initial_send_window: i64,
    /// Highest stream id the peer opened (SPDY GOAWAY's last-good-stream-id).
    last_peer_stream: u32,
    writer_done: bool,
    /// Bytes held in stream buffers, for the back-pressure tests.
    buffered: usize,
}

pub(crate) struct Mux {
    framing: Framing,
    inner: Mutex<Inner>,
    /// Wakes the writer task (work queued, or a state change).
    writer_wake: Notify,
    /// Wakes the reader loop waiting for room in an inbound buffer or the control queue.
    room: Notify,
    /// Wakes whoever waits for an outbound stream to drain (StatusWriter::finish).
    drained: Notify,
    closed: watch::Sender<bool>,
    writer_done: watch::Sender<bool>,
}

/// What the reader loop learns from [`Mux::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Stored,
    /// Nobody reads the stream (or it is gone): the bytes were dropped.
    Discarded,
    /// The connection is ending; stop reading.
    Closing,
}

impl Mux {
    pub(crate) fn new(framing: Framing) -> Arc<Mux> {
        Arc::new(Mux {
            framing,
            inner: Mutex::new(Inner {
                state: State::Open,
                streams: HashMap::new(),
                control: VecDeque::new(),
                ready: VecDeque::new(),
                final_frame: None,
                credit_due: Vec::new(),
                conn_credit: 0,
                enforce_stream_window: false,
                enforce_conn_window: false,
                conn_send_window: INITIAL_WINDOW,
                initial_send_window: INITIAL_WINDOW,
                last_peer_stream: 0,
                writer_done: false,
                buffered: 0,
            }),
            writer_wake: Notify::new(),
            room: Notify::new(),
            drained: Notify::new(),
            closed: watch::channel(false).0,
            writer_done: watch::channel(false).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain buffers behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- streams -------------------------------------------------------------------------

    /// Registers a stream the peer opened. `in_eof`: it arrived already half-closed.
    pub(crate) fn open(&self, id: u32, in_eof: bool) {
        let mut g = self.lock();
        let w = g.initial_send_window;
        g.streams.insert(id, Slot::new(in_eof, w));
        if self.framing == Framing::Spdy && id > g.last_peer_stream {
            g.last_peer_stream = id;
        }
    }

    pub(crate) fn has_stream(&self, id: u32) -> bool {
        self.lock().streams.contains_key(&id)
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    pub(crate) fn last_peer_stream(&self) -> u32 {
        self.lock().last_peer_stream
    }

    pub(crate) fn reader(self: &Arc<Self>, id: u32) -> StreamReader {
        if let Some(s) = self.lock().streams.get_mut(&id) {
            s.reader = ReaderSide::Claimed;
        }
        StreamReader {
            mux: self.clone(),
            id,
        }
    }

    pub(crate) fn writer(self: &Arc<Self>, id: u32) -> StreamWriter {
        if let Some(s) = self.lock().streams.get_mut(&id) {
            s.writer_alive = true;
        }
        StreamWriter {
            mux: self.clone(),
            id,
        }
    }

    /// Nobody will read this stream: drop what it buffered and discard what comes.
    pub(crate) fn abandon(&self, id: u32) {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(s) = g.streams.get_mut(&id) {
            s.reader = ReaderSide::Dropped;
            let n = s.inbuf.len();
            s.inbuf.clear();
            g.buffered -= n;
            credit(g, self.framing, id, n);
        }
        drop_if_done(g, id);
        self.writer_wake.notify_one();
        self.room.notify_one();
    }

    /// Stores inbound stream data, waiting while the stream's buffer is full.
    pub(crate) async fn push(&self, id: u32, mut data: &[u8]) -> Pushed {
        loop {
            let waker = {
                let mut g = self.lock();
                let g = &mut *g;
                if matches!(g.state, State::Aborted | State::Dead) {
                    return Pushed::Closing;
                }
                if g.writer_done {
                    return Pushed::Discarded;
                }
                let Some(s) = g.streams.get_mut(&id) else {
                    credit(g, self.framing, 0, data.len());
                    return Pushed::Discarded;
                };
                if s.reader == ReaderSide::Dropped || s.reset || s.in_eof {
                    credit(g, self.framing, id, data.len());
                    return Pushed::Discarded;
                }
                let room = STREAM_BUFFER.saturating_sub(s.inbuf.len());
                let n = room.min(data.len());
                s.inbuf.extend_from_slice(&data[..n]);
                g.buffered += n;
                data = &data[n..];
                let w = s.read_waker.take();
                if data.is_empty() {
                    if let Some(w) = w {
                        w.wake();
                    }
                    return Pushed::Stored;
                }
                w
            };
            if let Some(w) = waker {
                w.wake();
            }
            self.room.notified().await;
        }
    }

    /// The peer half-closed the stream (SPDY FIN, v5 CLOSE signal).
    pub(crate) fn end_inbound(&self, id: u32) {
        let mut g = self.lock();
        if let Some(s) = g.streams.get_mut(&id) {
            s.in_eof = true;
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
        }
        drop_if_done(&mut g, id);
    }

    pub(crate) fn inbound_ended(&self, id: u32) -> bool {
        self.lock().streams.get(&id).is_none_or(|s| s.in_eof)
    }

    /// The peer reset the stream, or we refuse it: both directions end now.
    pub(crate) fn reset(&self, id: u32) {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(s) = g.streams.get_mut(&id) {
            s.reset = true;
            g.buffered -= s.inbuf.len() + s.outbuf.len();
            s.inbuf.clear();
            s.outbuf.clear();
            for w in [s.read_waker.take(), s.write_waker.take()]
                .into_iter()
                .flatten()
            {
                w.wake();
            }
        }
        drop_if_done(g, id);
        self.drained.notify_waiters();
        self.room.notify_one();
    }

    // ---- SPDY flow control ---------------------------------------------------------------

    pub(crate) fn window_update(&self, id: u32, delta: u32) -> Result<(), &'static str> {
        let mut g = self.lock();
        let g = &mut *g;
        if id == 0 {
            g.enforce_conn_window = true;
            g.conn_send_window += i64::from(delta);
            if g.conn_send_window > i64::from(i32::MAX) {
                return Err("connection window grows past 2^31-1");
            }
            let ids: Vec<u32> = g.streams.keys().copied().collect();
            for id in ids {
                enqueue(g, id);
            }
        } else {
            g.enforce_stream_window = true;
            let Some(s) = g.streams.get_mut(&id) else {
                return Ok(());
            };
            s.send_window += i64::from(delta);
            if s.send_window > i64::from(i32::MAX) {
                return Err("stream window grows past 2^31-1");
            }
            enqueue(g, id);
        }
        self.writer_wake.notify_one();
        Ok(())
    }

    pub(crate) fn initial_window(&self, value: u32) {
        let mut g = self.lock();
        let g = &mut *g;
        g.enforce_stream_window = true;
        let delta = i64::from(value) - g.initial_send_window;
        g.initial_send_window = i64::from(value);
        for s in g.streams.values_mut() {
            s.send_window += delta;
        }
        let ids: Vec<u32> = g.streams.keys().copied().collect();
        for id in ids {
            enqueue(g, id);
        }
        self.writer_wake.notify_one();
    }

    // ---- control frames and the connection's end -----------------------------------------

    /// Queues an encoded control frame, waiting while the control queue is full.
    pub(crate) async fn control(&self, frame: Vec<u8>) -> Pushed {
        let mut frame = Some(frame);
        loop {
            {
                let mut g = self.lock();
                if g.state != State::Open && g.state != State::Draining {
                    return Pushed::Closing;
                }
                if g.writer_done {
                    return Pushed::Discarded;
                }
                if g.control.len() < CONTROL_QUEUE {
                    g.control.push_back(frame.take().expect("pushed once"));
                    drop(g);
                    self.writer_wake.notify_one();
                    return Pushed::Stored;
                }
            }
            self.room.notified().await;
        }
    }

    /// Queues a control frame now, ignoring the queue's bound (one frame at session start).
    pub(crate) fn control_now(&self, frame: Vec<u8>) -> Pushed {
        let mut g = self.lock();
        if g.state != State::Open {
            return Pushed::Closing;
        }
        g.control.push_back(frame);
        drop(g);
        self.writer_wake.notify_one();
        Pushed::Stored
    }

    /// Ends the connection normally: SPDY GOAWAY, WebSocket close 1000.
    pub(crate) fn close_ok(&self) {
        let f = match self.framing {
            Framing::Spdy => spdy::goaway(self.last_peer_stream(), spdy::goaway::OK),
            Framing::WebSocket { .. } => ws::close_frame(ws::CLOSE_NORMAL, ""),
        };
        self.close(f);
    }

    /// Sends what is queued, then `final_frame`, then closes. Stream writers get BrokenPipe
    /// from now on; what they already wrote still goes out.
    pub(crate) fn close(&self, final_frame: Vec<u8>) {
        let mut g = self.lock();
        if g.state != State::Open {
            return;
        }
        g.state = State::Draining;
        g.final_frame = Some(final_frame);
        wake_all(&mut g);
        drop(g);
        self.writer_wake.notify_one();
        self.room.notify_one();
        self.drained.notify_waiters();
    }

    /// Protocol error: drop everything queued and send only `final_frame` (GOAWAY or a
    /// WebSocket close with the reason).
    pub(crate) fn abort(&self, final_frame: Vec<u8>) {
        let mut g = self.lock();
        if matches!(g.state, State::Aborted | State::Dead) {
            return;
        }
        g.state = State::Aborted;
        g.final_frame = Some(final_frame);
        g.control.clear();
        g.ready.clear();
        wake_all(&mut g);
        drop(g);
        self.writer_wake.notify_one();
        self.room.notify_one();
        self.drained.notify_waiters();
        let _ = self.closed.send(true);
    }

    /// The connection is gone (reader loop ended, or the socket failed).
    pub(crate) fn kill(&self) {
        let mut g = self.lock();
        g.state = State::Dead;
        g.control.clear();
        g.ready.clear();
        wake_all(&mut g);
        drop(g);
        self.writer_wake.notify_one();
        self.room.notify_one();
        self.drained.notify_waiters();
        let _ = self.closed.send(true);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.lock().state == State::Open
    }

    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Resolves [`LINGER`] after the writer finished, or when the connection died: the point
    /// where the reader loop stops waiting for the peer to close.
    pub(crate) async fn linger_over(&self) {
        let mut done = self.writer_done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        tokio::time::sleep(LINGER).await;
    }

    /// After the reader loop ends. When we are closing, the writer gets a bounded time to put
    /// out its last frame, and (`drain`) what the peer still sends is read and dropped until it
    /// closes too: closing a socket with unread input sends a reset, which can destroy our last
    /// frames before the peer reads them. Then every handle is released.
    pub(crate) async fn reader_finished<R: AsyncRead + Unpin>(&self, rd: &mut R, drain: bool) {
        let closing = matches!(self.lock().state, State::Draining | State::Aborted);
        if closing {
            let mut done = self.writer_done.subscribe();
            let _ = tokio::time::timeout(LINGER, done.wait_for(|d| *d)).await;
            if drain {
                let _ = tokio::time::timeout(LINGER, async {
                    let mut b = [0u8; 8192];
                    while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
                })
                .await;
            }
        }
        self.kill();
    }

    /// Waits until the given streams have sent everything written to them (and the FIN asked
    /// for), or the connection ends.
    pub(crate) async fn wait_drained(&self, ids: &[u32]) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.lock();
                if g.state == State::Dead || g.state == State::Aborted || g.writer_done {
                    return;
                }
                if ids
                    .iter()
                    .all(|id| g.streams.get(id).is_none_or(Slot::out_done))
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Waits until every given stream has been ended by its writer (dropped or shut down)
    /// and its data sent, or the connection ends.
    pub(crate) async fn wait_finished(&self, ids: &[u32]) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let g = self.lock();
                if g.state != State::Open || g.writer_done {
                    return;
                }
                if ids.iter().all(|id| {
                    g.streams
                        .get(id)
                        .is_none_or(|s| s.reset || (s.fin_requested && s.out_done()))
                }) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Requests FIN on the outbound side of `id` (SPDY) once its buffer is sent.
    pub(crate) fn finish_outbound(&self, id: u32) {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(s) = g.streams.get_mut(&id) {
            s.fin_requested = true;
        }
        enqueue(g, id);
        drop_if_done(g, id);
        self.writer_wake.notify_one();
    }

    /// Queues `data` on stream `id` regardless of the buffer bound (a status message, a port
    /// number: small and written once).
    pub(crate) fn write_now(&self, id: u32, data: &[u8]) -> io::Result<()> {
        let mut g = self.lock();
        let g = &mut *g;
        if matches!(g.state, State::Aborted | State::Dead) {
            return Err(broken());
        }
        let Some(s) = g.streams.get_mut(&id) else {
            return Err(broken());
        };
        if s.reset || s.fin_requested {
            return Err(broken());
        }
        s.outbuf.extend_from_slice(data);
        g.buffered += data.len();
        enqueue(g, id);
        self.writer_wake.notify_one();
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buffered
    }

    // ---- the writer task -----------------------------------------------------------------

    /// Runs until the connection is closed or dead: the only code that writes the socket.
    pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(self: Arc<Self>, mut w: W) {
        // Grows to one batch on first use; idle connections hold nothing.
        let mut buf = Vec::new();
        let mut failed = false;
        loop {
            let step = self.collect(&mut buf);
            if !buf.is_empty() {
                if let Err(e) = w.write_all(&buf).await {
                    log::debug!("streaming connection: write failed: {e}");
                    failed = true;
                    break;
                }
                buf.clear();
            }
            match step {
                Step::More => continue,
                Step::Idle => {
                    if w.flush().await.is_err() {
                        failed = true;
                        break;
                    }
                    self.writer_wake.notified().await;
                }
                Step::Final => {
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                    break;
                }
                Step::Dead => break,
            }
        }
        {
            let mut g = self.lock();
            g.writer_done = true;
            wake_all(&mut g);
        }
        if failed {
            // The socket failed under us: that is the connection's end too.
            self.kill();
        }
        self.room.notify_one();
        self.drained.notify_waiters();
        let _ = self.writer_done.send(true);
    }

    fn collect(&self, buf: &mut Vec<u8>) -> Step {
        let mut g = self.lock();
        let g = &mut *g;
        match g.state {
            State::Dead => return Step::Dead,
            State::Aborted => {
                if let Some(f) = g.final_frame.take() {
                    buf.extend_from_slice(&f);
                }
                return Step::Final;
            }
            State::Open | State::Draining => {}
        }
        let had_control = !g.control.is_empty();
        while let Some(f) = g.control.pop_front() {
            buf.extend_from_slice(&f);
        }
        if had_control {
            self.room.notify_one();
        }
        if self.framing == Framing::Spdy {
            for id in std::mem::take(&mut g.credit_due) {
                if let Some(s) = g.streams.get_mut(&id)
                    && s.recv_credit > 0
                    && !s.reset
                {
                    buf.extend_from_slice(&spdy::window_update(id, s.recv_credit));
                    s.recv_credit = 0;
                }
            }
            if g.conn_credit >= CREDIT_THRESHOLD {
                buf.extend_from_slice(&spdy::window_update(0, g.conn_credit));
                g.conn_credit = 0;
            }
        }
        let mut wakers = Vec::new();
        let mut drained_any = false;
        let mut rounds = g.ready.len();
        while buf.len() < BATCH && rounds > 0 {
            rounds -= 1;
            let Some(id) = g.ready.pop_front() else { break };
            let conn_window = g.enforce_conn_window.then_some(g.conn_send_window);
            let enforce = g.enforce_stream_window;
            let Some(s) = g.streams.get_mut(&id) else {
                continue;
            };
            s.queued = false;
            if s.reset {
                continue;
            }
            let mut n = s.outbuf.len().min(MAX_CHUNK);
            if enforce {
                n = n.min(s.send_window.max(0) as usize);
            }
            if let Some(cw) = conn_window {
                n = n.min(cw.max(0) as usize);
            }
            let fin = s.fin_requested && !s.fin_sent && n == s.outbuf.len();
            if n == 0 && !fin {
                continue;
            }
            self.encode(buf, id, &s.outbuf[..n], fin);
            s.outbuf.advance(n);
            s.send_window -= n as i64;
            if fin {
                s.fin_sent = true;
            }
            if let Some(w) = s.write_waker.take() {
                wakers.push(w);
            }
            let more = !s.outbuf.is_empty() || (s.fin_requested && !s.fin_sent);
            let done = s.out_done();
            g.buffered -= n;
            g.conn_send_window -= n as i64;
            if more {
                enqueue(g, id);
            }
            if done {
                drained_any = true;
                drop_if_done(g, id);
            }
        }
        let step = if !g.ready.is_empty() || !g.control.is_empty() {
            Step::More
        } else if g.state == State::Draining && g.streams.values().all(Slot::out_done) {
            if let Some(f) = g.final_frame.take() {
                buf.extend_from_slice(&f);
            }
            Step::Final
        } else {
            Step::Idle
        };
        for w in wakers {
            w.wake();
        }
        if drained_any {
            self.drained.notify_waiters();
        }
        step
    }

    fn encode(&self, buf: &mut Vec<u8>, id: u32, data: &[u8], fin: bool) {
        match self.framing {
            Framing::Spdy => {
                buf.extend_from_slice(&spdy::data_head(id, fin, data.len()));
                buf.extend_from_slice(data);
            }
            // The channel protocols have no per-channel end from the server: the connection's
            // close ends every channel.
            Framing::WebSocket { base64 } => {
                if data.is_empty() {
                    return;
                }
                buf.extend_from_slice(&ws::channel_message(id as u8, data, base64));
            }
        }
    }
}

enum Step {
    More,
    Idle,
    Final,
    Dead,
}

fn enqueue(g: &mut Inner, id: u32) {
    if let Some(s) = g.streams.get_mut(&id)
        && !s.queued
    {
        s.queued = true;
        g.ready.push_back(id);
    }
}

/// Counts `n` consumed bytes of stream `id` (0: connection only) toward WINDOW_UPDATEs.
fn credit(g: &mut Inner, framing: Framing, id: u32, n: usize) {
    if framing != Framing::Spdy || n == 0 {
        return;
    }
    let n = n as u32;
    g.conn_credit = g.conn_credit.saturating_add(n);
    if let Some(s) = g.streams.get_mut(&id) {
        s.recv_credit = s.recv_credit.saturating_add(n);
        if s.recv_credit >= CREDIT_THRESHOLD && !g.credit_due.contains(&id) {
            g.credit_due.push(id);
        }
    }
}

fn wake_all(g: &mut Inner) {
    for s in g.streams.values_mut() {
        for w in [s.read_waker.take(), s.write_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }
}

/// Forgets a stream nobody can use any more: no handle, both directions over. Its id stays
/// "seen" (SPDY ids only grow), so late frames for it are ignored, not errors.
fn drop_if_done(g: &mut Inner, id: u32) {
    let Some(s) = g.streams.get(&id) else { return };
    let in_over = s.reset || s.in_eof || s.reader == ReaderSide::Dropped;
    let reader_gone = s.reader != ReaderSide::Claimed;
    let out_over = s.reset || s.fin_sent || (!s.writer_alive && s.fin_requested && s.out_done());
    if in_over && reader_gone && out_over && !s.writer_alive && s.inbuf.is_empty() {
        g.buffered -= s.inbuf.len() + s.outbuf.len();
        g.streams.remove(&id);
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the streaming connection is closed",
    )
}

/// The read side of one stream as the backend sees it: EOF when the peer half-closes the
/// stream, resets it, or the connection ends.
pub(crate) struct StreamReader {
    mux: Arc<Mux>,
    id: u32,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mux = &self.mux;
        let mut g = mux.lock();
        let g = &mut *g;
        let dead = matches!(g.state, State::Dead | State::Aborted) || g.writer_done;
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if !s.inbuf.is_empty() {
            let n = s.inbuf.len().min(out.remaining());
            out.put_slice(&s.inbuf[..n]);
            s.inbuf.advance(n);
            g.buffered -= n;
            credit(g, mux.framing, self.id, n);
            let wake_writer = !g.credit_due.is_empty() || g.conn_credit >= CREDIT_THRESHOLD;
            mux.room.notify_one();
            if wake_writer && mux.framing == Framing::Spdy {
                mux.writer_wake.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if s.in_eof || s.reset || dead {
            return Poll::Ready(Ok(()));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.mux.abandon(self.id);
    }
}

/// The write side of one stream. Dropping it (or shutting it down) ends the stream: SPDY sends
/// FIN; the channel protocols have nothing to send.
pub(crate) struct StreamWriter {
    mux: Arc<Mux>,
    id: u32,
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mux = &self.mux;
        let mut g = mux.lock();
        let g = &mut *g;
        if g.state != State::Open {
            return Poll::Ready(Err(broken()));
        }
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(broken()));
        };
        if s.reset || s.fin_requested {
            return Poll::Ready(Err(broken()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = STREAM_BUFFER.saturating_sub(s.outbuf.len());
        if room == 0 {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        s.outbuf.extend_from_slice(&data[..n]);
        g.buffered += n;
        enqueue(g, self.id);
        mux.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.mux.lock();
        let dead = matches!(g.state, State::Dead | State::Aborted);
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if s.outbuf.is_empty() || s.reset {
            return Poll::Ready(Ok(()));
        }
        if dead {
            return Poll::Ready(Err(broken()));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mux = &self.mux;
        let mut g = mux.lock();
        let g = &mut *g;
        let dead = matches!(g.state, State::Dead | State::Aborted);
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if !s.fin_requested {
            s.fin_requested = true;
            enqueue(g, self.id);
            mux.writer_wake.notify_one();
        }
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if s.out_done() || dead {
            return Poll::Ready(Ok(()));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let mut g = self.mux.lock();
        let g = &mut *g;
        if let Some(s) = g.streams.get_mut(&self.id) {
            s.writer_alive = false;
            s.fin_requested = true;
            enqueue(g, self.id);
        }
        drop_if_done(g, self.id);
        self.mux.writer_wake.notify_one();
    }
}
