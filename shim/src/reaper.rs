//! The shim's one and only reaper.
//!
//! The shim is a child subreaper: runc invocations, container inits (re-parented when
//! `runc create` exits), exec processes and binary loggers are all its children, and exactly one
//! place calls `waitpid`: here, on SIGCHLD, with `waitpid(-1, WNOHANG)` until no child is left to
//! reap. Nothing else may wait on a child, or an exit status is lost.
//!
//! Two consumers get exits:
//! - a caller that spawned a short-lived helper (runc) and awaits it: it registers the pid
//!   *while holding the reaper lock across the spawn* ([`Reaper::spawn`]), so the reaper cannot
//!   reap the child before the waiter exists;
//! - everything else goes to the monitor channel, tagged with a sequence number. The task
//!   service matches them to container processes; an exit for a pid it does not know yet (an
//!   init that died before its pid file was read) is kept and claimed later, but only by a
//!   process spawned before that exit (compare sequence numbers), so a reused pid is never
//!   mistaken for an old exit.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};

/// An exit as the reaper saw it. `status` is the exit code, or 128 + signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    /// The signal that ended the process, if one did (then `status` is 128 + it).
    pub signal: Option<i32>,
    /// Monotonic number of this exit among all exits the reaper has seen.
    pub seq: u64,
}

struct Inner {
    seq: u64,
    waiters: HashMap<u32, oneshot::Sender<Exit>>,
}

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
    monitor: mpsc::UnboundedSender<Exit>,
}

impl Reaper {
    /// Creates the reaper and the channel of exits that nobody awaits directly.
    pub fn new() -> (Reaper, mpsc::UnboundedReceiver<Exit>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let reaper = Reaper {
            inner: Arc::new(Mutex::new(Inner {
                seq: 0,
                waiters: HashMap::new(),
            })),
            monitor: tx,
        };
        (reaper, rx)
    }

    /// The sequence number of the latest exit seen. A process spawned after this call can only
    /// have exits with a larger number.
    pub fn seq(&self) -> u64 {
        self.inner.lock().unwrap().seq
    }

    /// Spawns `cmd` and subscribes to its exit before the reaper can see it.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut inner = self.inner.lock().unwrap();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(child.id(), tx);
        Ok((child, rx))
    }

    /// [`Reaper::spawn`] for a child made some other way: `spawn` runs under the reaper's lock
    /// and returns the new child's pid, which is subscribed before the lock is released.
    pub fn spawn_with(
        &self,
        spawn: impl FnOnce() -> io::Result<u32>,
    ) -> io::Result<(u32, oneshot::Receiver<Exit>)> {
        let mut inner = self.inner.lock().unwrap();
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// SIGKILLs the process group led by `pid`, a child spawned with [`Reaper::spawn`] in a
    /// group of its own, if it has not been reaped yet. Checked under the reaper's lock, so the
    /// pid cannot have been reaped and reused in between.
    pub fn kill_group_if_running(&self, pid: u32) {
        let inner = self.inner.lock().unwrap();
        if inner.waiters.contains_key(&pid)
            && let Err(e) = nix::sys::signal::killpg(
                Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
        {
            log::warn!("kill process group {pid}: {e}");
        }
    }

    /// Hands an exit back to the monitor channel, to be dispatched again (an exec's exit that
    /// was reaped before its pid was known, once the pid is known).
    pub fn redeliver(&self, exit: Exit) {
        let _ = self.monitor.send(exit);
    }

    /// Reaps every child that has exited and dispatches the exits. Call on SIGCHLD.
    pub fn reap(&self) {
        loop {
            // The lock is held across waitpid so that `spawn` cannot interleave between a reap
            // and the lookup of its waiter. WNOHANG keeps it short.
            let mut inner = self.inner.lock().unwrap();
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => Some((pid, code as u32, None)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    Some((pid, 128 + sig as u32, Some(sig as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => None,
                Err(Errno::EINTR) => None,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return;
                }
            };
            let Some((pid, status, signal)) = status else {
                continue;
            };
            inner.seq += 1;
            let exit = Exit {
                pid: pid.as_raw() as u32,
                status,
                signal,
                seq: inner.seq,
            };
            match inner.waiters.remove(&exit.pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    let _ = self.monitor.send(exit);
                }
            }
        }
    }

    /// Runs the reaper until the runtime stops: reap on every SIGCHLD.
    pub async fn run(self) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = signal(SignalKind::child())?;
        // Children may have exited before the handler was installed.
        self.reap();
        while sigchld.recv().await.is_some() {
            self.reap();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_waiters_and_monitor_both_get_exits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (reaper, mut monitor) = Reaper::new();
            tokio::spawn(reaper.clone().run());
            tokio::task::yield_now().await;

            // A waited child: its exit goes to the waiter, not to the monitor.
            let (_child, rx) = reaper
                .spawn(Command::new("sh").args(["-c", "exit 3"]))
                .unwrap();
            let exit = rx.await.unwrap();
            assert_eq!(exit.status, 3);
            let before = reaper.seq();
            assert!(exit.seq <= before);

            // An unwatched child (as a container init is): it goes to the monitor, with a
            // sequence number greater than any taken before it was spawned. The reaper, not
            // Child::wait, collects it.
            #[allow(clippy::zombie_processes)]
            let child = Command::new("sh")
                .args(["-c", "kill -TERM $$"])
                .spawn()
                .unwrap();
            let exit = monitor.recv().await.unwrap();
            assert_eq!(exit.pid, child.id());
            assert_eq!(exit.status, 128 + 15);
            assert!(exit.seq > before);
        });
    }
}
