//! A process's standard streams between the local terminal and the shim: FIFOs we create and
//! the shim opens (stdin, stdout, stderr; or stdin and one output for a terminal), copied
//! to and from our own stdio; raw mode for a local terminal; window size changes forwarded.
//!
//! The output FIFOs are opened read-write: we never see end of file (the shim may open its
//! side later, or reopen it), so the end of output is the end of the process — the shim
//! reports an exit only after the process's output went into the FIFO, so after Wait we
//! empty what is buffered and stop.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::stat::Mode;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{Client, rpc_err};

/// A directory of FIFOs for one process, removed on drop.
pub struct Fifos {
    dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    pub fn new(id: &str, stdin: bool, terminal: bool) -> Result<Fifos> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "corral-fifo-{}-{}",
            std::process::id(),
            crate::client::nanos()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mk = |name: &str| -> Result<PathBuf> {
            let p = dir.join(format!("{id}-{name}"));
            nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))
                .with_context(|| format!("cannot create FIFO {}", p.display()))?;
            Ok(p)
        };
        Ok(Fifos {
            stdin: if stdin { Some(mk("stdin")?) } else { None },
            stdout: mk("stdout")?,
            stderr: if terminal { None } else { Some(mk("stderr")?) },
            dir,
        })
    }

    pub fn uris(&self) -> (String, String, String) {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        (
            s(&self.stdin),
            self.stdout.display().to_string(),
            s(&self.stderr),
        )
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies one output FIFO to a local stream until `done` turns true, then empties it.
fn copy_out(
    path: &Path,
    mut done: watch::Receiver<bool>,
    to_stderr: bool,
) -> Result<JoinHandle<()>> {
    let rx = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        let emit = |data: &[u8]| {
            if to_stderr {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(data);
                let _ = e.flush();
            } else {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data);
                let _ = o.flush();
            }
        };
        loop {
            tokio::select! {
                r = rx.readable() => {
                    if r.is_err() { return; }
                    match rx.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => emit(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                _ = done.changed() => {
                    while let Ok(n) = rx.try_read(&mut buf) {
                        if n == 0 { break; }
                        emit(&buf[..n]);
                    }
                    return;
                }
            }
        }
    }))
}

/// The local side of a running process's stdio.
pub struct Attached {
    done: watch::Sender<bool>,
    started: watch::Sender<bool>,
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
}

impl Attached {
    /// Starts copying. `stdin` (if the process has one) is fed from our stdin; at its end
    /// the FIFO is closed and the shim told with CloseIO.
    pub fn start(
        fifos: &Fifos,
        client: &Client,
        container: &str,
        exec_id: &str,
    ) -> Result<Attached> {
        let (done, rx) = watch::channel(false);
        let (started, mut started_rx) = watch::channel(false);
        let mut outputs = vec![copy_out(&fifos.stdout, rx.clone(), false)?];
        if let Some(e) = &fifos.stderr {
            outputs.push(copy_out(e, rx, true)?);
        }
        let stdin = match &fifos.stdin {
            Some(p) => {
                let tx = pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .with_context(|| format!("cannot open {}", p.display()))?;
                let client = client.clone();
                let container = container.to_string();
                let exec_id = exec_id.to_string();
                Some(tokio::spawn(async move {
                    let mut input = tokio::io::stdin();
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match input.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut data = &buf[..n];
                                while !data.is_empty() {
                                    if tx.writable().await.is_err() {
                                        return;
                                    }
                                    match tx.try_write(data) {
                                        Ok(w) => data = &data[w..],
                                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                        Err(_) => return,
                                    }
                                }
                            }
                        }
                    }
                    // Not before the process started: an exec's FIFO may not be open on the
                    // shim's side yet, and a FIFO's buffered bytes vanish with its last open
                    // end; and CloseIO before Start would find no process to close.
                    if started_rx.wait_for(|s| *s).await.is_err() {
                        return;
                    }
                    drop(tx);
                    let _ = client
                        .tasks()
                        .close_io(client.req(tasks::CloseIoRequest {
                            container_id: container,
                            exec_id,
                            stdin: true,
                        }))
                        .await
                        .map_err(rpc_err);
                }))
            }
            None => None,
        };
        Ok(Attached {
            done,
            started,
            outputs,
            stdin,
        })
    }

    /// The process has started: stdin may now be closed when ours ends.
    pub fn started(&self) {
        let _ = self.started.send(true);
    }

    /// After the process exited: flush what is buffered and stop copying.
    pub async fn finish(self) {
        let _ = self.done.send(true);
        for o in self.outputs {
            let _ = o.await;
        }
        if let Some(s) = self.stdin {
            s.abort();
        }
    }
}

/// The local terminal in raw mode; restored on drop.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// Puts stdin in raw mode if it is a terminal.
    pub fn enter() -> Option<RawTerminal> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

pub fn is_terminal(fd: &impl AsRawFd) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// The local terminal's size (columns, rows), if stdout or stdin is one.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize struct.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// Sends our window size to the process now and on every SIGWINCH.
pub fn forward_resize(client: &Client, container: &str, exec_id: &str) -> JoinHandle<()> {
    let client = client.clone();
    let container = container.to_string();
    let exec_id = exec_id.to_string();
    tokio::spawn(async move {
        let mut winch =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) {
                Ok(s) => s,
                Err(_) => return,
            };
        loop {
            if let Some((w, h)) = window_size() {
                let _ = client
                    .tasks()
                    .resize_pty(client.req(tasks::ResizePtyRequest {
                        container_id: container.clone(),
                        exec_id: exec_id.clone(),
                        width: w.into(),
                        height: h.into(),
                    }))
                    .await;
            }
            if winch.recv().await.is_none() {
                return;
            }
        }
    })
}

/// Forwards SIGINT and SIGTERM (and SIGHUP, SIGQUIT) received by us to the process.
pub fn forward_signals(client: &Client, container: &str, exec_id: &str) -> JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let client = client.clone();
    let container = container.to_string();
    let exec_id = exec_id.to_string();
    tokio::spawn(async move {
        let kinds = [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
            (SignalKind::quit(), libc::SIGQUIT),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(8);
        for (kind, num) in kinds {
            let Ok(mut s) = signal(kind) else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(num).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        while let Some(sig) = rx.recv().await {
            let _ = client
                .tasks()
                .kill(client.req(tasks::KillRequest {
                    container_id: container.clone(),
                    exec_id: exec_id.clone(),
                    signal: sig as u32,
                    all: false,
                }))
                .await;
        }
    })
}
