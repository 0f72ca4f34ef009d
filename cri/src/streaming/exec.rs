//! Exec: a command run in a running container with the client's streams, through corrald's
//! Tasks API — the same way `ctr tasks exec` does it:
//!
//! ```text
//!  CRI Exec ──▶ checks (container running, streams) ──▶ token ──▶ URL
//!  client connects ──▶ serve():
//!    <root>/exec/<exec id>/{stdin,stdout,stderr} FIFOs (+ `container`: whose exec it is)
//!    Tasks.Exec(FIFOs, the container's process with the command) → Tasks.Start
//!      stdin  ─ client → FIFO; its end → Tasks.CloseIO(stdin)
//!      stdout/stderr ─ FIFO → client, until the shim closes them
//!      resize ─ Tasks.ResizePty
//!    Tasks.Wait → exit status on the error stream → Tasks.DeleteProcess, FIFOs removed
//!  client gone at any point: SIGKILL, wait, DeleteProcess, FIFOs removed
//! ```
//!
//! A failed Start (a missing binary) is the error the client sees on its error stream. The
//! `container` file lets a corral-cri that restarts after a crash kill execs nobody watches
//! any more (see `recover.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::grpc::any;
use protocol::grpc::containerd::services::tasks::v1::ExecProcessRequest;
use protocol::grpc::runtime::v1::{ExecRequest, ExecResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::transport::{Outcome, Reader, RemoteCommand, TermSize, Writer};
use super::{Ticket, check_streams};
use crate::core::Cri;
use crate::error::{Error, Result};
use crate::spec;
use crate::store::State;

/// The file in an exec's directory that names its container.
pub const CONTAINER_FILE: &str = "container";
/// How long output may still come after the process exited (a child it left behind can hold
/// the pipe open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
const SIGKILL: u32 = 9;
const BUF: usize = 32 * 1024;

impl Cri {
    pub async fn exec(&self, r: ExecRequest) -> Result<ExecResponse> {
        let c = self.store.find_container(&r.container_id)?;
        if c.state() != State::Running {
            return Err(Error::precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        if r.cmd.is_empty() {
            return Err(Error::invalid("Exec: cmd is empty"));
        }
        check_streams("Exec", r.stdin, r.stdout, r.stderr, r.tty)?;
        let mut r = r;
        // The full id, so that the session does not depend on the prefix staying unique.
        r.container_id = c.id;
        let url = self.streaming.issue(Ticket::Exec(r))?;
        Ok(ExecResponse { url })
    }
}

/// Runs an exec for a client that has connected; see the module docs.
pub(super) async fn serve(cri: Arc<Cri>, r: ExecRequest, streams: RemoteCommand) {
    let RemoteCommand {
        stdin,
        stdout,
        stderr,
        resize,
        status,
        mut closed,
    } = streams;
    let id = r.container_id.clone();
    let exec_id = crate::ids::new_id();
    let dir = cri.exec_dir().join(&exec_id);
    let started = tokio::select! {
        s = start(&cri, &r, &exec_id, &dir) => s,
        _ = closed.wait() => {
            // Gone before the process ran; it may exist already (Exec done, Start not).
            cleanup(&cri, &id, &exec_id, &dir, true).await;
            return;
        }
    };
    let mut pipes = match started {
        Ok(p) => p,
        Err(e) => {
            log::info!("container {id}: exec {:?}: {e}", r.cmd);
            cleanup(&cri, &id, &exec_id, &dir, false).await;
            let _ = status.finish(Outcome::Error(e.message)).await;
            return;
        }
    };
    log::debug!("container {id}: exec {exec_id} {:?} started", r.cmd);

    let stdin_task = match (stdin, pipes.stdin.take()) {
        (Some(client), Some(fifo)) => Some(tokio::spawn(copy_stdin(
            cri.clone(),
            id.clone(),
            exec_id.clone(),
            client,
            fifo,
        ))),
        _ => None,
    };
    let resize_task =
        resize.map(|rx| tokio::spawn(resize_loop(cri.clone(), id.clone(), exec_id.clone(), rx)));
    let output = tokio::spawn(copy_outputs(
        pipes.stdout.take().zip(stdout),
        pipes.stderr.take().zip(stderr),
    ));
    let ended = async {
        let exit = cri.corrald.wait(&id, &exec_id, Duration::MAX).await;
        // The shim reports an exit once the output is copied; what a leftover child still
        // writes gets a few seconds.
        let out_abort = output.abort_handle();
        if tokio::time::timeout(DRAIN_AFTER_EXIT, output)
            .await
            .is_err()
        {
            out_abort.abort();
        }
        exit
    };
    let outcome = tokio::select! {
        exit = ended => Some(match exit {
            Ok(Some(e)) if e.status == 0 => Outcome::Success,
            Ok(Some(e)) => Outcome::Exit(e.status as i32),
            Ok(None) => Outcome::Error("the process's end was not reported".into()),
            Err(e) => Outcome::Error(e.message),
        }),
        _ = closed.wait() => None,
    };
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    match outcome {
        Some(outcome) => {
            if let Err(e) = status.finish(outcome).await {
                log::debug!("container {id}: exec {exec_id}: write status: {e}");
            }
            cleanup(&cri, &id, &exec_id, &dir, false).await;
        }
        None => {
            log::debug!("container {id}: exec {exec_id}: client gone, killing the process");
            cleanup(&cri, &id, &exec_id, &dir, true).await;
        }
    }
}

/// Our ends of an exec's FIFOs.
struct Pipes {
    stdin: Option<Stdin>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

/// Our end of the process's stdin FIFO.
enum Stdin {
    Open(pipe::Sender),
    /// The shim has not opened the FIFO for reading yet.
    NoReaderYet(PathBuf),
}

impl Stdin {
    /// Our end, once the shim reads the FIFO. Waits as long as the session lasts: the
    /// session's end (the process's exit, the client gone) aborts the wait.
    async fn open(self) -> std::io::Result<pipe::Sender> {
        let path = match self {
            Stdin::Open(s) => return Ok(s),
            Stdin::NoReaderYet(p) => p,
        };
        let mut pause = Duration::from_millis(1);
        loop {
            match pipe::OpenOptions::new().open_sender(&path) {
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }
}

/// Creates the FIFOs and the process, and starts it.
async fn start(cri: &Cri, r: &ExecRequest, exec_id: &str, dir: &Path) -> Result<Pipes> {
    let id = &r.container_id;
    let c = cri.store.find_container(id)?;
    if c.state() != State::Running {
        return Err(Error::precondition(format!(
            "container {id} is not running any more"
        )));
    }
    let stored = cri
        .corrald
        .get_container(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("container {id} is gone")))?;
    let oci: serde_json::Value = stored
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .ok_or_else(|| Error::internal(format!("container {id}: unreadable spec")))?;
    let process = spec::exec_process(&oci, &r.cmd, r.tty)?;

    let wanted = [
        ("stdin", r.stdin),
        ("stdout", r.stdout),
        ("stderr", r.stderr && !r.tty),
    ];
    let d = dir.to_path_buf();
    let owner = id.clone();
    crate::sandbox::stop::blocking(move || {
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(CONTAINER_FILE), owner)?;
        for (name, want) in wanted {
            if want {
                nix::unistd::mkfifo(
                    &d.join(name),
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )
                .map_err(std::io::Error::from)?;
            }
        }
        Ok(())
    })
    .await?;
    let path =
        |name: &str, want: bool| -> PathBuf { if want { dir.join(name) } else { PathBuf::new() } };
    let fifo =
        |name: &str, e: std::io::Error| Error::internal(format!("open exec FIFO {name}: {e}"));
    // Our read ends first, non-blocking: the shim's open for writing then never waits.
    let receiver = |name: &str, want: bool| -> Result<Option<pipe::Receiver>> {
        if !want {
            return Ok(None);
        }
        pipe::OpenOptions::new()
            .open_receiver(dir.join(name))
            .map(Some)
            .map_err(|e| fifo(name, e))
    };
    let stdout = receiver("stdout", wanted[1].1)?;
    let stderr = receiver("stderr", wanted[2].1)?;
    let as_str = |p: PathBuf| p.to_string_lossy().into_owned();
    cri.corrald
        .exec(ExecProcessRequest {
            container_id: id.clone(),
            exec_id: exec_id.to_string(),
            stdin: as_str(path("stdin", r.stdin)),
            stdout: as_str(path("stdout", wanted[1].1)),
            stderr: as_str(path("stderr", wanted[2].1)),
            terminal: r.tty,
            spec: Some(any::pack_raw(
                any::OCI_PROCESS,
                process.to_string().into_bytes(),
            )),
        })
        .await?;
    cri.corrald.start(id, exec_id).await?;
    // The shim keeps a writer of its own on stdin until CloseIO, so nothing the client sends
    // is lost by opening ours only now. Its reader may not be there yet (ENXIO):
    // containerd's shim opens an exec's FIFOs in goroutines that may run after Start has
    // answered. Then the copy waits for it.
    let stdin = if r.stdin {
        let path = dir.join("stdin");
        match pipe::OpenOptions::new().open_sender(&path) {
            Ok(s) => Some(Stdin::Open(s)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Some(Stdin::NoReaderYet(path)),
            Err(e) => {
                // Started, but without the stdin the client asked for: not to be left running.
                let _ = cri.corrald.kill(id, exec_id, SIGKILL, false).await;
                return Err(fifo("stdin", e));
            }
        }
    } else {
        None
    };
    Ok(Pipes {
        stdin,
        stdout,
        stderr,
    })
}

/// Kills (when asked) and removes the process, and removes its FIFOs. Best effort: failures
/// are logged, and what is left is removed at the next start-up.
async fn cleanup(cri: &Cri, id: &str, exec_id: &str, dir: &Path, kill: bool) {
    if kill {
        match cri.corrald.kill(id, exec_id, SIGKILL, false).await {
            Ok(true) => {
                let _ = cri.corrald.wait(id, exec_id, Duration::from_secs(10)).await;
            }
            Ok(false) => {}
            Err(e) => log::warn!("container {id}: kill exec {exec_id}: {e}"),
        }
    }
    if let Err(e) = cri.corrald.delete_process(id, exec_id).await {
        log::warn!("container {id}: delete exec {exec_id}: {e}");
    }
    if let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("remove {}: {e}", dir.display());
    }
}

/// Client stdin → the process's stdin FIFO; at the client's end of stdin, the FIFO is
/// closed and so is the process's stdin (CloseIO drops the shim's own writer).
async fn copy_stdin(cri: Arc<Cri>, id: String, exec_id: String, mut client: Reader, fifo: Stdin) {
    match fifo.open().await {
        Ok(mut fifo) => {
            if let Err(e) = pump(&mut client, &mut fifo).await {
                log::debug!("container {id}: exec {exec_id}: stdin: {e}");
            }
        }
        Err(e) => log::warn!("container {id}: exec {exec_id}: open stdin FIFO: {e}"),
    }
    if let Err(e) = cri.corrald.close_stdin(&id, &exec_id).await {
        log::debug!("container {id}: exec {exec_id}: {e}");
    }
}

async fn resize_loop(
    cri: Arc<Cri>,
    id: String,
    exec_id: String,
    mut rx: tokio::sync::mpsc::Receiver<TermSize>,
) {
    while let Some(size) = rx.recv().await {
        if let Err(e) = cri
            .corrald
            .resize_pty(&id, &exec_id, size.width.into(), size.height.into())
            .await
        {
            log::debug!("container {id}: exec {exec_id}: {e}");
        }
    }
}

/// The process's output FIFOs → the client's streams, each until the shim closes its FIFO;
/// then the client's stream is closed.
async fn copy_outputs(
    stdout: Option<(pipe::Receiver, Writer)>,
    stderr: Option<(pipe::Receiver, Writer)>,
) {
    let one = |pair: Option<(pipe::Receiver, Writer)>| async move {
        let Some((mut fifo, mut client)) = pair else {
            return;
        };
        if pump(&mut fifo, &mut client).await.is_ok() {
            let _ = client.shutdown().await;
        }
    };
    tokio::join!(one(stdout), one(stderr));
}

/// Copies until `from` ends, flushing every chunk (an interactive client must see output at
/// once); returns the bytes copied.
pub(super) async fn pump<R, W>(from: &mut R, to: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.flush().await?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    /// containerd's shim may open an exec's stdin FIFO for reading only after Start has
    /// answered. Our end waits for it instead of taking the process as gone.
    #[tokio::test]
    async fn stdin_waits_for_the_shims_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let no_reader = pipe::OpenOptions::new().open_sender(&path).unwrap_err();
        assert_eq!(no_reader.raw_os_error(), Some(libc::ENXIO));

        let ours = tokio::spawn(Stdin::NoReaderYet(path.clone()).open());
        // One turn for our end (this runtime has one thread): it finds no reader and waits.
        tokio::task::yield_now().await;
        assert!(!ours.is_finished());
        // The shim's reader, opened now; non-blocking, as a FIFO without a writer needs.
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut sender = tokio::time::timeout(Duration::from_secs(30), ours)
            .await
            .expect("our end never opened")
            .unwrap()
            .unwrap();
        sender.write_all(b"typed").await.unwrap();
        drop(sender);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "typed");
    }
}
