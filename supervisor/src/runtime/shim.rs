//! One connected shim: its ttrpc client, its pid, and the signals that it died.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use protocol::Code;
use protocol::shim_ttrpc::TaskClient;
use protocol::ttrpc;
use tokio::sync::watch;

use super::bundle::{Bundle, Exit};

/// Deadline of calls that must not block (state, kill, pids, …), as containerd bounds them.
pub const SHORT: Duration = Duration::from_secs(10);
/// Deadline of calls that run runc and may be slow on a loaded machine (create, start, delete).
pub const LONG: Duration = Duration::from_secs(60);

/// A connected shim serving one task of ours.
pub struct Shim {
    pub bundle: Bundle,
    pub binary: PathBuf,
    pub client: TaskClient,
    /// The shim process (from Connect), watched for unexpected exits.
    pub pid: u32,
    /// Set once when the shim died under a registered task.
    died: watch::Sender<Option<Exit>>,
    _log: Option<LogForwarder>,
}

impl Shim {
    pub fn new(
        bundle: Bundle,
        binary: PathBuf,
        client: TaskClient,
        pid: u32,
        log: Option<LogForwarder>,
    ) -> Shim {
        Shim {
            bundle,
            binary,
            client,
            pid,
            died: watch::channel(None).0,
            _log: log,
        }
    }

    pub fn id(&self) -> &str {
        &self.bundle.id
    }

    pub fn set_died(&self, exit: Exit) {
        self.died.send_replace(Some(exit));
    }

    /// Resolves with the exit corrald recorded when the shim died.
    pub async fn died(&self) -> Exit {
        let mut rx = self.died.subscribe();
        let exit = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
        match exit {
            Some(e) => e,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }
}

/// Copies a shim's log FIFO to corrald's stderr until dropped.
pub struct LogForwarder(tokio::task::AbortHandle);

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A ttrpc context with a deadline.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

/// A ttrpc context without deadline (Wait).
pub fn ctx_forever() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// Dials a shim address as containerd does: `unix://<path>` is a file socket, anything else
/// an abstract one.
pub async fn dial(address: &str, timeout: Duration) -> Result<TaskClient, String> {
    let addr = if address.starts_with("unix://") {
        address.to_string()
    } else {
        format!("unix://@{address}")
    };
    match tokio::time::timeout(timeout, ttrpc::r#async::Client::connect(&addr)).await {
        Ok(Ok(c)) => Ok(TaskClient::new(c)),
        Ok(Err(e)) => Err(format!("dial {address}: {e}")),
        Err(_) => Err(format!("dial {address}: timed out after {timeout:?}")),
    }
}

/// A ttrpc error from a shim as a gRPC status with the shim's code and message.
pub fn status(what: &str, e: ttrpc::Error) -> tonic::Status {
    let code = Code::of_ttrpc(&e);
    let msg = match &e {
        ttrpc::Error::RpcStatus(s) => s.message.clone(),
        other => other.to_string(),
    };
    code.grpc_status(format!("{what}: {msg}"))
}

/// Resolves when process `pid` exits (pidfd). Err if it cannot be watched (already gone).
pub fn exit_of(pid: u32) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns `fd`, so it stays open exactly as long as it is registered.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?;
    Ok(async move {
        let _ = fd.readable().await;
    })
}

/// Copies what the shim writes to the bundle's `log` FIFO to corrald's stderr, as containerd
/// does. The FIFO is opened read-write so it never reports EOF while the shim restarts. It
/// must be open before the shim starts: the shim's open for writing waits for a reader.
pub fn forward_log(bundle: &Bundle) -> Option<LogForwarder> {
    let path = bundle.path.join(super::bundle::LOG);
    let rx = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(rx) => rx,
        Err(e) => {
            log::warn!("shim log {}: {e}", path.display());
            return None;
        }
    };
    // The buffer lives on the stack of whichever thread copies, only while it copies: a
    // buffer in the task would be 8 KiB of corrald's heap per task for a FIFO that is almost
    // always empty.
    let task = tokio::spawn(async move {
        use std::io::Write;
        loop {
            if rx.readable().await.is_err() {
                return;
            }
            let mut buf = [0u8; 8192];
            loop {
                match rx.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let _ = std::io::stderr().write_all(&buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
        }
    });
    Some(LogForwarder(task.abort_handle()))
}
