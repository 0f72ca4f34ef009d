//! Running a child process with a deadline, capturing its output.
//!
//! `std::process::Command::output` has no timeout; a hung `ctr` would hang the whole suite. Here
//! stdout and stderr are drained by two threads (so a chatty child never blocks on a full pipe),
//! a third thread waits for the exit, and the caller waits on a channel with a deadline. On
//! timeout the child gets SIGKILL and the result says so.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Result of [`output_with_timeout`].
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when the deadline passed and the child was killed.
    pub timed_out: bool,
}

/// Makes the child die with us (SIGKILL when the spawning thread exits), so an aborted test run
/// leaves no `ctr`/`containerd` behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Runs `cmd` (stdin `/dev/null`) and returns its exit status and output, killing it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (status, timed_out) = wait_with_timeout(child, timeout)?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    })
}

/// Runs `cmd` with `input` written to its stdin (then closed) and returns its exit status and
/// output, killing it after `timeout`. The input is written by a thread of its own, so a child
/// that does not read it cannot block us.
pub fn output_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take();
    let input = input.to_vec();
    std::thread::spawn(move || {
        if let Some(mut w) = stdin {
            use std::io::Write;
            // The child may exit without reading everything (EPIPE): that is its business.
            let _ = w.write_all(&input);
        }
    });
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (status, timed_out) = wait_with_timeout(child, timeout)?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    })
}

/// Waits for `child`; after `timeout` sends SIGKILL and waits for that. Returns the status and
/// whether the deadline passed.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> io::Result<(ExitStatus, bool)> {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => Ok((status?, false)),
        Err(_) => {
            // The waiter thread has not reaped the child yet (it would have sent), so the pid
            // still names our child.
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let status = rx
                .recv()
                .map_err(|_| io::Error::other("waiter thread vanished"))??;
            Ok((status, true))
        }
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = output_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 4"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.timed_out);
    }

    #[test]
    fn feeds_stdin() {
        let out = output_with_input(
            Command::new("sh").args(["-c", "read x; echo got $x"]),
            b"hello\n",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, b"got hello\n");
        assert!(out.status.success());
    }

    #[test]
    fn kills_on_timeout() {
        let out = output_with_timeout(Command::new("sleep").arg("100"), Duration::from_millis(100))
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.status.code(), None);
    }
}
