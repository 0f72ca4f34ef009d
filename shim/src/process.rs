//! The state of container processes (the init and its execs) and their exits.
//!
//! ```text
//!            Create/Exec           Start               exit (reaper)
//!   (none) ──────────────▶ Created ─────▶ Running ───────────────────▶ Stopped ──Delete──▶ (gone)
//!                             │            │  ▲ Pause/Resume                ▲
//!                             │            ▼  │                            │
//!                             │          Paused ───────── exit ─────────────┘
//!                             └──────────── Delete (runc delete --force) ──▶ (gone)
//! ```
//!
//! The exit status is kept until Delete, so Wait and State answer after the fact, also for a
//! client that reconnects after a daemon restart.

use protobuf::well_known_types::timestamp::Timestamp;
use protocol::task::Status;
use tokio::sync::watch;

use crate::io::{ProcessIo, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exited {
    pub status: u32,
    pub at: Timestamp,
}

pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub pid: u32,
    pub status: Status,
    pub exited: watch::Sender<Option<Exited>>,
    pub stdio: StdioPaths,
    pub io: Option<ProcessIo>,
    /// For execs: the OCI Process JSON to run at Start.
    pub spec: Vec<u8>,
    /// Start is in flight: an exit seen meanwhile must wait for the start event.
    pub starting: bool,
    pub exit_deferred: bool,
    /// Reaper sequence number before the process was spawned; only later exits can be its.
    pub spawn_seq: u64,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: Status::CREATED,
            exited: watch::channel(None).0,
            stdio,
            io: None,
            spec: Vec::new(),
            starting: false,
            exit_deferred: false,
            spawn_seq: 0,
        }
    }

    pub fn exit(&self) -> Option<Exited> {
        self.exited.borrow().clone()
    }

    /// Records the exit and wakes every Wait. Returns false if it had already exited.
    pub fn set_exited(&mut self, status: u32, at: Timestamp) -> bool {
        if self.exit().is_some() {
            return false;
        }
        self.status = Status::STOPPED;
        self.exited.send_replace(Some(Exited { status, at }));
        true
    }

    pub fn is_running(&self) -> bool {
        matches!(
            self.status,
            Status::RUNNING | Status::PAUSED | Status::PAUSING
        )
    }
}

/// containerd's words for a status, used in error messages.
pub fn status_word(s: Status) -> &'static str {
    match s {
        Status::CREATED => "created",
        Status::RUNNING => "running",
        Status::STOPPED => "stopped",
        Status::PAUSED => "paused",
        Status::PAUSING => "pausing",
        Status::UNKNOWN => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util;

    #[test]
    fn exit_is_recorded_once_and_wakes_waiters() {
        let mut p = Process::new("", StdioPaths::default());
        assert_eq!(p.status, Status::CREATED);
        let mut rx = p.exited.subscribe();
        p.status = Status::RUNNING;
        assert!(p.is_running());
        assert!(p.set_exited(137, util::now()));
        assert!(
            !p.set_exited(0, util::now()),
            "second exit must not overwrite the first"
        );
        assert_eq!(p.status, Status::STOPPED);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_ref().unwrap().status, 137);
    }
}
