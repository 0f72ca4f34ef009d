//! A private daemon per test — containerd 1.6, or corrald on the same terms — as an RAII
//! guard. Both are driven by the same `ctr`, run shims the same way (`bin/` first on `PATH`)
//! and leave the same traces, so every lifecycle test runs against both ([`crate::Target`]).
//!
//! Layout of the guard's temp dir (`/tmp/corral-it-XXXXXX/`):
//!
//! ```text
//! config.toml       containerd: version 2, root/state below, debug logging, CRI disabled
//!                   (unless Options::cri_plugin: then it serves CRI, CNI configs from net.d/)
//! corrald.toml      corrald: the same paths; io.containerd.corral.v1 → the shim under test
//! c.sock            gRPC socket (c.sock.ttrpc: the ttrpc socket shims publish events to)
//! root/ state/      containerd --root / --state
//! bin/              prepended to containerd's PATH; holds containerd-shim-corral-v1 → our shim
//! net.d/            CNI configs of the CRI plugin (empty unless a caller writes a network)
//! certs.d           registry hosts of the CRI plugin's pulls (absent unless a caller makes it)
//! fifo/             --fifo-dir for every `ctr run` / `ctr tasks exec` (ctr leaves -d FIFOs behind)
//! containerd.log    the daemon's stdout+stderr, including the shims' log lines
//! ```
//!
//! Drop tears everything down even when the test failed: tasks are killed and deleted and
//! containers removed through ctr (best effort), containerd gets SIGTERM then SIGKILL, shims of
//! the namespace still alive are killed, leftover runc state is force-deleted, mounts under the
//! temp dir are detached, and the dir is removed. If the test is panicking, the tail of
//! containerd's log is printed and the whole log is copied to `$TMPDIR/corral-it-logs/<ns>.log`.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::ctr::{Ctr, CtrOutput};
use crate::image::{IMAGE_REF, test_image_tar};
use crate::{
    Daemon, Runtime, Target, cmd, corral_shim_path, leaks, try_wait_until, unique_namespace,
};

/// How long containerd may take to answer `ctr version` after being started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of each best-effort cleanup `ctr` call in Drop.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// How [`Containerd::start_with`] sets a daemon up. The default is what tests use.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The daemon's log level (`debug` for tests; benchmarks use `info`, as in production).
    pub log_level: &'static str,
    /// Import the busybox test image ([`IMAGE_REF`]) after start-up.
    pub import_image: bool,
    /// corrald only: run `io.containerd.runc.v2` (what dockerd asks for) with our shim, through
    /// corrald's runtime mapping.
    pub runc_v2_is_corral: bool,
    /// corrald only: `CORRAL_RUNC_TIMEOUT` in its environment, which our shims inherit: the
    /// bound of each runc call (e.g. `"2s"`), for tests of a runc that hangs.
    pub runc_timeout: Option<&'static str>,
    /// containerd only: serve containerd's own CRI plugin (`io.containerd.grpc.v1.cri`) on the
    /// daemon socket, as a Kubernetes node's containerd does; see [`crate::cri::ContainerdCri`],
    /// which writes the network and imports the images. Pods live in namespace `k8s.io`.
    pub cri_plugin: bool,
    /// `[grpc] max_recv_message_size` and `max_send_message_size` (the same keys in both
    /// daemons' configs); None: their defaults (16 MiB each way).
    pub message_limits: Option<(usize, usize)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            log_level: "debug",
            import_image: true,
            runc_v2_is_corral: false,
            runc_timeout: None,
            cri_plugin: false,
            message_limits: None,
        }
    }
}

/// The `[plugins."io.containerd.grpc.v1.cri"]` section of a private containerd in `dir`: our
/// pause image as sandbox image, CNI configs from `<dir>/net.d` and Debian's plugins, network
/// namespaces under the private state dir (not /var/run/netns), registry hosts (containerd's
/// `hosts.toml` layout) from `<dir>/certs.d` if a caller makes it, streaming on an ephemeral
/// loopback port, and `restrict_oom_score_adj`: root on these machines cannot lower a score
/// below its own, and containerd asks -998 for every pause process otherwise.
fn cri_plugin_config(dir: &Path) -> String {
    format!(
        "\n[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 sandbox_image = \"{pause}\"\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 netns_mounts_under_state_dir = true\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20   conf_dir = \"{net}\"\n\
         \x20   bin_dir = \"/usr/lib/cni\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
         \x20   config_path = \"{hosts}\"\n",
        pause = crate::cri::PAUSE_REF,
        net = dir.join("net.d").display(),
        hosts = dir.join("certs.d").display(),
    )
}

/// A running private containerd; see the module docs.
pub struct Containerd {
    daemon: Daemon,
    runtime: Runtime,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    namespace: String,
    child: Option<Child>,
    ctr: Ctr,
    ids: Mutex<BTreeSet<String>>,
    next_id: AtomicU32,
    runc_timeout: Option<&'static str>,
}

impl Containerd {
    /// Starts a private daemon (containerd unless `target` says corrald) for tests of its
    /// runtime, waits until it answers, and imports the busybox test image ([`IMAGE_REF`]) into
    /// a fresh namespace.
    ///
    /// Panics (with the daemon's log) if anything fails, and first if the shim is missing.
    pub fn start(target: impl Into<Target>) -> Containerd {
        Containerd::start_with(target, Options::default())
    }

    /// Like [`Containerd::start`], set up as `options` say.
    pub fn start_with(target: impl Into<Target>, options: Options) -> Containerd {
        Containerd::start_inner(target.into(), options, unique_namespace(), None)
    }

    /// Like [`Containerd::start_with`], with the daemon's directory (root, state, socket) made
    /// under `parent` instead of `$TMPDIR`: e.g. on a tmpfs, to measure without the disk.
    pub fn start_in(target: impl Into<Target>, options: Options, parent: &Path) -> Containerd {
        Containerd::start_inner(target.into(), options, unique_namespace(), Some(parent))
    }

    /// Like [`Containerd::start`], with `namespace` instead of a fresh one: for two daemons
    /// that must use the same namespace and container ids (corral beside containerd on one
    /// host). The caller makes the name unique ([`unique_namespace`]).
    pub fn start_in_namespace(target: impl Into<Target>, namespace: &str) -> Containerd {
        Containerd::start_inner(
            target.into(),
            Options::default(),
            namespace.to_string(),
            None,
        )
    }

    fn start_inner(
        target: Target,
        options: Options,
        namespace: String,
        parent: Option<&Path>,
    ) -> Containerd {
        let Target { daemon, runtime } = target;
        runtime.ensure_available();
        let mut builder = tempfile::Builder::new();
        builder.prefix("corral-it-");
        let dir = match parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .expect("cannot create a temp dir for containerd");
        let path = dir.path().to_path_buf();
        assert!(
            !options.cri_plugin || daemon == Daemon::Containerd,
            "Options::cri_plugin is containerd's plugin; corrald serves CRI through corral-cri"
        );
        for sub in ["root", "state", "bin", "fifo", "net.d"] {
            fs::create_dir_all(path.join(sub)).expect("cannot create containerd dirs");
        }
        let shim = corral_shim_path();
        if shim.is_file() {
            std::os::unix::fs::symlink(&shim, path.join("bin").join(Runtime::Corral.binary_name()))
                .expect("cannot link the corral shim");
        }
        let limits = match options.message_limits {
            Some((recv, send)) => {
                format!("max_recv_message_size = {recv}\nmax_send_message_size = {send}\n")
            }
            None => String::new(),
        };
        let mut config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             {disabled}\
             \n\
             [grpc]\n  address = \"{sock}\"\n{limits}\
             \n\
             [debug]\n  level = \"{level}\"\n",
            limits = limits,
            level = options.log_level,
            root = path.join("root").display(),
            state = path.join("state").display(),
            sock = path.join("c.sock").display(),
            disabled = if options.cri_plugin {
                ""
            } else {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
            },
        );
        if options.cri_plugin {
            config.push_str(&cri_plugin_config(&path));
        }
        fs::write(path.join("config.toml"), config).expect("cannot write containerd config");
        let mut corrald_config = format!(
            "version = 1\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             \n\
             [grpc]\naddress = \"{sock}\"\n{limits}\
             \n\
             [debug]\nlevel = \"{level}\"\n\
             \n\
             [runtime.runtimes.\"{corral}\"]\nbinary = \"{shim}\"\n",
            root = path.join("root").display(),
            state = path.join("state").display(),
            sock = path.join("c.sock").display(),
            level = options.log_level,
            corral = Runtime::Corral.name(),
            shim = shim.display(),
            limits = limits,
        );
        if options.runc_v2_is_corral {
            corrald_config.push_str(&format!(
                "\n[runtime.runtimes.\"{runc}\"]\nbinary = \"{shim}\"\n",
                runc = Runtime::Runc.name(),
                shim = shim.display(),
            ));
        }
        fs::write(path.join("corrald.toml"), corrald_config).expect("cannot write corrald config");

        let ctr = Ctr::new(&path.join("c.sock"), &namespace);
        let mut me = Containerd {
            daemon,
            runtime,
            dir: Some(dir),
            path,
            namespace,
            child: None,
            ctr,
            ids: Mutex::new(BTreeSet::new()),
            next_id: AtomicU32::new(0),
            runc_timeout: options.runc_timeout,
        };
        me.spawn();
        if options.import_image {
            me.import_test_image();
        }
        me
    }

    /// Which daemon this is.
    pub fn daemon(&self) -> Daemon {
        self.daemon
    }

    /// The runtime this daemon's tests use for `ctr run`.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The gRPC socket path, as containerd passes it to shims in `-address`.
    pub fn address(&self) -> PathBuf {
        self.path.join("c.sock")
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's `--root`.
    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    /// containerd's `--state`.
    pub fn state(&self) -> PathBuf {
        self.path.join("state")
    }

    /// The temp dir holding everything of this daemon.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Bundle directory of container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// `ctr` bound to this daemon's socket and namespace.
    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// A gRPC client of this daemon in its namespace, for what `ctr` cannot do.
    pub fn api(&self) -> crate::Api {
        crate::Api::connect(&self.address(), &self.namespace)
    }

    /// pid of the running containerd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A fresh container id `<prefix>-<n>`, remembered for the leak checks.
    pub fn new_id(&self, prefix: &str) -> String {
        let id = format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.register_id(&id);
        id
    }

    /// Remembers a container id chosen by the test, for the leak checks.
    pub fn register_id(&self, id: &str) {
        self.ids.lock().unwrap().insert(id.to_string());
    }

    /// Container ids used by the test so far.
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().iter().cloned().collect()
    }

    /// Arguments of `ctr run` with this runtime and our FIFO dir:
    /// `run --runtime <rt> --fifo-dir <dir> <flags…> <IMAGE_REF> <id> <cmd…>`.
    /// The id is remembered for the leak checks.
    pub fn run_args(&self, flags: &[&str], id: &str, command: &[&str]) -> Vec<String> {
        self.register_id(id);
        let mut args: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            self.runtime.name().into(),
            "--fifo-dir".into(),
            self.path.join("fifo").display().to_string(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        args.push(IMAGE_REF.into());
        args.push(id.into());
        args.extend(command.iter().map(|s| s.to_string()));
        args
    }

    /// `ctr run` (see [`Containerd::run_args`]).
    pub fn ctr_run(&self, flags: &[&str], id: &str, command: &[&str]) -> CtrOutput {
        self.ctr.run(&self.run_args(flags, id, command))
    }

    /// Arguments of `ctr tasks exec --fifo-dir <dir> --exec-id <exec_id> <flags…> <id> <cmd…>`.
    pub fn exec_args(
        &self,
        flags: &[&str],
        id: &str,
        exec_id: &str,
        command: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "tasks".into(),
            "exec".into(),
            "--fifo-dir".into(),
            self.path.join("fifo").display().to_string(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        args.push(id.into());
        args.extend(command.iter().map(|s| s.to_string()));
        args
    }

    /// `ctr tasks exec` (see [`Containerd::exec_args`]).
    pub fn ctr_exec(&self, flags: &[&str], id: &str, exec_id: &str, command: &[&str]) -> CtrOutput {
        self.ctr.run(&self.exec_args(flags, id, exec_id, command))
    }

    /// Kills containerd with SIGKILL (shims and containers stay up) and reaps it.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again on the same paths and waits until it answers. A daemon still
    /// running is first stopped with SIGTERM.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the daemon again on the same paths after [`Containerd::kill_9`] and returns at
    /// once, without waiting for it to answer: for timing a restart from the caller's side.
    pub fn relaunch_no_wait(&mut self) {
        self.launch();
    }

    /// Last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics unless the test left nothing behind; see [`leaks::find_leaks`]. Leaks that go away
    /// on their own (a shim exits shortly after its last Delete) are waited for up to 10 s.
    pub fn assert_no_leaks(&self) {
        self.assert_no_leaks_except(&[]);
    }

    /// Like [`Containerd::assert_no_leaks`], tolerating leaks of the `allowed` kinds (for a
    /// documented shortcoming of the reference shim; Drop still cleans them up).
    pub fn assert_no_leaks_except(&self, allowed: &[leaks::LeakKind]) {
        let ids = self.ids();
        let mut last = Vec::new();
        let clean = try_wait_until(Duration::from_secs(10), || {
            last = leaks::find_leaks(self, &ids);
            last.retain(|l| !allowed.contains(&l.kind));
            last.is_empty().then_some(())
        });
        let lines: Vec<String> = last.iter().map(|l| l.to_string()).collect();
        assert!(
            clean.is_some(),
            "leaks after the test (namespace {}):\n  {}",
            self.namespace,
            lines.join("\n  ")
        );
    }

    /// The daemon's log (stdout and stderr, shims' lines included).
    pub fn log_path(&self) -> PathBuf {
        self.path.join("containerd.log")
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_answering();
    }

    /// Starts the daemon process (log appended to `containerd.log`).
    fn launch(&mut self) {
        assert!(self.child.is_none(), "containerd is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open containerd log");
        let log2 = log.try_clone().expect("cannot dup containerd log");
        let path_env = match std::env::var_os("PATH") {
            Some(p) => {
                let mut v = self.path.join("bin").into_os_string();
                v.push(":");
                v.push(p);
                v
            }
            None => self.path.join("bin").into_os_string(),
        };
        let mut c = match self.daemon {
            Daemon::Containerd => {
                let mut c = Command::new("containerd");
                c.arg("--config").arg(self.path.join("config.toml"));
                c
            }
            Daemon::Corrald => {
                let mut c = Command::new(crate::corrald::corrald_path());
                c.arg("--config").arg(self.path.join("corrald.toml"));
                if let Some(t) = self.runc_timeout {
                    c.env("CORRAL_RUNC_TIMEOUT", t);
                }
                c
            }
        };
        c.env("PATH", path_env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        cmd::die_with_parent(&mut c);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?} (is it installed?): {e}", self.daemon));
        self.child = Some(child);
    }

    /// Waits until the daemon just launched answers `ctr version`; panics with its log if it
    /// exits or does not answer within [`STARTUP_TIMEOUT`].
    fn wait_answering(&mut self) {
        let probe = self.ctr.with_timeout(Duration::from_secs(5));
        let mut exited = None;
        let ready = try_wait_until(STARTUP_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                exited = Some(status);
                return Some(false);
            }
            probe.run(&["version"]).success().then_some(true)
        });
        match (ready, exited) {
            (Some(true), _) => {}
            (_, Some(status)) => {
                self.child = None;
                panic!(
                    "containerd exited during startup ({status}); log tail:\n{}",
                    self.log_tail(40)
                )
            }
            _ => panic!(
                "containerd did not answer `ctr version` within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                self.log_tail(40)
            ),
        }
    }

    fn import_test_image(&self) {
        let tar = self.path.join("image.tar");
        fs::write(&tar, test_image_tar()).expect("cannot write the test image tar");
        self.ctr
            .ok(&["images", "import", &tar.display().to_string()]);
        let names = self.ctr.ok(&["images", "ls", "-q"]);
        assert!(
            names.lines().any(|l| l.trim() == IMAGE_REF),
            "imported image is not named {IMAGE_REF}; images:\n{names}"
        );
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child, which has not been reaped (we still own `child`).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = cmd::wait_with_timeout(child, STOP_TIMEOUT);
    }

    /// Best effort: delete every task and container of the namespace through ctr.
    /// Never panics (it runs in Drop).
    fn remove_all_through_ctr(&self) {
        let ctr = self.ctr.with_timeout(CLEANUP_TIMEOUT);
        let run =
            |args: &[&str]| cmd::output_with_timeout(&mut ctr.command(args), CLEANUP_TIMEOUT).ok();
        if let Some(out) = run(&["tasks", "ls"]) {
            let tasks = crate::ctr::parse_tasks_ls(&String::from_utf8_lossy(&out.stdout));
            for t in tasks {
                if t.status == "PAUSED" {
                    run(&["tasks", "resume", &t.id]);
                }
                run(&["tasks", "rm", "-f", &t.id]);
            }
        }
        if let Some(out) = run(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                run(&["containers", "rm", id]);
            }
        }
    }

    /// Kills what containerd could not clean up: shims it started in our namespace, runc
    /// containers, shim sockets, mounts. Never panics.
    fn remove_leftovers(&self) {
        for p in leaks::daemon_shim_processes(&self.address(), &self.namespace) {
            // SAFETY: plain kill(2); the pid was just read from /proc and names a shim of our
            // namespace (a recycled pid in the meantime is practically impossible).
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        let runc_root = leaks::runc_state_dir(self.runtime, &self.namespace);
        if let Ok(entries) = fs::read_dir(&runc_root) {
            for e in entries.flatten() {
                let _ = cmd::output_with_timeout(
                    Command::new("runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force"])
                        .arg(e.file_name()),
                    CLEANUP_TIMEOUT,
                );
            }
        }
        // runc-v2 leaves the (empty) per-namespace runc root behind; remove it if empty.
        let _ = fs::remove_dir(&runc_root);
        for id in self.ids() {
            let _ = fs::remove_file(leaks::shim_socket_path(
                &self.address(),
                &self.namespace,
                &id,
            ));
        }
        // runc removes a container's cgroups but not the per-namespace parent ctr asked for.
        for root in leaks::cgroup_roots() {
            let ns_cg = root.join(&self.namespace);
            if ns_cg.is_dir() {
                for id in self.ids() {
                    let _ = fs::remove_dir(ns_cg.join(id));
                }
                let _ = fs::remove_dir(&ns_cg);
            }
        }
        let mut mounts = leaks::mounts_under(&self.path);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn save_log_for_failure(&self) {
        eprintln!(
            "---- containerd log tail (namespace {}) ----\n{}\n---- end of containerd log ----",
            self.namespace,
            self.log_tail(80)
        );
        let keep = std::env::temp_dir().join("corral-it-logs");
        let dest = keep.join(format!("{}.log", self.namespace));
        if fs::create_dir_all(&keep).is_ok() && fs::copy(self.log_path(), &dest).is_ok() {
            eprintln!("full containerd log kept at {}", dest.display());
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.save_log_for_failure();
        }
        let alive = match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        };
        if alive {
            self.remove_all_through_ctr();
        }
        self.stop();
        self.remove_leftovers();
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
