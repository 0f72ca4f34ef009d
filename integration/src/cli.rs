//! Driving the `corral` client in tests.
//!
//! The binary is `$CORRAL_BIN`, else `<workspace>/target/debug/corral` (the Makefile builds it
//! before the tests), found the way [`crate::corrald::corrald_path`] finds the daemon.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cmd::{self, Output};

/// How long one `corral` invocation may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The corral binary under test.
pub fn corral_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_BIN") {
        return PathBuf::from(p);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(&manifest)
        .join("target/debug/corral")
}

/// `corral` bound to one daemon socket, namespace and log directory.
#[derive(Clone, Debug)]
pub struct Corral {
    pub address: PathBuf,
    pub namespace: String,
    pub log_dir: PathBuf,
}

/// What a `corral` run left.
#[derive(Debug)]
pub struct CorralOutput {
    pub args: Vec<String>,
    pub output: Output,
}

impl CorralOutput {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// For assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "corral {:?} → {:?}\nstdout: {}\nstderr: {}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Corral {
    pub fn new(address: &Path, namespace: &str, log_dir: &Path) -> Corral {
        let bin = corral_path();
        assert!(
            bin.is_file(),
            "corral not found at {} (run `cargo build -p cli` or set CORRAL_BIN)",
            bin.display()
        );
        Corral {
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// The same client in another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Corral {
        Corral {
            namespace: namespace.to_string(),
            ..self.clone()
        }
    }

    /// The command line `corral <args>` against our daemon (environment, not flags, so the
    /// flags themselves stay free for the test).
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(corral_path());
        c.args(args.iter().map(|a| a.as_ref()))
            .env("CORRAL_ADDRESS", &self.address)
            .env("CORRAL_NAMESPACE", &self.namespace)
            .env("CORRAL_LOG_DIR", &self.log_dir)
            .stdin(Stdio::null());
        cmd::die_with_parent(&mut c);
        c
    }

    /// Runs `corral <args>` with stdin closed; panics if it does not end within [`TIMEOUT`].
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> CorralOutput {
        let mut c = self.command(args);
        let output = cmd::output_with_timeout(&mut c, TIMEOUT)
            .unwrap_or_else(|e| panic!("corral {:?}: {e}", strings(args)));
        assert!(
            !output.timed_out,
            "corral {:?} did not finish within {TIMEOUT:?}",
            strings(args)
        );
        CorralOutput {
            args: strings(args),
            output,
        }
    }

    /// Runs `corral <args>` feeding `input` on stdin.
    pub fn run_with_input<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> CorralOutput {
        use std::io::Write;
        let mut c = self.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("cannot start corral");
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(TIMEOUT) {
            Ok(o) => {
                let o = o.expect("corral failed");
                Output {
                    status: o.status,
                    stdout: o.stdout,
                    stderr: o.stderr,
                    timed_out: false,
                }
            }
            Err(_) => {
                // SAFETY: kill(2) on our child, not yet reaped (the waiter still waits).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                panic!(
                    "corral {:?} did not finish within {TIMEOUT:?}",
                    strings(args)
                );
            }
        };
        let _ = writer.join();
        CorralOutput {
            args: strings(args),
            output,
        }
    }

    /// Runs `corral <args>`, panics unless it succeeds; its stdout.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(out.success(), "{}", out.describe());
        out.stdout()
    }

    /// The log file `corral run -d` gives container `id`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.log_dir.join(&self.namespace).join(format!("{id}.log"))
    }
}

fn strings<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    args.iter().map(|a| a.as_ref().to_string()).collect()
}
