//! `ctr` invocations against a private containerd: `ctr -a <sock> -n <ns> …` with a deadline.
//!
//! Useful facts about ctr 1.6 the tests rely on (observed with containerd 1.6.20):
//! - `ctr run` (without `-d`) and `ctr tasks exec` exit with the process's exit code.
//! - `ctr tasks rm` exits 0 even for a non-zero exit status; it prints
//!   `level=warning msg="task <id> exit with non-zero exit code <n>"` on stderr instead.
//! - `ctr tasks ls` prints `TASK PID STATUS` rows, status one of CREATED/RUNNING/PAUSED/STOPPED.
//! - ctr always forwards its own stdin to the process (there is no `-i`), closing it with CloseIO
//!   at EOF.
//! - ctr 1.6 may drop the tail of a process's output: once Wait reports the exit it calls
//!   `io.Cancel()`, which in 1.6's `cio` closes the FIFOs it is still reading (a client bug, fixed
//!   later). Output that is still in the shim's pipes at that moment is lost, with any shim. Tests
//!   that check output therefore use a [`CtrSession`]: the process prints, then blocks reading a
//!   line from stdin, which the test sends only once it has received all the output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd;

/// Default deadline of one `ctr` call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `ctr` against one containerd socket and namespace.
#[derive(Clone, Debug)]
pub struct Ctr {
    address: PathBuf,
    namespace: String,
    timeout: Duration,
}

/// What one `ctr` call produced.
#[derive(Debug)]
pub struct CtrOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub timed_out: bool,
}

impl CtrOutput {
    /// Exit code, `None` if ctr was killed by a signal (e.g. on timeout).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// One-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = self.stdout_str();
        if out.len() > 2000 {
            let head: String = out.chars().take(2000).collect();
            out = format!("{head}… ({} bytes)", self.stdout.len());
        }
        format!(
            "`ctr {}` → {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            out,
            self.stderr
        )
    }
}

/// One row of `ctr tasks ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

impl Ctr {
    pub fn new(address: &Path, namespace: &str) -> Ctr {
        Ctr {
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Same socket and namespace, another deadline per call.
    pub fn with_timeout(&self, timeout: Duration) -> Ctr {
        Ctr {
            timeout,
            ..self.clone()
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `ctr -a <sock> -n <ns> <args…>`, not yet spawned (for streaming or a pty).
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace);
        for a in args {
            c.arg(a.as_ref());
        }
        cmd::die_with_parent(&mut c);
        c
    }

    /// Runs ctr with `args` and returns whatever happened (never panics on a failed command).
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> CtrOutput {
        let strs: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let out = cmd::output_with_timeout(&mut self.command(args), self.timeout)
            .unwrap_or_else(|e| panic!("cannot run `ctr {}`: {e}", strs.join(" ")));
        CtrOutput {
            args: strs,
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            timed_out: out.timed_out,
        }
    }

    /// Runs ctr and panics (with its output) unless it exits 0; returns stdout.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(out.success(), "ctr failed: {}", out.describe());
        out.stdout_str()
    }

    /// Starts ctr with `args` and piped stdin/stdout/stderr, for a dialogue with the process.
    pub fn spawn<S: AsRef<str>>(&self, args: &[S]) -> CtrSession {
        let strs: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut c = self.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `ctr {}`: {e}", strs.join(" ")));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || pump(out, Stream::Out, tx));
        std::thread::spawn(move || pump(err, Stream::Err, tx2));
        CtrSession {
            args: strs,
            stdin: child.stdin.take(),
            child: Some(child),
            rx,
            stdout: Vec::new(),
            stderr: Vec::new(),
            open_streams: 2,
            timeout: self.timeout,
        }
    }

    /// Rows of `ctr tasks ls`.
    /// The `ctr images check` row of image `name`; panics if there is none.
    pub fn images_check_row(&self, name: &str) -> String {
        let check = self.ok(&["images", "check"]);
        check
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `images check` row for {name}: {check}"))
            .to_string()
    }

    /// Asserts `ctr snapshots ls` holds `chain` committed, each key on the one before.
    pub fn assert_snapshot_chain(&self, chain: &[String]) {
        let ls = self.ok(&["snapshots", "ls"]);
        for (i, id) in chain.iter().enumerate() {
            let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
            let found = ls.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [k, kind] => k == id && parent.is_empty() && *kind == "Committed",
                    [k, p, kind] => k == id && *p == parent && *kind == "Committed",
                    _ => false,
                }
            });
            assert!(found, "no committed snapshot {id} on {parent:?}:\n{ls}");
        }
    }

    pub fn tasks(&self) -> Vec<TaskRow> {
        parse_tasks_ls(&self.ok(&["tasks", "ls"]))
    }

    /// Row of `ctr tasks ls` for `id`, if listed.
    pub fn task(&self, id: &str) -> Option<TaskRow> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// Polls `ctr tasks ls` until task `id` has `status` (e.g. `STOPPED`); panics after `timeout`.
    pub fn wait_task_status(&self, id: &str, status: &str, timeout: Duration) -> TaskRow {
        let mut last = None;
        let found = crate::try_wait_until(timeout, || {
            last = self.task(id);
            last.clone().filter(|t| t.status == status)
        });
        found.unwrap_or_else(|| {
            panic!("task {id} did not reach {status} within {timeout:?}; last seen: {last:?}")
        })
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Forwards chunks of `r` to `tx`; an empty chunk marks the end.
fn pump(mut r: impl Read, which: Stream, tx: mpsc::Sender<(Stream, Vec<u8>)>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((which, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send((which, Vec::new()));
}

/// A running ctr whose stdout/stderr are collected as they come and whose stdin the test writes.
pub struct CtrSession {
    args: Vec<String>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<(Stream, Vec<u8>)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open_streams: u32,
    timeout: Duration,
}

impl CtrSession {
    /// Waits until `done(stdout, stderr)` holds for the output received so far; panics after
    /// `timeout` with what was received.
    pub fn wait_output(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.stdout, &self.stderr) {
            if self.open_streams == 0 || !self.receive(deadline) {
                panic!(
                    "`ctr {}`: no {what} after {timeout:?}; got {} bytes of stdout (ends {:?}), \
                     stderr: {}",
                    self.args.join(" "),
                    self.stdout.len(),
                    String::from_utf8_lossy(&self.stdout[self.stdout.len().saturating_sub(200)..]),
                    String::from_utf8_lossy(&self.stderr)
                );
            }
        }
    }

    /// Writes `line` and a newline to ctr's stdin, then closes it.
    pub fn send_line(&mut self, line: &str) {
        let mut stdin = self.stdin.take().expect("stdin already closed");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to ctr's stdin");
    }

    /// Closes stdin, waits for ctr to exit (SIGKILL after the Ctr's timeout) and for the end of
    /// its output.
    pub fn finish(mut self) -> CtrOutput {
        self.stdin.take();
        let child = self.child.take().unwrap();
        let (status, timed_out) =
            crate::cmd::wait_with_timeout(child, self.timeout).expect("wait for ctr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.open_streams > 0 && self.receive(deadline) {}
        CtrOutput {
            args: std::mem::take(&mut self.args),
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            timed_out,
        }
    }

    /// Receives one chunk; false if `deadline` passed first.
    fn receive(&mut self, deadline: Instant) -> bool {
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok((_, chunk)) if chunk.is_empty() => self.open_streams -= 1,
            Ok((Stream::Out, chunk)) => self.stdout.extend_from_slice(&chunk),
            Ok((Stream::Err, chunk)) => self.stderr.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => self.open_streams = 0,
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
        }
        true
    }
}

impl Drop for CtrSession {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parses `ctr tasks ls` output (header line, then `TASK PID STATUS` columns).
pub fn parse_tasks_ls(text: &str) -> Vec<TaskRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let id = cols.next()?.to_string();
            let pid = cols.next()?.parse().ok()?;
            let status = cols.next()?.to_string();
            Some(TaskRow { id, pid, status })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tasks_ls() {
        let text = "TASK    PID     STATUS    \nd1      7656    RUNNING\nx       0       STOPPED\n";
        assert_eq!(
            parse_tasks_ls(text),
            vec![
                TaskRow {
                    id: "d1".into(),
                    pid: 7656,
                    status: "RUNNING".into()
                },
                TaskRow {
                    id: "x".into(),
                    pid: 0,
                    status: "STOPPED".into()
                },
            ]
        );
        assert!(parse_tasks_ls("TASK    PID    STATUS    \n").is_empty());
    }
}
