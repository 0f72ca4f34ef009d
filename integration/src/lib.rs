//! Harness for corral's end-to-end tests: real containerd 1.6, real `ctr`, real runc.
//!
//! What it is: helpers that start a private containerd per test ([`Containerd`]), drive it with
//! `ctr` ([`Ctr`]), watch its event stream ([`EventStream`]), run `ctr -t` under a pseudo-terminal
//! ([`pty::run_in_pty`]), build a busybox image without network ([`image`]) and check that a test
//! left nothing behind ([`Containerd::assert_no_leaks`]); and a private Docker Engine on such a
//! daemon, driven with the `docker` CLI ([`Docker`]). What it is not: product code, or a mock of
//! anything — every test talks to the real binaries.
//!
//! Every lifecycle test runs once per [`Runtime`]: `io.containerd.runc.v2` (containerd's Go shim,
//! the reference behaviour) and `io.containerd.corral.v1` (ours). [`runtime_tests!`] generates the
//! two `#[test]` functions:
//!
//! ```ignore
//! fn run_rm(rt: Runtime) {
//!     if !require_root() { return; }
//!     let ctrd = Containerd::start(rt);
//!     let id = ctrd.new_id("run");
//!     let out = ctrd.ctr_run(&["--rm"], &id, &["sh", "-c", "echo hi; exit 3"]);
//!     assert_eq!(out.code(), Some(3));
//!     ctrd.assert_no_leaks();
//! }
//! runtime_tests!(run_rm); // → runc::run_rm and corral::run_rm
//! ```
//!
//! Isolation: each [`Containerd`] has its own temp root/state/socket and a namespace unique to the
//! process and test (`t<pid>-<n>`), so tests run in parallel beside each other and beside a system
//! containerd. What cannot be made private in containerd 1.6 is shared but keyed by namespace or by
//! a hash that includes our socket path: runc state (`/run/containerd/runc/<ns>` for runc-v2,
//! `/run/corral/runc/<ns>` for ours) and shim sockets (`/run/containerd/s/<sha256>`).

pub mod api;
pub mod certs;
pub mod cgroups;
pub mod cli;
pub mod cmd;
pub mod containerd;
pub mod corrald;
pub mod cri;
pub mod critest;
pub mod ctr;
pub mod disk;
pub mod docker;
pub mod events;
pub mod grpcio;
pub mod image;
pub mod leaks;
pub mod procstat;
pub mod pty;
pub mod registry;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use api::Api;
pub use containerd::Containerd;
pub use corrald::Corrald;
pub use cri::{ContainerdCri, CriNode, CriOptions, Crictl};
pub use ctr::{Ctr, CtrOutput, TaskRow};
pub use docker::{Docker, DockerOutput};
pub use events::{Event, EventStream};
pub use image::IMAGE_REF;

/// A containerd runtime (shim) under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's own Go shim, `containerd-shim-runc-v2`: the reference.
    Runc,
    /// Our shim, `containerd-shim-corral-v1`.
    Corral,
}

impl Runtime {
    /// The runtime name given to `ctr run --runtime`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "io.containerd.runc.v2",
            Runtime::Corral => "io.containerd.corral.v1",
        }
    }

    /// File name of the shim binary containerd derives from [`Runtime::name`].
    pub fn binary_name(self) -> &'static str {
        match self {
            Runtime::Runc => "containerd-shim-runc-v2",
            Runtime::Corral => "containerd-shim-corral-v1",
        }
    }

    /// Panics with a clear message if this runtime's shim cannot be found. The runc shim is
    /// found by containerd on its `PATH`; ours must exist at [`corral_shim_path`].
    pub fn ensure_available(self) {
        if self == Runtime::Corral {
            let path = corral_shim_path();
            assert!(
                path.is_file(),
                "corral shim binary not found at {} — build it first (`cargo build -p shim`, \
                 which the Makefile does before the integration suite) or point CORRAL_SHIM_BIN \
                 at it",
                path.display()
            );
        }
    }
}

/// The daemon a test drives with `ctr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// containerd 1.6 from Debian: the reference.
    Containerd,
    /// Ours, `corrald`.
    Corrald,
}

/// What a lifecycle test runs against: a daemon and a runtime (shim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub daemon: Daemon,
    pub runtime: Runtime,
}

impl Target {
    /// corrald with our shim: corral end to end.
    pub const CORRAL: Target = Target {
        daemon: Daemon::Corrald,
        runtime: Runtime::Corral,
    };
}

impl From<Runtime> for Target {
    /// A runtime alone means containerd as the daemon.
    fn from(runtime: Runtime) -> Target {
        Target {
            daemon: Daemon::Containerd,
            runtime,
        }
    }
}

/// Path of our shim binary: `$CORRAL_SHIM_BIN`, else `<workspace>/target/debug/containerd-shim-corral-v1`.
///
/// This crate is usually built with its own `CARGO_TARGET_DIR`, so the shim is looked up in the
/// workspace's default `target/`, where the Makefile builds it.
pub fn corral_shim_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_SHIM_BIN") {
        return PathBuf::from(p);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(&manifest).to_path_buf();
    workspace
        .join("target")
        .join("debug")
        .join(Runtime::Corral.binary_name())
}

/// Returns true when the tests may use root-only facilities.
///
/// Not root: with `CORRAL_REQUIRE_ROOT=1` this panics (CI must not skip silently); otherwise it
/// prints a note and returns false so the test can return early.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("this test needs root and CORRAL_REQUIRE_ROOT=1 is set");
    }
    eprintln!("note: skipping, this test needs root (set CORRAL_REQUIRE_ROOT=1 to make it fail)");
    false
}

/// A containerd namespace unique to this process and call: `t<pid>-<n>`.
pub fn unique_namespace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns `Some`, backing off from 5 ms to 100 ms between tries; panics
/// naming `what` if `timeout` passes first.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    match try_wait_until(timeout, &mut f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Like [`wait_until`] but returns `None` on timeout.
pub fn try_wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Generates one `#[test]` per daemon and runtime for each listed function
/// `fn name(t: Target)`: `runc::name` and `corral::name` against containerd,
/// `corrald_runc::name` and `corrald_corral::name` against corrald. Filter with
/// `cargo test corrald_` and the like.
#[macro_export]
macro_rules! runtime_tests {
    ($($name:ident),* $(,)?) => {
        $crate::runtime_tests!(@mod runc, Containerd, Runc, $($name),*);
        $crate::runtime_tests!(@mod corral, Containerd, Corral, $($name),*);
        $crate::runtime_tests!(@mod corrald_runc, Corrald, Runc, $($name),*);
        $crate::runtime_tests!(@mod corrald_corral, Corrald, Corral, $($name),*);
    };
    (@mod $m:ident, $daemon:ident, $rt:ident, $($name:ident),*) => {
        mod $m {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Target {
                        daemon: $crate::Daemon::$daemon,
                        runtime: $crate::Runtime::$rt,
                    })
                }
            )*
        }
    };
}

/// Like [`runtime_tests!`], against corrald only (`corrald_runc::name`, `corrald_corral::name`).
#[macro_export]
macro_rules! corrald_runtime_tests {
    ($($name:ident),* $(,)?) => {
        $crate::runtime_tests!(@mod corrald_runc, Corrald, Runc, $($name),*);
        $crate::runtime_tests!(@mod corrald_corral, Corrald, Corral, $($name),*);
    };
}

/// Generates one `#[test]` per daemon for each listed function `fn name(d: Daemon)`:
/// `containerd::name` (the reference) and `corrald::name`. For behaviour of the daemon alone,
/// where the shim plays no part.
#[macro_export]
macro_rules! daemon_tests {
    ($($name:ident),* $(,)?) => {
        $crate::daemon_tests!(@mod containerd, Containerd, $($name),*);
        $crate::daemon_tests!(@mod corrald, Corrald, $($name),*);
    };
    (@mod $m:ident, $daemon:ident, $($name:ident),*) => {
        mod $m {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Daemon::$daemon)
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_unique_and_valid_identifiers() {
        let a = unique_namespace();
        let b = unique_namespace();
        assert_ne!(a, b);
        for ns in [a, b] {
            assert!(ns.starts_with('t'));
            assert!(
                ns.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{ns}"
            );
        }
    }

    #[test]
    fn wait_until_returns_value_or_times_out() {
        let mut n = 0;
        let v = wait_until("counter", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
        assert_eq!(
            try_wait_until(Duration::from_millis(20), || None::<()>),
            None
        );
    }

    #[test]
    fn runtime_names_map_to_shim_binaries() {
        // containerd maps io.containerd.<name>.<version> to containerd-shim-<name>-<version>.
        for rt in [Runtime::Runc, Runtime::Corral] {
            let parts: Vec<&str> = rt.name().split('.').collect();
            let expected = format!("containerd-shim-{}-{}", parts[2], parts[3]);
            assert_eq!(rt.binary_name(), expected);
        }
    }
}
