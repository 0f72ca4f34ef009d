//! The runc command line, as the shim drives it.
//!
//! Every call carries `--root <root> --log <bundle>/log.json --log-format json`. runc is spawned
//! through the [`Reaper`] and its exit is observed there, never by a second `wait`. When runc
//! fails, the error carries runc's own message from the JSON log (the last `"level":"error"`
//! entry written by this call), not a scraped stderr.
//!
//! Every call is bounded: a runc that hangs (a stuck cgroup, a wedged hook, a broken runtime
//! wrapper) must not hang the task call, the shim's state or its caller for good. The bound is
//! [`configured_timeout`] (60 s, or `CORRAL_RUNC_TIMEOUT`), shortened to answer before the
//! ttrpc request's own deadline ([`with_request_deadline`]). At the bound, runc's whole process
//! group (runc and any `runc init` it forked) gets SIGKILL, and the call fails with
//! DeadlineExceeded naming the runc subcommand.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::execfifo::ExecFifo;
use crate::process::Exited;
use crate::reaper::Reaper;
use protocol::Code;

/// Bound of one runc call when nothing else says: runc does its work in well under a second;
/// a minute covers a loaded machine and slow hooks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Margin kept before a request's deadline, for the shim's answer to reach its caller.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// The bound of a runc call: `CORRAL_RUNC_TIMEOUT` in the shim's environment (inherited from
/// the daemon; seconds, or with an `ms`/`s` suffix), else [`DEFAULT_TIMEOUT`]. A value that
/// does not parse is reported once and ignored.
pub fn configured_timeout() -> Duration {
    static TIMEOUT: OnceLock<Duration> = OnceLock::new();
    *TIMEOUT.get_or_init(|| match std::env::var("CORRAL_RUNC_TIMEOUT") {
        Ok(v) => parse_timeout(&v).unwrap_or_else(|| {
            log::warn!("CORRAL_RUNC_TIMEOUT={v:?} is not a duration (e.g. 30, 30s, 500ms): using {DEFAULT_TIMEOUT:?}");
            DEFAULT_TIMEOUT
        }),
        Err(_) => DEFAULT_TIMEOUT,
    })
}

fn parse_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Some(ms) = v.strip_suffix("ms") {
        Duration::from_millis(ms.trim().parse().ok()?)
    } else {
        Duration::try_from_secs_f64(v.strip_suffix('s').unwrap_or(v).trim().parse().ok()?).ok()?
    };
    (!d.is_zero()).then_some(d)
}

tokio::task_local! {
    /// The deadline of the ttrpc request being served, when it has one.
    static REQUEST_DEADLINE: Option<Instant>;
}

/// Runs `fut` with the deadline of a request whose ttrpc `timeout_nano` is `timeout_nano` (0:
/// none): runc calls made inside are bounded to answer before it.
pub async fn with_request_deadline<F: std::future::Future>(timeout_nano: i64, fut: F) -> F::Output {
    let deadline =
        (timeout_nano > 0).then(|| Instant::now() + Duration::from_nanos(timeout_nano as u64));
    REQUEST_DEADLINE.scope(deadline, fut).await
}

/// The bound of a runc call starting now: the configured one, or less to answer before the
/// request's deadline (never below a tenth of a second: runc gets a chance to answer).
fn call_timeout() -> Duration {
    let configured = configured_timeout();
    match REQUEST_DEADLINE.try_with(|d| *d).ok().flatten() {
        Some(deadline) => configured.min(
            deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(ANSWER_MARGIN)
                .max(Duration::from_millis(100)),
        ),
        None => configured,
    }
}

/// Where and how to run runc for one container.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: String,
    /// `--root`: runc's state directory, `<options.root or /run/corral/runc>/<namespace>`.
    pub root: PathBuf,
    pub log: PathBuf,
    pub systemd_cgroup: bool,
}

/// The standard streams given to the process runc starts.
#[derive(Default)]
pub struct ProcStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Options of `runc create` and `runc exec`.
pub struct CreateOpts<'a> {
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

impl Runc {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        // Inherited from a daemon run by systemd (containerd keeps it), NOTIFY_SOCKET makes
        // runc pass the socket into the container and `runc start` wait until the container
        // reports ready, which an ordinary container never does. go-runc drops it too.
        cmd.env_remove("NOTIFY_SOCKET");
        cmd.arg("--root").arg(&self.root);
        cmd.arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd
    }

    /// Runs runc with `args`; returns its stdout. `input` goes to its stdin.
    async fn run(
        &self,
        reaper: &Reaper,
        args: &[&str],
        stdio: Option<ProcStdio>,
        input: Option<Vec<u8>>,
        capture: bool,
    ) -> Result<Vec<u8>> {
        let mut cmd = self.command();
        cmd.args(args);
        // A group of its own, so that a runc killed at its bound takes its children along.
        cmd.process_group(0);
        let subcommand = args.first().copied().unwrap_or("");
        let timeout = call_timeout();
        let log_offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        match stdio {
            Some(s) => {
                cmd.stdin(s.stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stdout(s.stdout.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stderr(s.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
            }
            None => {
                cmd.stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
                cmd.stdout(if capture {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
                cmd.stderr(Stdio::piped());
            }
        }
        let (mut child, exited) = reaper.spawn(&mut cmd).map_err(|e| {
            Error::new(Code::Unknown, format!("failed to run {}: {e}", self.binary))
        })?;
        // The command holds the child's ends of the process pipes: drop them now, or the
        // process's output never reaches EOF.
        drop(cmd);
        if let (Some(mut stdin), Some(data)) = (child.stdin.take(), input) {
            // Small JSON documents: far below a pipe buffer, so this cannot block for long.
            use std::io::Write;
            let _ = stdin.write_all(&data);
        }
        let pid = child.id();
        let stdout = child.stdout.take().map(read_pipe);
        let stderr = child.stderr.take().map(read_pipe);
        let outputs = async {
            let out = match stdout {
                Some(f) => f.await,
                None => Vec::new(),
            };
            let err = match stderr {
                Some(f) => f.await,
                None => Vec::new(),
            };
            (out, err)
        };
        tokio::pin!(exited);
        // `exited` is awaited last: when the bound passes, it has not completed and can be
        // awaited again; the output readers are dropped (runc is gone, its pipes with it).
        let finished = tokio::time::timeout(timeout, async {
            let outputs = outputs.await;
            (outputs, (&mut exited).await)
        })
        .await;
        let ((out, err), exit) = match finished {
            Ok(done) => done,
            Err(_) => {
                reaper.kill_group_if_running(pid);
                let _ = exited.await;
                log::error!("runc {subcommand} timed out after {timeout:?}: killed");
                return Err(Error::new(
                    Code::DeadlineExceeded,
                    format!(
                        "runc {subcommand} did not finish within {timeout:?} and was killed ({})",
                        self.binary
                    ),
                ));
            }
        };
        let exit = exit.map_err(|_| Error::new(Code::Internal, "reaper stopped"))?;
        if exit.status != 0 {
            let msg = self
                .log_error_since(log_offset)
                .or_else(|| {
                    let s = String::from_utf8_lossy(&err).trim().to_string();
                    (!s.is_empty()).then_some(s)
                })
                .unwrap_or_else(|| match exit.signal {
                    Some(sig) => format!("{} was killed by signal {sig}", self.binary),
                    None => format!("{} exited with status {}", self.binary, exit.status),
                });
            return Err(Error::runc(subcommand, msg));
        }
        Ok(out)
    }

    /// The message of the last error runc logged after `offset` in its JSON log.
    fn log_error_since(&self, offset: u64) -> Option<String> {
        let mut f = fs::File::open(&self.log).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut text = String::new();
        f.take(1 << 20).read_to_string(&mut text).ok()?;
        text.lines().rev().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v.get("level")?.as_str()? == "error")
                .then(|| v.get("msg")?.as_str().map(str::to_string))?
        })
    }

    pub async fn create(
        &self,
        reaper: &Reaper,
        id: &str,
        bundle: &Path,
        opts: &CreateOpts<'_>,
        stdio: ProcStdio,
    ) -> Result<()> {
        let bundle = bundle.to_string_lossy();
        let pid_file = opts.pid_file.to_string_lossy();
        let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pid_file];
        let console = opts
            .console_socket
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(c) = &console {
            args.extend(["--console-socket", c]);
        }
        if opts.no_pivot {
            args.push("--no-pivot");
        }
        if opts.no_new_keyring {
            args.push("--no-new-keyring");
        }
        args.push(id);
        self.run(reaper, &args, Some(stdio), None, false)
            .await
            .map(drop)
    }

    pub async fn exec(
        &self,
        reaper: &Reaper,
        id: &str,
        process_json: &Path,
        opts: &CreateOpts<'_>,
        stdio: ProcStdio,
    ) -> Result<()> {
        let process = process_json.to_string_lossy();
        let pid_file = opts.pid_file.to_string_lossy();
        let mut args = vec![
            "exec",
            "--process",
            &process,
            "--detach",
            "--pid-file",
            &pid_file,
        ];
        let console = opts
            .console_socket
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(c) = &console {
            args.extend(["--console-socket", c]);
        }
        args.push(id);
        self.run(reaper, &args, Some(stdio), None, false)
            .await
            .map(drop)
    }

    /// Starts the created container `id` whose init is `pid` (`exited`: its exit as the shim
    /// records it). When the runtime left its exec fifo (runc does), the shim releases the init
    /// itself, as `runc start` would (see [`crate::execfifo`]), bounded as a runc call is;
    /// otherwise `<runtime> start` does.
    pub async fn start(
        &self,
        reaper: &Reaper,
        id: &str,
        pid: u32,
        exited: watch::Receiver<Option<Exited>>,
    ) -> Result<()> {
        let fifo =
            ExecFifo::open(&self.root, id).map_err(|e| Error::runc("start", e.to_string()))?;
        let Some(fifo) = fifo else {
            return self
                .run(reaper, &["start", id], None, None, false)
                .await
                .map(drop);
        };
        let timeout = call_timeout();
        match tokio::time::timeout(timeout, fifo.release(pid, exited)).await {
            Ok(res) => res.map_err(|e| Error::runc("start", e.to_string())),
            Err(_) => Err(Error::new(
                Code::DeadlineExceeded,
                format!(
                    "runc start did not finish within {timeout:?}: the init of {id} (pid {pid}) \
                     never opened its exec fifo"
                ),
            )),
        }
    }

    pub async fn kill(&self, reaper: &Reaper, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, &sig]);
        self.run(reaper, &args, None, None, false).await.map(drop)
    }

    /// Deletes container `id`; `force` when its init may still run (a created container).
    /// A stopped container whose deletion is only its cgroups and runc's directory for it is
    /// deleted here without running runc (see [`crate::stopped`]).
    pub async fn delete(&self, reaper: &Reaper, id: &str, force: bool) -> Result<()> {
        if !force && !self.systemd_cgroup {
            match crate::stopped::delete_stopped(&self.root, id).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // runc gets its chance, and reports what is wrong in its own words.
                Err(e) => log::warn!("delete {id} without runc: {e}"),
            }
        }
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        self.run(reaper, args, None, None, false).await.map(drop)
    }

    pub async fn pause(&self, reaper: &Reaper, id: &str) -> Result<()> {
        self.run(reaper, &["pause", id], None, None, false)
            .await
            .map(drop)
    }

    pub async fn resume(&self, reaper: &Reaper, id: &str) -> Result<()> {
        self.run(reaper, &["resume", id], None, None, false)
            .await
            .map(drop)
    }

    pub async fn ps(&self, reaper: &Reaper, id: &str) -> Result<Vec<u32>> {
        let out = self
            .run(reaper, &["ps", "--format", "json", id], None, None, true)
            .await?;
        let pids: Option<Vec<u32>> = serde_json::from_slice(&out).map_err(|e| {
            Error::new(Code::Internal, format!("runc ps printed invalid JSON: {e}"))
        })?;
        Ok(pids.unwrap_or_default())
    }

    pub async fn update(&self, reaper: &Reaper, id: &str, resources_json: Vec<u8>) -> Result<()> {
        self.run(
            reaper,
            &["update", "--resources", "-", id],
            None,
            Some(resources_json),
            false,
        )
        .await
        .map(drop)
    }
}

/// Reads a runc pipe to its end without blocking the runtime.
async fn read_pipe(p: impl Into<OwnedFd>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(p.into()) {
        Ok(mut rx) => {
            let _ = rx.read_to_end(&mut out).await;
        }
        Err(e) => log::warn!("read runc output: {e}"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("750ms"), Some(Duration::from_millis(750)));
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("soon"), None);
        assert_eq!(parse_timeout("-1"), None);
    }
}
