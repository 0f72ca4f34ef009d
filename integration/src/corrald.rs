//! A private corrald for a test: own root, state, socket and namespace; `ctr` pointed at it.
//!
//! The daemon binary is `$CORRALD_BIN`, else `<workspace>/target/debug/corrald` (the Makefile
//! builds it before the tests). On drop the daemon gets SIGTERM (SIGKILL after a deadline),
//! anything still mounted under its directory is unmounted, and the directory is removed; a
//! failing test prints the end of the daemon's log.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocol::grpc::corral::services::transfer::v1::transfer_client::TransferClient;
use protocol::grpc::corral::services::transfer::v1::{PullRequest, PullResult};
use protocol::grpc::tonic;

use crate::{Ctr, cmd, unique_namespace, wait_until};

const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The corrald binary under test.
pub fn corrald_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRALD_BIN") {
        return PathBuf::from(p);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(&manifest)
        .join("target/debug/corrald")
}

pub struct Corrald {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// A config file of the test's (`--config`), if any.
    config: Option<PathBuf>,
    /// `--root` somewhere else than under `path` (a test's small disk), if set.
    root: Option<PathBuf>,
    /// `--log-level`: `debug` for tests, `info` for benchmarks (as in production).
    log_level: &'static str,
    namespace: String,
    child: Option<Child>,
    ctr: Ctr,
}

impl Corrald {
    /// Starts corrald on private paths and waits until `ctr version` answers.
    pub fn start() -> Corrald {
        Corrald::start_with(None, "debug")
    }

    /// Like [`Corrald::start`], with `config` (TOML, e.g. a `[registry]` section) as its config
    /// file; the command-line paths still win over the file's.
    pub fn start_with_config(config: &str) -> Corrald {
        Corrald::start_with(Some(config), "debug")
    }

    /// Like [`Corrald::start_with_config`] with an optional config, logging at `log_level`
    /// (benchmarks use `info`: a debug log line per request would be part of what they time).
    pub fn start_with(config: Option<&str>, log_level: &'static str) -> Corrald {
        Corrald::start_full(config, log_level, None)
    }

    /// Like [`Corrald::start`], with `--root` at `root` (e.g. on a [`crate::disk::SmallDisk`]);
    /// on drop whatever is mounted below `root` is unmounted too, and `root` is left for its
    /// owner to remove.
    pub fn start_on(root: &Path) -> Corrald {
        Corrald::start_full(None, "debug", Some(root.to_path_buf()))
    }

    fn start_full(config: Option<&str>, log_level: &'static str, root: Option<PathBuf>) -> Corrald {
        let bin = corrald_path();
        assert!(
            bin.is_file(),
            "corrald not found at {} (run `cargo build -p supervisor` or set CORRALD_BIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("corrald-it-")
            .tempdir()
            .expect("cannot create a temp dir for corrald");
        let path = dir.path().to_path_buf();
        let namespace = unique_namespace();
        let ctr = Ctr::new(&path.join("c.sock"), &namespace);
        let config = config.map(|text| {
            let p = path.join("config.toml");
            fs::write(&p, text).expect("cannot write the corrald config");
            p
        });
        let mut me = Corrald {
            dir: Some(dir),
            path,
            config,
            root,
            log_level,
            namespace,
            child: None,
            ctr,
        };
        me.spawn();
        me
    }

    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// `ctr` in another namespace of the same daemon.
    pub fn ctr_in(&self, namespace: &str) -> Ctr {
        Ctr::new(&self.address(), namespace)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> PathBuf {
        self.path.join("c.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| self.path.join("root"))
    }

    pub fn state(&self) -> PathBuf {
        self.path.join("state")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line that starts this daemon (for tests of start-up errors).
    pub fn command(&self) -> Command {
        let mut c = Command::new(corrald_path());
        c.arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--address")
            .arg(self.address())
            .args(["--log-level", self.log_level]);
        if let Some(config) = &self.config {
            c.arg("--config").arg(config);
        }
        c
    }

    /// The daemon's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.path.join("corrald.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "corrald is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open corrald log");
        let log2 = log.try_clone().expect("cannot dup corrald log");
        let mut c = self.command();
        c.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        cmd::die_with_parent(&mut c);
        self.child = Some(c.spawn().expect("cannot start corrald"));
        let ctr = self.ctr.clone();
        let log = self.log_path();
        wait_until("corrald answers ctr version", START_TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "corrald exited with {status}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            ctr.run(&["version"]).success().then_some(())
        });
    }

    /// SIGKILL, reaped: whatever it held must survive it.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts corrald again on the same paths (stopping a running one with SIGTERM first).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = cmd::wait_with_timeout(child, STOP_TIMEOUT);
        }
    }

    /// corrald's own pull (`Transfer/Pull`, what `corral pull` uses) in the test's namespace,
    /// to its result or its error status.
    pub fn transfer_pull(&self, req: PullRequest) -> Result<PullResult, tonic::Status> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the pull");
        let (address, ns) = (self.address(), self.namespace.clone());
        rt.block_on(async move {
            let channel = protocol::grpc::unix::connect(&address)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("connect to corrald: {e}")))?;
            let mut client = TransferClient::new(channel);
            let mut r = tonic::Request::new(req);
            r.metadata_mut().insert(
                "containerd-namespace",
                ns.parse().expect("a namespace is a header value"),
            );
            r.set_timeout(Duration::from_secs(120));
            let mut stream = client.pull(r).await?.into_inner();
            while let Some(m) = stream.message().await? {
                if let Some(result) = m.result {
                    return Ok(result);
                }
            }
            Err(tonic::Status::unknown(
                "the pull stream ended without a result",
            ))
        })
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Unmounts every mount point below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let c = std::ffi::CString::new(p).unwrap_or_default();
        // SAFETY: umount2 with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Drop for Corrald {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- corrald log tail ({}) ----\n{}\n---- end ----",
                self.namespace,
                self.log_tail(60)
            );
        }
        self.stop();
        unmount_below(&self.path);
        if let Some(root) = &self.root {
            unmount_below(root);
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
