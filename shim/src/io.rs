//! Standard streams of container processes.
//!
//! The client (ctr, CRI) names where the streams go; the shim owns the pipes to the process and
//! copies between them, so the process never blocks or dies of SIGPIPE because the client went
//! away or the daemon restarted (shared/protocol.md §1.7).
//!
//! - A path without scheme, or `fifo://path`: a FIFO the client created. Outputs are opened
//!   read-write: being a reader ourselves, a write never fails with EPIPE and the open never
//!   waits for the client. If nobody reads for [`STALL`], the oldest buffered bytes are
//!   dropped so the process keeps running (containerd's shim blocks the container instead).
//!   stdin is opened for reading plus a kept write end, so the client closing its side is not
//!   EOF until `CloseIO` drops the kept end.
//! - `file:///abs/path`: stdout and stderr are appended to that file, given to the process
//!   directly (no copy).
//! - `file:///abs/path?max-size=<bytes>` (corral's extension, used by `corral run`): the shim
//!   pipes stdout and stderr and appends their raw bytes to the file itself, so it can cap it:
//!   a write that would take the file past `max-size` first renames it to `path.1` (replacing
//!   the previous one) and starts a new file. At most about 2 × max-size is kept.
//! - `file:///abs/path?format=cri` (what corral-cri gives as both stdout and stderr): the
//!   shim pipes both streams and writes them to the file in the Kubernetes CRI log format
//!   itself (see [`crate::cri_log`]), so logging needs no daemon. The file is created 0640 if
//!   missing; its directory must exist. kubelet rotates it (rename, then a reopen through
//!   `Task.Update`); `max-size` cannot be combined with it.
//! - `binary:///abs/path?k=v`: a logger process gets the read ends of the process's pipes as
//!   fds 3 and 4 and closes fd 5 when it is ready.
//! - A terminal: runc hands us the pty master through a console socket; stdin is copied to
//!   it, its output to stdout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cri_log::{CriLogFile, LineSplitter, Stream};
use crate::runc::ProcStdio;

/// How long an output FIFO may stay full before we drop its oldest bytes.
const STALL: Duration = Duration::from_secs(2);
const BUF: usize = 32 * 1024;

/// The stdio a client asked for.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's side of a process's streams.
#[derive(Default)]
pub struct ProcessIo {
    outputs: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    stdin_keeper: Option<OwnedFd>,
    console: Option<Arc<OwnedFd>>,
    /// Closed when every output copier has ended (each holds a sender).
    drained: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    /// The CRI log file the output goes to, for a reopen.
    cri_log: Option<CriLogFile>,
}

enum Dest {
    Fifo(PathBuf),
    File(PathBuf),
    /// A file the shim writes itself, rotated at `max` bytes.
    CappedFile(PathBuf, u64),
    /// A file the shim writes itself in the Kubernetes CRI log format.
    CriFile(PathBuf),
    Binary(PathBuf, Vec<String>),
}

fn parse_dest(uri: &str) -> io::Result<Dest> {
    if let Some(rest) = uri.strip_prefix("fifo://") {
        return Ok(Dest::Fifo(rest.into()));
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        let Some((path, query)) = rest.split_once('?') else {
            return Ok(Dest::File(rest.into()));
        };
        let mut max = None;
        let mut cri = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("format", "cri")) => cri = true,
                Some(("format", v)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("unsupported log format {v:?} in {uri:?}: only \"cri\" is known"),
                    ));
                }
                Some(("max-size", v)) => {
                    max = Some(v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "invalid max-size {v:?} in {uri:?}: want a positive byte count"
                            ),
                        )
                    })?)
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("unsupported file log option {pair:?} in {uri:?}"),
                    ));
                }
            }
        }
        let path = PathBuf::from(percent_decode(path));
        return match (cri, max) {
            (true, Some(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "max-size cannot be combined with format=cri in {uri:?}: kubelet rotates \
                     CRI logs itself"
                ),
            )),
            (true, None) if !path.is_absolute() => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the CRI log path in {uri:?} is not absolute: want file:///abs/path"),
            )),
            (true, None) => Ok(Dest::CriFile(path)),
            (false, Some(max)) => Ok(Dest::CappedFile(path, max)),
            (false, None) => Ok(Dest::File(path)),
        };
    }
    if let Some(rest) = uri.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(percent_decode(k));
            if !v.is_empty() {
                args.push(percent_decode(v));
            }
        }
        return Ok(Dest::Binary(path.into(), args));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported stdio scheme {scheme:?} in {uri:?}"),
        ));
    }
    Ok(Dest::Fifo(uri.into()))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((r, w))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn open_fifo(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(flags == libc::O_RDONLY || flags == libc::O_RDWR)
        .write(flags == libc::O_WRONLY || flags == libc::O_RDWR)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    Ok(f.into())
}

fn chown(fd: &OwnedFd, uid: u32, gid: u32) {
    if uid != 0 || gid != 0 {
        let _ = nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into()));
    }
}

/// Everything needed to wire a process's streams.
pub struct IoSetup<'a> {
    pub paths: &'a StdioPaths,
    pub container_id: &'a str,
    pub namespace: &'a str,
    pub io_uid: u32,
    pub io_gid: u32,
}

impl ProcessIo {
    /// Opens the client's destinations and creates the process's pipes. Returns the ends to
    /// hand to runc; copying starts at once, so output written before `runc start` is kept.
    pub async fn open(s: &IoSetup<'_>) -> io::Result<(ProcStdio, ProcessIo)> {
        let mut io = ProcessIo::default();
        let mut child = ProcStdio::default();
        let p = s.paths;
        if !p.stdin.is_empty() {
            let fifo = p.stdin.strip_prefix("fifo://").unwrap_or(&p.stdin);
            let reader = open_fifo(Path::new(fifo), libc::O_RDONLY)?;
            // Kept so that the client closing its writer is not EOF; dropped by CloseIO.
            io.stdin_keeper = Some(open_fifo(Path::new(fifo), libc::O_WRONLY)?);
            if !p.terminal {
                let (r, w) = pipe()?;
                chown(&r, s.io_uid, s.io_gid);
                set_nonblocking(&w)?;
                child.stdin = Some(r);
                io.stdin = Some(tokio::spawn(copy_stdin(reader, w)));
            } else {
                // Copied into the console once runc hands it over (see `attach_console`).
                io.stdin = Some(tokio::spawn(park_fd(reader)));
            }
        }
        let stdout = (!p.stdout.is_empty())
            .then(|| parse_dest(&p.stdout))
            .transpose()?;
        if p.terminal {
            // The console's output is copied once runc hands it over, but a CRI log is opened
            // now, so that a bad path fails Create before runc runs.
            if let Some(Dest::CriFile(path)) = stdout {
                io.cri_log = Some(CriLogFile::open(path)?);
            }
            return Ok((child, io));
        }
        let stderr = (!p.stderr.is_empty())
            .then(|| parse_dest(&p.stderr))
            .transpose()?;
        let cri =
            matches!(stdout, Some(Dest::CriFile(_))) || matches!(stderr, Some(Dest::CriFile(_)));
        if cri && !p.stdout.is_empty() && !p.stderr.is_empty() && p.stdout != p.stderr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "stdout {:?} and stderr {:?} differ: a CRI log takes both streams, give \
                     the same URI for both",
                    p.stdout, p.stderr
                ),
            ));
        }
        match (&stdout, &stderr) {
            (Some(Dest::CriFile(path)), _) | (None, Some(Dest::CriFile(path))) => {
                let log = CriLogFile::open(path.clone())?;
                for (wanted, slot, stream) in [
                    (stdout.is_some(), &mut child.stdout, Stream::Stdout),
                    (stderr.is_some(), &mut child.stderr, Stream::Stderr),
                ] {
                    if wanted {
                        let (r, w) = pipe()?;
                        chown(&w, s.io_uid, s.io_gid);
                        set_nonblocking(&r)?;
                        *slot = Some(w);
                        let token = io.drain_token();
                        io.outputs.push(tokio::spawn(copy_to_cri_log(
                            r,
                            stream,
                            log.clone(),
                            token,
                        )));
                    }
                }
                io.cri_log = Some(log);
            }
            (Some(Dest::File(path)), _) | (None, Some(Dest::File(path))) => {
                // Both streams are appended to the one file, as containerd's shim does.
                let f = open_log_file(path)?;
                let f2 = f.try_clone()?;
                child.stdout = stdout.as_ref().map(|_| f.into());
                child.stderr = stderr.as_ref().map(|_| f2.into());
            }
            (Some(Dest::CappedFile(path, max)), _) | (None, Some(Dest::CappedFile(path, max))) => {
                let log = Arc::new(std::sync::Mutex::new(CappedLog::open(path.clone(), *max)?));
                for (wanted, slot) in [
                    (stdout.is_some(), &mut child.stdout),
                    (stderr.is_some(), &mut child.stderr),
                ] {
                    if wanted {
                        let (r, w) = pipe()?;
                        chown(&w, s.io_uid, s.io_gid);
                        set_nonblocking(&r)?;
                        *slot = Some(w);
                        let token = io.drain_token();
                        io.outputs
                            .push(tokio::spawn(copy_to_log(r, log.clone(), token)));
                    }
                }
            }
            (Some(Dest::Binary(path, args)), _) | (None, Some(Dest::Binary(path, args))) => {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                chown(&out_w, s.io_uid, s.io_gid);
                chown(&err_w, s.io_uid, s.io_gid);
                start_logger(s, path, args, out_r, err_r).await?;
                child.stdout = Some(out_w);
                child.stderr = Some(err_w);
            }
            _ => {
                for (dest, slot) in [(stdout, &mut child.stdout), (stderr, &mut child.stderr)] {
                    if let Some(Dest::Fifo(path)) = dest {
                        let fifo = open_fifo(&path, libc::O_RDWR)?;
                        let (r, w) = pipe()?;
                        chown(&w, s.io_uid, s.io_gid);
                        set_nonblocking(&r)?;
                        *slot = Some(w);
                        let token = io.drain_token();
                        io.outputs.push(tokio::spawn(copy_out(r, fifo, token)));
                    }
                }
            }
        }
        Ok((child, io))
    }

    /// Starts copying between the client's FIFOs and a pty master received from runc.
    pub fn attach_console(&mut self, master: OwnedFd, paths: &StdioPaths) -> io::Result<()> {
        set_nonblocking(&master)?;
        let master = Arc::new(master);
        if !paths.stdout.is_empty() {
            let m = dup(&master)?;
            let token = self.drain_token();
            match parse_dest(&paths.stdout)? {
                // A terminal's output to a log file: the shim copies it (there is no pipe to
                // hand over), capped or not.
                Dest::File(path) => {
                    let log = CappedLog::open(path, u64::MAX)?;
                    let log = Arc::new(std::sync::Mutex::new(log));
                    self.outputs.push(tokio::spawn(copy_to_log(m, log, token)));
                }
                Dest::CappedFile(path, max) => {
                    let log = Arc::new(std::sync::Mutex::new(CappedLog::open(path, max)?));
                    self.outputs.push(tokio::spawn(copy_to_log(m, log, token)));
                }
                // A terminal has one output: all of it is `stdout` in the CRI log.
                Dest::CriFile(path) => {
                    let log = match &self.cri_log {
                        Some(log) => log.clone(),
                        None => CriLogFile::open(path)?,
                    };
                    self.cri_log = Some(log.clone());
                    self.outputs
                        .push(tokio::spawn(copy_to_cri_log(m, Stream::Stdout, log, token)));
                }
                Dest::Fifo(path) => {
                    let fifo = open_fifo(&path, libc::O_RDWR)?;
                    self.outputs.push(tokio::spawn(copy_out(m, fifo, token)));
                }
                Dest::Binary(..) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a terminal's output cannot go to a logger binary",
                    ));
                }
            }
        }
        if let Some(parked) = self.stdin.take() {
            parked.abort();
            let path = paths.stdin.strip_prefix("fifo://").unwrap_or(&paths.stdin);
            let reader = open_fifo(Path::new(path), libc::O_RDONLY)?;
            let m = dup(&master)?;
            self.stdin = Some(tokio::spawn(copy_stdin(reader, m)));
        }
        self.console = Some(master);
        Ok(())
    }

    fn drain_token(&mut self) -> mpsc::Sender<()> {
        self.drained
            .get_or_insert_with(|| mpsc::channel(1))
            .0
            .clone()
    }

    /// A future that resolves once all output of the process has been copied (its pipes hit
    /// end of file), so that an exit is reported after the output, not before it. Taken once.
    pub fn drained(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (tx, mut rx) = self.drained.take()?;
        drop(tx);
        Some(async move { while rx.recv().await.is_some() {} })
    }

    /// The CRI log the process's output goes to, if it has one (`file://…?format=cri`).
    pub fn cri_log(&self) -> Option<CriLogFile> {
        self.cri_log.clone()
    }

    /// `CloseIO{stdin}`: drop the kept writer, so stdin ends once the client's side closes.
    pub fn close_stdin(&mut self) {
        self.stdin_keeper = None;
    }

    /// `ResizePty`: set the console's window size. A process without a console ignores it.
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let Some(master) = &self.console else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `limit` for the output copiers to drain (they end at the process pipes' EOF),
    /// then stops everything and closes the client's FIFOs.
    pub async fn close(mut self, limit: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
        let _ = tokio::time::timeout(limit, async {
            for h in outputs {
                let _ = h.await;
            }
        })
        .await;
        for a in aborts {
            a.abort();
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        for h in &self.outputs {
            h.abort();
        }
    }
}

/// Registers an fd we own exclusively with the runtime.
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, so nothing else closes or reuses it while
    // it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// The error code for a failure to set up a process's stdio: a bad URI or log path is the
/// client's mistake.
pub fn error_code(e: &io::Error) -> protocol::Code {
    match e.kind() {
        io::ErrorKind::InvalidInput => protocol::Code::InvalidArgument,
        _ => protocol::Code::Internal,
    }
}

fn open_log_file(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open log file {}: {e}", path.display())))
}

async fn start_logger(
    s: &IoSetup<'_>,
    path: &Path,
    args: &[String],
    out_r: OwnedFd,
    err_r: OwnedFd,
) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let (ready_r, ready_w) = pipe()?;
    let fds: [RawFd; 3] = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", s.container_id)
        .env("CONTAINER_NAMESPACE", s.namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move the fds out of the way first, in case one of them already is 3, 4 or 5.
            let mut tmp = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                tmp[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if tmp[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, fd) in tmp.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // The logger lives as long as the process's output; the reaper collects its exit.
    cmd.spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("start logger {}: {e}", path.display())))?;
    drop(cmd);
    drop((out_r, err_r, ready_w));
    // Wait until the logger closes its ready pipe.
    set_nonblocking(&ready_r)?;
    let ready = async_fd(ready_r)?;
    let mut buf = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), async {
        while read_some(&ready, &mut buf).await.unwrap_or(0) > 0 {}
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "logger did not become ready"))
}

async fn park_fd(fd: OwnedFd) {
    std::future::pending::<()>().await;
    drop(fd);
}

/// Reads what is there; 0 is end of file. A pty master answers EIO once the terminal closed:
/// that is end of file too.
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn try_write(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is valid for reads of data.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes to an output FIFO of which we are also a reader.
///
/// When the FIFO stays full for [`STALL`], nobody else reads it: from then on ("abandoned"),
/// a full FIFO is emptied at once so the process never waits. If the level drops while we
/// did not read (a client came back and reads), normal blocking writes resume.
struct FifoWriter {
    fd: AsyncFd<OwnedFd>,
    abandoned: bool,
    written_since_drain: usize,
    dropped: u64,
}

impl FifoWriter {
    fn new(fd: AsyncFd<OwnedFd>) -> FifoWriter {
        FifoWriter {
            fd,
            abandoned: false,
            written_since_drain: 0,
            dropped: 0,
        }
    }

    fn buffered(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc < 0 { 0 } else { n as usize }
    }

    /// Empties the FIFO (we are a reader of it): its oldest bytes are lost.
    fn drain(&mut self) {
        let mut sink = [0u8; 4096];
        loop {
            // SAFETY: sink is valid for writes of its length.
            let n =
                unsafe { libc::read(self.fd.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
            if n <= 0 {
                break;
            }
            if self.dropped == 0 {
                log::warn!("output FIFO has no reader; dropping its oldest bytes");
            }
            self.dropped += n as u64;
        }
        self.written_since_drain = 0;
    }

    async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match try_write(&self.fd, data) {
                Ok(n) => {
                    data = &data[n..];
                    self.written_since_drain += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                Err(_) => {}
            }
            if self.abandoned && self.buffered() >= self.written_since_drain {
                self.drain();
                continue;
            }
            // Someone reads (or we do not know yet): wait for room.
            self.abandoned = false;
            let wait = async {
                let mut g = self.fd.writable().await?;
                g.clear_ready();
                Ok::<_, io::Error>(())
            };
            if tokio::time::timeout(STALL, wait).await.is_err() {
                self.abandoned = true;
                self.drain();
            }
        }
        Ok(())
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match try_write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut g = fd.writable().await?;
                g.clear_ready();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Process output pipe (or pty master) → client FIFO, until the process side ends.
/// `_done` is dropped when the copy ends: see [`ProcessIo::drained`].
async fn copy_out(src: OwnedFd, fifo: OwnedFd, _done: mpsc::Sender<()>) {
    let run = async {
        let src = async_fd(src)?;
        let mut dst = FifoWriter::new(async_fd(fifo)?);
        let mut buf = vec![0u8; BUF];
        loop {
            let n = read_some(&src, &mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            dst.write_all(&buf[..n]).await?;
        }
    };
    if let Err(e) = run.await {
        log::warn!("copy process output: {e}");
    }
}

/// A log file capped at `max` bytes: see the module docs. Writes are plain blocking appends
/// to a local file (fast, and the shim's one thread has nothing better to do meanwhile).
pub struct CappedLog {
    path: PathBuf,
    max: u64,
    file: std::fs::File,
    size: u64,
}

impl CappedLog {
    pub fn open(path: PathBuf, max: u64) -> io::Result<CappedLog> {
        let file = open_log_file(&path)?;
        let size = file.metadata()?.len();
        Ok(CappedLog {
            path,
            max,
            file,
            size,
        })
    }

    /// Appends `data`, rotating first whenever the file would pass `max`. A chunk larger
    /// than what is left is split, so no file ever exceeds `max`.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        while !data.is_empty() {
            if self.size >= self.max {
                self.rotate()?;
            }
            let room = (self.max - self.size).min(data.len() as u64) as usize;
            self.file.write_all(&data[..room])?;
            self.size += room as u64;
            data = &data[room..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old).map_err(|e| {
            io::Error::new(e.kind(), format!("rotate log {}: {e}", self.path.display()))
        })?;
        self.file = open_log_file(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// One process output pipe → the capped log file it shares with the other stream, until the
/// pipe ends. The lock is held only for a synchronous append, never across an await, and the
/// shim's runtime has one thread, so the two copiers never contend.
async fn copy_to_log(src: OwnedFd, log: Arc<std::sync::Mutex<CappedLog>>, _done: mpsc::Sender<()>) {
    let run = async {
        let src = async_fd(src)?;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = read_some(&src, &mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(&buf[..n])?;
        }
    };
    if let Err(e) = run.await {
        log::warn!("copy process output to log file: {e}");
    }
}

/// How long a line without its newline waits for more output before what there is of it is
/// written as a partial record: long enough that a line written in pieces stays one record,
/// short enough that a prompt shows at once to an attached terminal.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(100);

/// How much of a read is turned into records before they are written: bounds the records
/// buffered from one read (an input of only newlines makes a record of every byte).
const CRI_SLICE: usize = 4096;

/// One process output pipe (or pty master) → the CRI log it shares with the other stream,
/// until the pipe ends; then the unfinished line, if any, as a partial record. The pipe is
/// drained whatever happens to the file (see [`CriLogFile::write`]).
async fn copy_to_cri_log(src: OwnedFd, stream: Stream, log: CriLogFile, _done: mpsc::Sender<()>) {
    let mut lines = LineSplitter::new(stream);
    let mut records = Vec::new();
    let run = async {
        let src = async_fd(src)?;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = if lines.has_pending() {
                match tokio::time::timeout(PARTIAL_LINE_WAIT, read_some(&src, &mut buf)).await {
                    Ok(n) => n?,
                    Err(_paused) => {
                        lines.flush(std::time::SystemTime::now(), &mut records);
                        log.write(&records);
                        records.clear();
                        continue;
                    }
                }
            } else {
                read_some(&src, &mut buf).await?
            };
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            let now = std::time::SystemTime::now();
            for slice in buf[..n].chunks(CRI_SLICE) {
                lines.push(slice, now, &mut records);
                if records.len() >= BUF {
                    log.write(&records);
                    records.clear();
                }
            }
            log.write(&records);
            records.clear();
        }
    };
    if let Err(e) = run.await {
        log::warn!(
            "copy process {} to CRI log {}: {e}",
            stream.name(),
            log.path().display()
        );
    }
    lines.finish(std::time::SystemTime::now(), &mut records);
    log.write(&records);
}

/// Client stdin FIFO → process stdin pipe (or pty master), until EOF or the process is gone.
async fn copy_stdin(fifo: OwnedFd, dst: OwnedFd) {
    let run = async {
        let src = async_fd(fifo)?;
        let dst = async_fd(dst)?;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = read_some(&src, &mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            write_all(&dst, &buf[..n]).await?;
        }
    };
    match run.await {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
        Err(e) => log::warn!("copy stdin: {e}"),
    }
}

/// A console socket for `runc --console-socket`: runc connects and sends the pty master.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> io::Result<ConsoleSocket> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "corral-pty-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pty.sock");
        let listener = tokio::net::UnixListener::bind(&path)?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts runc's connection and takes the fd it sends.
    pub async fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                recv_fd(stream.as_raw_fd())
            }) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut name = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "console socket message carried no file descriptor",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert!(
            matches!(parse_dest("/run/f/x-stdout").unwrap(), Dest::Fifo(p) if p == Path::new("/run/f/x-stdout"))
        );
        assert!(matches!(parse_dest("fifo:///a").unwrap(), Dest::Fifo(p) if p == Path::new("/a")));
        assert!(
            matches!(parse_dest("file:///var/log/c.log").unwrap(), Dest::File(p) if p == Path::new("/var/log/c.log"))
        );
        match parse_dest("binary:///usr/bin/logger?id=a%20b&flag").unwrap() {
            Dest::Binary(p, args) => {
                assert_eq!(p, Path::new("/usr/bin/logger"));
                assert_eq!(args, vec!["id", "a b", "flag"]);
            }
            _ => panic!("not binary"),
        }
        let e = parse_dest("tcp://1.2.3.4:5").err().unwrap();
        assert!(e.to_string().contains("tcp"));
    }

    #[test]
    fn capped_file_destinations() {
        match parse_dest("file:///var/log/c.log?max-size=1024").unwrap() {
            Dest::CappedFile(p, max) => {
                assert_eq!(p, Path::new("/var/log/c.log"));
                assert_eq!(max, 1024);
            }
            _ => panic!("not a capped file"),
        }
        for bad in [
            "file:///a?max-size=0",
            "file:///a?max-size=x",
            "file:///a?colour=red",
        ] {
            let e = parse_dest(bad).err().unwrap();
            assert!(e.to_string().contains("file:///a"), "{e}");
        }
    }

    #[test]
    fn cri_destinations() {
        assert!(matches!(
            parse_dest("file:///var/log/pods/p/c/0.log?format=cri").unwrap(),
            Dest::CriFile(p) if p == Path::new("/var/log/pods/p/c/0.log")
        ));
        assert!(matches!(
            parse_dest("file:///var/log/a%20b/0.log?format=cri").unwrap(),
            Dest::CriFile(p) if p == Path::new("/var/log/a b/0.log")
        ));
        for (bad, why) in [
            ("file:///a?format=cri&max-size=10", "max-size"),
            ("file:///a?max-size=10&format=cri", "max-size"),
            ("file:///a?format=json", "json"),
            ("file:///a?format=", "format"),
            ("file://a?format=cri", "absolute"),
        ] {
            let e = parse_dest(bad).err().unwrap();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert_eq!(error_code(&e), protocol::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(bad), "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn cri_log_setup_errors_are_the_clients() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let uri = |name: &str| format!("file://{}?format=cri", dir.path().join(name).display());
            let open = |stdout: String, stderr: String| async move {
                let paths = StdioPaths {
                    stdout,
                    stderr,
                    ..Default::default()
                };
                let setup = IoSetup {
                    paths: &paths,
                    container_id: "c",
                    namespace: "ns",
                    io_uid: 0,
                    io_gid: 0,
                };
                ProcessIo::open(&setup).await.map(drop)
            };
            let e = open(uri("a.log"), uri("b.log")).await.unwrap_err();
            assert_eq!(error_code(&e), protocol::Code::InvalidArgument);
            assert!(
                e.to_string().contains("a.log") && e.to_string().contains("b.log"),
                "{e}"
            );
            assert!(!dir.path().join("a.log").exists());
            let e = open(uri("gone/0.log"), uri("gone/0.log"))
                .await
                .unwrap_err();
            assert_eq!(error_code(&e), protocol::Code::InvalidArgument);
            assert!(e.to_string().contains("does not exist"), "{e}");
            // One stream alone is fine.
            open(String::new(), uri("err.log")).await.unwrap();
            assert!(dir.path().join("err.log").exists());
        });
    }

    /// Records of the file as (stream, tag, content), checking each line's shape.
    fn cri_records(path: &Path) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let ts = f.next().unwrap();
                assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{l:?}");
                let (stream, tag) = (f.next().unwrap(), f.next().unwrap());
                (stream.into(), tag.into(), f.next().expect("content").into())
            })
            .collect()
    }

    #[test]
    fn cri_copiers_keep_each_stream_in_order_and_follow_a_reopen() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("0.log");
            let log = CriLogFile::open(path.clone()).unwrap();
            let mut writers = Vec::new();
            let mut copiers = Vec::new();
            for stream in [Stream::Stdout, Stream::Stderr] {
                let (r, w) = pipe().unwrap();
                set_nonblocking(&r).unwrap();
                let (token, _rx) = mpsc::channel(1);
                copiers.push(tokio::spawn(copy_to_cri_log(r, stream, log.clone(), token)));
                writers.push(std::fs::File::from(w));
            }
            // Both streams at once, from two threads, in small and odd-sized writes.
            let threads: Vec<_> = writers
                .into_iter()
                .zip(["out", "err"])
                .map(|(mut f, name)| {
                    std::thread::spawn(move || {
                        use std::io::Write;
                        for i in 0..2000 {
                            writeln!(f, "{name}-{i}").unwrap();
                        }
                        f
                    })
                })
                .collect();
            let mut writers: Vec<std::fs::File> = Vec::new();
            for t in threads {
                writers.push(
                    tokio::task::spawn_blocking(move || t.join().unwrap())
                        .await
                        .unwrap(),
                );
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while cri_records(&path).len() < 4000 {
                assert!(std::time::Instant::now() < deadline, "copiers stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // kubelet's rotation: rename, then reopen; what follows lands in the new file,
            // including the rest of a line begun before the reopen.
            use std::io::Write;
            writers[0].write_all(b"half").unwrap();
            let rotated = dir.path().join("0.log.1");
            std::fs::rename(&path, &rotated).unwrap();
            log.reopen().unwrap();
            writers[0].write_all(b"-line\nno newline").unwrap();
            writers[1].write_all(b"after\n").unwrap();
            drop(writers);
            for c in copiers {
                tokio::time::timeout(Duration::from_secs(30), c)
                    .await
                    .expect("copier did not end at EOF")
                    .unwrap();
            }
            let old = cri_records(&rotated);
            for (stream, name) in [("stdout", "out"), ("stderr", "err")] {
                let got: Vec<String> = old
                    .iter()
                    .filter(|r| r.0 == stream)
                    .map(|r| {
                        assert_eq!(r.1, "F");
                        r.2.clone()
                    })
                    .collect();
                let want: Vec<String> = (0..2000).map(|i| format!("{name}-{i}")).collect();
                assert_eq!(got, want, "{stream}");
            }
            let mut new = cri_records(&path);
            new.sort();
            let r = |s: &str, t: &str, c: &str| (s.to_string(), t.to_string(), c.to_string());
            assert_eq!(
                new,
                [
                    r("stderr", "F", "after"),
                    r("stdout", "F", "half-line"),
                    r("stdout", "P", "no newline"),
                ]
            );
        });
    }

    #[test]
    fn capped_log_rotates_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.log");
        let old = dir.path().join("sub/c.log.1");
        let mut log = CappedLog::open(path.clone(), 10).unwrap();
        log.write(b"0123456").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456");
        assert!(!old.exists());
        // Crossing the cap splits the chunk: the file is filled to exactly 10, then rotated.
        log.write(b"789abcd").unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        // A chunk larger than two caps: only the last file and one old one survive.
        log.write(b"efghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"klmnopqrst");
        assert_eq!(std::fs::read(&path).unwrap(), b"uvwxyz");
        // Reopening continues the current file's size.
        drop(log);
        let mut log = CappedLog::open(path.clone(), 10).unwrap();
        log.write(b"1234").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"uvwxyz1234");
        assert_eq!(std::fs::read(&old).unwrap(), b"klmnopqrst");
        log.write(b"5").unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"uvwxyz1234");
        assert_eq!(std::fs::read(&path).unwrap(), b"5");
    }

    #[test]
    fn output_fifo_keeps_flowing_without_a_reader() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fifo = dir.path().join("out");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let dst = open_fifo(&fifo, libc::O_RDWR).unwrap();
            let (r, w) = pipe().unwrap();
            set_nonblocking(&r).unwrap();
            let (token, _rx) = tokio::sync::mpsc::channel(1);
            let copier = tokio::spawn(copy_out(r, dst, token));
            // Write far more than a FIFO holds, with nobody reading: it must not block forever.
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::from(w);
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..4 {
                    f.write_all(&chunk).unwrap();
                }
            });
            tokio::time::timeout(Duration::from_secs(30), copier)
                .await
                .expect("copier stalled")
                .unwrap();
            writer.join().unwrap();
        });
    }
}
