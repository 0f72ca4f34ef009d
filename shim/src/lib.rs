//! `containerd-shim-corral-v1`: the per-container shim of corral (runtime
//! `io.containerd.corral.v1`).
//!
//! One shim process per container (or per group of containers) owns the runc child, reaps it,
//! forwards its stdio and serves `containerd.task.v2.Task` over ttrpc to the daemon: containerd
//! 1.6 or corrald. Containers keep running while the daemon restarts; the daemon finds the
//! shim again through the `address` file in the bundle.
//!
//! ```text
//!  containerd ──exec──▶ shim start ──fork/exec──▶ shim (serve) ──runc create/start──▶ container
//!      │  ◀── address on stdout ──┘                   │  ▲ subreaper: reaps runc, the init, execs
//!      └──────────── ttrpc Task (socket) ─────────────┘  │
//!      ◀──────────── ttrpc Events/Forward ───────────────┘
//! ```
//!
//! Modules: `flags` (command line), `start`/`delete`/`serve` (the three actions), `service`
//! (Task methods), `options` (the runtime options a daemon sends), `process` (state machine),
//! `reaper`, `runc`, `io` (stdio, console), `cri_log` (the Kubernetes container log format),
//! `events` (ordered, retried publishing), `mount`, `cgroup` (Stats, OOM, the shim's own
//! cgroup), `spec` (config.json fields).

mod cgroup;
mod cri_log;
mod delete;
mod error;
mod events;
mod execfifo;
mod flags;
mod idmap;
mod io;
mod logger;
mod mount;
mod options;
mod process;
mod reaper;
mod runc;
mod serve;
mod service;
mod spec;
mod start;
mod stopped;
mod trim;
mod util;

#[cfg(any(test, feature = "fuzzing"))]
pub mod hostile;

use std::io::Write;
use std::process::ExitCode;

use flags::Action;

/// The shim's `main`: the binary is only this, so that `hostile` (the fuzz targets) can reach
/// the Task service from a library.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match flags::parse(&args, |k| std::env::var(k).ok()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-corral-v1: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match flags.action {
        Action::Version => {
            println!(
                "containerd-shim-corral-v1:\n  Runtime: io.containerd.corral.v1\n  Version: {}",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        Action::Start => start::start(&flags).map(|address| {
            // Only the address, no newline: containerd takes our whole output as the address.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(address.as_bytes());
            let _ = out.flush();
        }),
        Action::Delete => delete::delete(&flags).map(|bytes| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes);
            let _ = out.flush();
        }),
        Action::Serve => serve::serve(&flags),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-corral-v1: {e}");
            ExitCode::FAILURE
        }
    }
}

// The unit tests' hostile-input cases check the largest allocation (see `protocol::fuzzing`).
#[cfg(test)]
#[global_allocator]
static ALLOC: protocol::fuzzing::CountingAlloc = protocol::fuzzing::CountingAlloc;
