//! Running a command (typically `ctr run -t` / `ctr tasks exec -t`) under a pseudo-terminal.
//!
//! ctr only allocates a terminal for the container if its own stdin is a terminal, so the tests
//! give it one: a fresh pty pair, the slave as stdin/stdout/stderr and controlling terminal of a
//! new session, the master read by us until the slave side is gone (EIO).
//!
//! Both pty fds are opened `O_CLOEXEC`: tests run in parallel threads, and a pty fd inherited by
//! a concurrently spawned long-lived child (containerd) would keep the slave open forever.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd;

/// Result of [`run_in_pty`].
#[derive(Debug)]
pub struct PtyOutput {
    pub status: ExitStatus,
    /// Everything the command wrote to its terminal.
    pub output: Vec<u8>,
    /// True when the command or the terminal did not finish before the deadline.
    pub timed_out: bool,
}

impl PtyOutput {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// A pty pair: (master, slave).
fn open_pty(rows: u16, cols: u16) -> io::Result<(File, File)> {
    // SAFETY: plain libc calls on fds we own; ptsname_r writes into our buffer.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if libc::ioctl(m, libc::TIOCSWINSZ, &ws) != 0 {
            return Err(io::Error::last_os_error());
        }
        let s = libc::open(
            CStr::from_ptr(name.as_ptr()).as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((File::from(master), File::from_raw_fd(s)))
    }
}

/// A command running on a pseudo-terminal that the test can read and type into.
pub struct PtySession {
    child: Option<Child>,
    master: File,
    rx: mpsc::Receiver<Option<Vec<u8>>>,
    output: Vec<u8>,
    eof: bool,
}

impl PtySession {
    /// Starts `cmd` with a new 24×80 pseudo-terminal as its stdin/stdout/stderr and controlling
    /// terminal.
    pub fn spawn(mut cmd: Command) -> io::Result<PtySession> {
        let (master, slave) = open_pty(24, 80)?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the slave after the dup2s.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // Our copies of the slave live in `cmd`; close them so EIO marks the child's exit.
        drop(cmd);

        let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
        let mut reader = master.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Some(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // EIO: every slave fd is closed.
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        });
        Ok(PtySession {
            child: Some(child),
            master,
            rx,
            output: Vec::new(),
            eof: false,
        })
    }

    /// Everything read from the terminal so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Reads until the output so far contains `needle`; false on timeout or end of output.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.text().contains(needle) {
                return true;
            }
            if self.eof || !self.read_some(deadline) {
                return self.text().contains(needle);
            }
        }
    }

    /// Types `bytes` into the terminal.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.master.write_all(bytes)
    }

    /// Changes the terminal's size, as a terminal window does; the kernel tells the command's
    /// foreground process group with SIGWINCH.
    pub fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the command has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for the command to exit and for its terminal to close; the command is killed if it
    /// has not exited within `timeout`.
    pub fn finish(mut self, timeout: Duration) -> io::Result<PtyOutput> {
        let deadline = Instant::now() + timeout;
        let child = self.child.take().expect("finish called once");
        let (status, mut timed_out) =
            cmd::wait_with_timeout(child, deadline.saturating_duration_since(Instant::now()))?;
        let drain_deadline = deadline.max(Instant::now() + Duration::from_secs(2));
        while !self.eof {
            if !self.read_some(drain_deadline) {
                timed_out = true;
                break;
            }
        }
        Ok(PtyOutput {
            status,
            output: std::mem::take(&mut self.output),
            timed_out,
        })
    }

    /// Receives one chunk (or the end); false if `deadline` passed first.
    fn read_some(&mut self, deadline: Instant) -> bool {
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Some(chunk)) => self.output.extend_from_slice(&chunk),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => self.eof = true,
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
        }
        true
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` on a new pseudo-terminal (see [`PtySession::spawn`]) without typing anything, and
/// returns what it wrote there. `cmd` is killed after `timeout`.
pub fn run_in_pty(cmd: Command, timeout: Duration) -> io::Result<PtyOutput> {
    PtySession::spawn(cmd)?.finish(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_sees_a_terminal() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "tty; test -t 0 && echo interactive; stty size; exit 2",
        ]);
        let out = run_in_pty(c, Duration::from_secs(20)).unwrap();
        let text = out.text();
        assert!(!out.timed_out, "{text}");
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("/dev/pts/"), "{text}");
        assert!(text.contains("interactive"), "{text}");
        assert!(text.contains("24 80"), "{text}");
    }

    #[test]
    fn session_reads_and_types() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo ready; read x; test \"$x\" = hello && exit 7; exit 1",
        ]);
        let mut s = PtySession::spawn(c).unwrap();
        assert!(s.expect("ready", Duration::from_secs(20)), "{}", s.text());
        s.send(b"hello\n").unwrap();
        let out = s.finish(Duration::from_secs(20)).unwrap();
        assert_eq!(out.status.code(), Some(7), "{}", out.text());
    }
}
