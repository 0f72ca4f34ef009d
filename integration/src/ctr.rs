//! `ctr` invocations against a private containerd: `ctr -a <sock> -n <ns> …` with a deadline.
//!
//! Useful facts about ctr 1.6 the tests rely on (observed with containerd 1.6.20):
//! - `ctr run` (without `-d`) and `ctr tasks exec` exit with the process's exit code.
//! - `ctr tasks rm` exits 0 even for a non-zero exit status; it prints
//!   `level=warning msg="task <id> exit with non-zero exit code <n>"` on stderr instead.
//! - `ctr tasks ls` prints `TASK PID STATUS` rows, status one of CREATED/RUNNING/PAUSED/STOPPED.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

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

    /// Rows of `ctr tasks ls`.
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
