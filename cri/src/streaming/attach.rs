//! Attach: a client joins a running container's own stdio. Several may be attached at once;
//! detaching leaves the container running.
//!
//! Our shim writes a container's output itself, so there is no daemon-side pipe to tee:
//!
//! ```text
//!  output, container with a log path (kubelet's case): the CRI log, followed from its end
//!    (log_follow.rs), each record to the client's stdout or stderr, by any number of
//!    attachers, each at its own pace (the file is the buffer).
//!  output, container without one (crictl, critest): at StartContainer the shim gets FIFOs
//!    <root>/io/<id>/{stdout,stderr} instead of nothing; the first attacher starts one reader
//!    per FIFO that fans out to every attacher ([`Outputs`]) and reads on until the
//!    container ends, so the container never waits on a pipe nobody reads.
//!  input: a container whose config asks for stdin gets <root>/io/<id>/stdin at
//!    StartContainer. The shim keeps a writer of its own open, so the container sees no end
//!    of file while nobody is attached; an attacher writes into it; with stdin_once, the
//!    first attacher's end of stdin is the container's (Tasks.CloseIO).
//!  terminal size: Tasks.ResizePty of the init process.
//! ```
//!
//! The FIFOs are named by the container id, so a restarted corral-cri finds them. They are
//! removed with the container; containers started before corral-cri had attach have none, and
//! attaching to their stdin is refused with a clear error. Runtimes whose shim does not write
//! the CRI log (`shim_writes_logs = false`, containerd's runc shim) get no FIFOs and cannot be
//! attached to: such a shim keeps no writer of its own on stdin (containerd holds one in its
//! daemon), so one would have to live in corral-cri, and a restart of ours would end the
//! container's stdin. Exec works with every runtime.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use protocol::grpc::runtime::v1::{AttachRequest, AttachResponse, ContainerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::broadcast;

use super::log_follow::{Follower, Record, Stream};
use super::transport::{Outcome, Reader, RemoteCommand, TermSize, Writer};
use super::{Ticket, check_streams};
use crate::core::Cri;
use crate::error::{Error, Result};
use crate::store::{Container, State};

/// Chunks of output kept for an attacher that falls behind (at most 32 KiB each); past that
/// it loses output rather than have us buffer without bound.
const BACKLOG: usize = 256;
const BUF: usize = 32 * 1024;
/// Reads of [`BUF`] that empty a pipe of the largest size an unprivileged process can set
/// (1 MiB): output written before the first attacher came is not shown.
const STALE_READS: usize = 32;

impl Cri {
    /// The directory of a container's stdio FIFOs.
    pub fn io_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("io").join(id)
    }

    pub async fn attach(&self, r: AttachRequest) -> Result<AttachResponse> {
        let c = self.store.find_container(&r.container_id)?;
        if c.state() != State::Running {
            return Err(Error::precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        check_streams("Attach", r.stdin, r.stdout, r.stderr, r.tty)?;
        if r.stdout || r.stderr {
            self.output_source(&c)?;
        }
        let config = c.record.config.clone().unwrap_or_default();
        if r.stdin && config.stdin && !self.io_dir(&c.id).join("stdin").exists() {
            return Err(Error::precondition(format!(
                "container {} has no stdin pipe to attach to: it was started by a corral-cri \
                 without attach support; recreate it to attach its stdin",
                c.id
            )));
        }
        let mut r = r;
        r.container_id = c.id;
        let url = self.streaming.issue(Ticket::Attach(r))?;
        Ok(AttachResponse { url })
    }

    /// Where an attacher reads a container's output from.
    fn output_source(&self, c: &Container) -> Result<Source> {
        let fifos = self.io_dir(&c.id);
        if fifos.join("stdout").exists() {
            return Ok(Source::Fifos(fifos));
        }
        let handler = self
            .store
            .sandbox(c.sandbox_id())
            .map(|s| s.record.runtime_handler.clone())
            .unwrap_or_default();
        if !self
            .cfg
            .runtime(&handler)
            .is_some_and(|r| r.shim_writes_logs)
        {
            return Err(Error::precondition(format!(
                "container {}: attach needs a runtime whose shim writes the container's log \
                 (runtime handler {handler:?} has shim_writes_logs = false)",
                c.id
            )));
        }
        if c.record.log_path.is_empty() {
            return Err(Error::precondition(format!(
                "container {} has neither a log nor output pipes to attach to: it was started \
                 by a corral-cri without attach support",
                c.id
            )));
        }
        Ok(Source::Log(PathBuf::from(&c.record.log_path)))
    }

    /// The stdio a container's task gets at StartContainer, as (stdin, stdout, stderr): a
    /// stdin FIFO when its config asks for stdin, and output FIFOs when it has no log to
    /// follow. Only for runtimes whose shim writes the log (and so keeps FIFOs from blocking
    /// the container): others get nothing here.
    pub async fn prepare_stdio(
        &self,
        id: &str,
        config: &ContainerConfig,
        has_log: bool,
        shim_writes_logs: bool,
    ) -> Result<(String, Option<(String, String)>)> {
        if !shim_writes_logs || (!config.stdin && has_log) {
            return Ok((String::new(), None));
        }
        let dir = self.io_dir(id);
        let mut names = Vec::new();
        if config.stdin {
            names.push("stdin");
        }
        if !has_log {
            names.push("stdout");
            if !config.tty {
                names.push("stderr");
            }
        }
        let d = dir.clone();
        crate::sandbox::stop::blocking(move || {
            std::fs::create_dir_all(&d)?;
            for name in names {
                match nix::unistd::mkfifo(
                    &d.join(name),
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                ) {
                    // Left by a start that failed: a FIFO is a FIFO.
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(std::io::Error::other(format!(
                            "create FIFO {}: {e}",
                            d.join(name).display()
                        )));
                    }
                }
            }
            Ok(())
        })
        .await?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let stdin = if config.stdin {
            path("stdin")
        } else {
            String::new()
        };
        let outputs = (!has_log).then(|| {
            let stderr = if config.tty {
                String::new()
            } else {
                path("stderr")
            };
            (path("stdout"), stderr)
        });
        Ok((stdin, outputs))
    }

    /// Removes a container's stdio FIFOs (RemoveContainer, start-up orphans).
    pub async fn remove_io_dir(&self, id: &str) {
        let dir = self.io_dir(id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("container {id}: remove {}: {e}", dir.display());
        }
    }
}

enum Source {
    Log(PathBuf),
    Fifos(PathBuf),
}

/// Runs an attach for a client that has connected, until the container ends (then the
/// client is told success) or the client goes away.
pub(super) async fn serve(cri: Arc<Cri>, r: AttachRequest, streams: RemoteCommand) {
    let RemoteCommand {
        stdin,
        stdout,
        stderr,
        resize,
        status,
        mut closed,
    } = streams;
    let id = r.container_id.clone();
    let prepared = (|| {
        let c = cri
            .store
            .container(&id)
            .filter(|c| c.state() == State::Running)
            .ok_or_else(|| Error::precondition(format!("container {id} is not running")))?;
        let source = if stdout.is_some() || stderr.is_some() {
            Some(cri.output_source(&c)?)
        } else {
            None
        };
        Ok::<_, Error>((c.record.config.clone().unwrap_or_default(), source))
    })();
    let (config, source) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = status.finish(Outcome::Error(e.message)).await;
            return;
        }
    };
    let stdin_task = match stdin {
        Some(client) if config.stdin => {
            // Non-blocking: fails with ENXIO instead of waiting when the shim no longer
            // reads it (stdin closed after a stdin_once attach).
            match pipe::OpenOptions::new().open_sender(cri.io_dir(&id).join("stdin")) {
                Ok(fifo) => Some(tokio::spawn(copy_stdin(
                    cri.clone(),
                    id.clone(),
                    config.stdin_once,
                    client,
                    fifo,
                ))),
                Err(e) => {
                    let msg = format!("container {id}: its stdin is closed ({e})");
                    let _ = status.finish(Outcome::Error(msg)).await;
                    return;
                }
            }
        }
        // The container has no stdin: what the client types goes nowhere, as with containerd.
        Some(client) => Some(tokio::spawn(discard(client))),
        None => None,
    };
    let resize_task = resize.map(|rx| tokio::spawn(resize_loop(cri.clone(), id.clone(), rx)));
    let out = Out {
        stdout,
        stderr,
        tty: config.tty,
    };
    let output = async {
        match source {
            Some(Source::Log(path)) => follow_log(&cri, &id, &path, out).await,
            Some(Source::Fifos(dir)) => follow_fifos(&cri, &id, &dir, out).await,
            None => {
                exited(&cri, &id).await;
                Ok(())
            }
        }
    };
    let ended = tokio::select! {
        r = output => Some(r),
        _ = closed.wait() => None,
    };
    for t in [&stdin_task, &resize_task].into_iter().flatten() {
        t.abort();
    }
    // stdin_once: "closed after the first attach session disconnects" (Kubernetes' API), by
    // the end of its stdin or by leaving.
    if ended.is_none()
        && config.stdin
        && config.stdin_once
        && stdin_task.as_ref().is_some_and(|t| !t.is_finished())
        && let Err(e) = cri.corrald.close_stdin(&id, "").await
    {
        log::warn!("container {id}: close stdin after a stdin_once attach: {e}");
    }
    match ended {
        Some(Ok(())) => {
            let _ = status.finish(Outcome::Success).await;
        }
        Some(Err(e)) => {
            log::warn!("container {id}: attach: {e}");
            let _ = status.finish(Outcome::Error(e.to_string())).await;
        }
        None => log::debug!("container {id}: attacher gone"),
    }
}

/// The client's output streams.
struct Out {
    stdout: Option<Writer>,
    stderr: Option<Writer>,
    tty: bool,
}

impl Out {
    async fn write(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        // A terminal has one output: the shim logs all of it as stdout.
        let w = match stream {
            Stream::Stdout => self.stdout.as_mut(),
            Stream::Stderr => self.stderr.as_mut(),
        };
        if let Some(w) = w {
            w.write_all(data).await?;
        }
        Ok(())
    }

    async fn record(&mut self, r: &Record) -> std::io::Result<()> {
        self.write(r.stream, &r.content).await?;
        if r.full {
            // The shim drops the `\r` of a terminal's `\r\n`; a client in raw mode needs it.
            let nl: &[u8] = if self.tty { b"\r\n" } else { b"\n" };
            self.write(r.stream, nl).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        for w in [self.stdout.as_mut(), self.stderr.as_mut()]
            .into_iter()
            .flatten()
        {
            w.flush().await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        for w in [self.stdout.as_mut(), self.stderr.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = w.shutdown().await;
        }
    }
}

/// Copies the container's log to the client from now until the container has exited and
/// everything it wrote has been sent.
async fn follow_log(cri: &Cri, id: &str, path: &Path, mut out: Out) -> std::io::Result<()> {
    let mut f = Follower::from_end(path)?;
    let exit = exited(cri, id);
    tokio::pin!(exit);
    let mut records = Vec::new();
    let mut done = false;
    loop {
        records.clear();
        let more = f.read_available(&mut records)?;
        for r in &records {
            out.record(r).await?;
        }
        if !records.is_empty() {
            out.flush().await?;
        }
        if more {
            continue;
        }
        if done {
            // The shim reports an exit once the output is in the log: all of it was read.
            out.close().await;
            return Ok(());
        }
        tokio::select! {
            changed = f.changed() => changed?,
            _ = &mut exit => done = true,
        }
    }
}

/// Resolves once container `id` has exited (or is gone).
async fn exited(cri: &Cri, id: &str) {
    let mut events = cri.events.subscribe();
    loop {
        match cri.store.container(id) {
            Some(c) if c.state() != State::Exited => {}
            _ => return,
        }
        // Each event about this container, or a missed one, is a reason to look again.
        loop {
            match events.recv().await {
                Ok(e) if e.container_id == id => break,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

/// One piece of a container's output read from its FIFO.
#[derive(Clone)]
struct Chunk {
    stream: Stream,
    data: Arc<[u8]>,
}

type Readers = Arc<Mutex<HashMap<String, broadcast::Sender<Chunk>>>>;

/// The readers of containers' output FIFOs (containers without a log), one per container
/// once someone attached, each sending what it reads to every attacher of the moment.
#[derive(Default)]
pub struct Outputs {
    readers: Readers,
}

impl Outputs {
    /// A receiver of container `id`'s output from now on; starts the readers of the FIFOs in
    /// `dir` if none runs. Output buffered while nobody read is old: it is dropped.
    fn subscribe(&self, id: &str, dir: &Path) -> std::io::Result<broadcast::Receiver<Chunk>> {
        if let Some(tx) = lock(&self.readers).get(id) {
            return Ok(tx.subscribe());
        }
        // Opened outside the lock: opening a FIFO is a system call, if a quick one.
        let mut fifos = Vec::new();
        for (name, stream) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
            let path = dir.join(name);
            if path.exists() {
                let fail = |e| std::io::Error::other(format!("open {}: {e}", path.display()));
                // Non-blocking: the open does not wait for a writer, nor a read for data.
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(fail)?;
                // Emptied before tokio sees it (its first readiness is not known yet), of at
                // most what a pipe holds: a container writing all along is not waited out.
                let mut sink = vec![0u8; BUF];
                for _ in 0..STALE_READS {
                    if !matches!(std::io::Read::read(&mut file, &mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
                fifos.push((pipe::Receiver::from_file(file).map_err(fail)?, stream));
            }
        }
        let mut readers = lock(&self.readers);
        if let Some(tx) = readers.get(id) {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(BACKLOG);
        let left = Arc::new(AtomicUsize::new(fifos.len()));
        for (fifo, stream) in fifos {
            tokio::spawn(read_fifo(
                fifo,
                stream,
                tx.clone(),
                id.to_string(),
                self.readers.clone(),
                left.clone(),
            ));
        }
        readers.insert(id.to_string(), tx);
        Ok(rx)
    }
}

fn lock(r: &Readers) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Chunk>>> {
    // Every change is one map operation: a panic elsewhere cannot leave it half-done.
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one output FIFO until the shim closes it (the container ended); the last reader of
/// a container to end removes its entry, which closes the attachers' receivers.
async fn read_fifo(
    mut fifo: pipe::Receiver,
    stream: Stream,
    tx: broadcast::Sender<Chunk>,
    id: String,
    readers: Readers,
    left: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        match fifo.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                // No receiver is fine: the output is read so the container does not wait.
                let _ = tx.send(Chunk {
                    stream,
                    data: Arc::from(&buf[..n]),
                });
            }
            Err(e) => {
                log::warn!("container {id}: read output FIFO: {e}");
                break;
            }
        }
    }
    if left.fetch_sub(1, Ordering::AcqRel) == 1 {
        let mut readers = lock(&readers);
        if readers.get(&id).is_some_and(|t| t.same_channel(&tx)) {
            readers.remove(&id);
        }
    }
}

/// Copies a container's output FIFOs to the client until the container's output ends.
async fn follow_fifos(cri: &Cri, id: &str, dir: &Path, mut out: Out) -> std::io::Result<()> {
    let mut rx = cri.streaming.outputs.subscribe(id, dir)?;
    loop {
        match rx.recv().await {
            Ok(chunk) => {
                out.write(chunk.stream, &chunk.data).await?;
                out.flush().await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                log::debug!("container {id}: a slow attacher missed {n} pieces of output");
            }
            Err(broadcast::error::RecvError::Closed) => {
                out.close().await;
                return Ok(());
            }
        }
    }
}

/// Client stdin → the container's stdin FIFO. At the client's end of stdin only our writer
/// closes (the container keeps its stdin for the next attacher) unless the container asked
/// for stdin_once: then its stdin is closed for good.
async fn copy_stdin(cri: Arc<Cri>, id: String, once: bool, mut client: Reader, fifo: pipe::Sender) {
    let mut fifo = fifo;
    if let Err(e) = super::exec::pump(&mut client, &mut fifo).await {
        log::debug!("container {id}: attach stdin: {e}");
    }
    drop(fifo);
    if once && let Err(e) = cri.corrald.close_stdin(&id, "").await {
        log::warn!("container {id}: close stdin after a stdin_once attach: {e}");
    }
}

async fn discard(mut client: Reader) {
    let mut buf = vec![0u8; BUF];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn resize_loop(cri: Arc<Cri>, id: String, mut rx: tokio::sync::mpsc::Receiver<TermSize>) {
    while let Some(size) = rx.recv().await {
        if let Err(e) = cri
            .corrald
            .resize_pty(&id, "", size.width.into(), size.height.into())
            .await
        {
            log::debug!("container {id}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn recv_now(rx: &mut broadcast::Receiver<Chunk>) -> Option<(Stream, Vec<u8>)> {
        match rx.try_recv() {
            Ok(c) => Some((c.stream, c.data.to_vec())),
            Err(_) => None,
        }
    }

    async fn next(rx: &mut broadcast::Receiver<Chunk>) -> Option<(Stream, Vec<u8>)> {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("no output within 10 s");
        got.ok().map(|c| (c.stream, c.data.to_vec()))
    }

    #[tokio::test]
    async fn output_fifos_fan_out_to_every_attacher_from_now_on_and_end_with_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        for name in ["stdout", "stderr"] {
            nix::unistd::mkfifo(&dir.path().join(name), mode).unwrap();
        }
        // The shim's side: read-write, so its writes never fail for want of a reader.
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let (mut out, mut err) = (open("stdout"), open("stderr"));
        out.write_all(b"before anyone attached\n").unwrap();

        let outputs = Outputs::default();
        let mut a = outputs.subscribe("c1", dir.path()).unwrap();
        let mut b = outputs.subscribe("c1", dir.path()).unwrap();
        assert_eq!(lock(&outputs.readers).len(), 1, "one reader per container");

        out.write_all(b"hello\n").unwrap();
        assert_eq!(
            next(&mut a).await,
            Some((Stream::Stdout, b"hello\n".to_vec()))
        );
        assert_eq!(
            next(&mut b).await,
            Some((Stream::Stdout, b"hello\n".to_vec()))
        );
        err.write_all(b"oops\n").unwrap();
        assert_eq!(
            next(&mut a).await,
            Some((Stream::Stderr, b"oops\n".to_vec()))
        );
        assert_eq!(
            next(&mut b).await,
            Some((Stream::Stderr, b"oops\n".to_vec()))
        );

        // The container ends: the shim closes its FIFOs, attachers see the end, the reader goes.
        drop(out);
        drop(err);
        assert_eq!(next(&mut a).await, None);
        assert_eq!(next(&mut b).await, None);
        assert!(recv_now(&mut a).is_none());
        assert!(lock(&outputs.readers).is_empty());
    }
}
