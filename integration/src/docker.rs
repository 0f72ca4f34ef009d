//! A private Docker Engine for a test: Debian's `dockerd` (docker.io 20.10) on a private corrald
//! or containerd 1.6, driven with the `docker` CLI, as an RAII guard.
//!
//! Layout of the guard's temp dir (`/tmp/docker-it-XXXXXX/`):
//!
//! ```text
//! daemon.json     {"deprecated-key-path": "<dir>/key.json"}: else dockerd writes /etc/docker/key.json
//! data/           --data-root (dockerd bind-mounts it on itself and keeps it under --live-restore)
//! exec/           --exec-root (containerd FIFOs, runc root exec/runtime-runc/moby, netns)
//! docker.sock     -H unix://…;  docker.pid: --pidfile
//! cli/            DOCKER_CONFIG of the `docker` CLI
//! dockerd.log     dockerd's stdout+stderr
//! ```
//!
//! dockerd runs with `--bridge=none --iptables=false --ip6tables=false --live-restore` and its own
//! `--cgroup-parent` (`/corral-docker-<pid>-<n>`), so that several run in parallel beside each
//! other and beside a system Docker; containers must use `--network none`. The backend daemon is a
//! [`Containerd`] guard (corrald or containerd, each on its own temp dir); dockerd uses its
//! containerd namespace `moby` there and asks for the runtime `io.containerd.runc.v2`
//! (containerd's own shim, found on `PATH`).
//!
//! The image [`IMAGE`] is the busybox root filesystem of [`crate::image`], piped as a tar into
//! `docker import` (dockerd 20.10's `docker load` reads only its own archive format).
//!
//! What dockerd cannot be told to keep private: it creates `/run/docker/plugins`. The guards
//! count themselves and the last one removes that directory (and `/run/docker`) if the first one
//! created it.
//!
//! Drop, even when the test failed: containers are removed through `docker rm -f`, dockerd gets
//! SIGTERM (SIGKILL after a deadline), shims still serving our backend socket are killed, runc
//! state under the exec-root is force-deleted, everything mounted below the temp dir is
//! detached, the cgroup parent is removed in every hierarchy, then the backend guard drops.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::containerd::Options;
use crate::{Containerd, Daemon, Runtime, Target, cmd, leaks, try_wait_until, wait_until};

/// Name of the busybox image every [`Docker`] imports.
pub const IMAGE: &str = "busybox:test";
/// Default deadline of one `docker` call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd may take to answer after being started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of each best-effort cleanup call in Drop.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Where dockerd 20.10 always creates its plugin socket directory.
const PLUGINS_DIR: &str = "/run/docker/plugins";
/// The containerd namespace dockerd 20.10 puts its containers in.
pub const NAMESPACE: &str = "moby";

/// `$DOCKERD_BIN`, else Debian's `/usr/sbin/dockerd`, else `dockerd` on `PATH`.
pub fn dockerd_path() -> PathBuf {
    binary("DOCKERD_BIN", "/usr/sbin/dockerd", "dockerd")
}

/// `$DOCKER_BIN`, else Debian's `/usr/bin/docker` (the CLI of the same release as dockerd),
/// else `docker` on `PATH`.
pub fn docker_cli_path() -> PathBuf {
    binary("DOCKER_BIN", "/usr/bin/docker", "docker")
}

fn binary(var: &str, debian: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    if Path::new(debian).is_file() {
        return PathBuf::from(debian);
    }
    PathBuf::from(name)
}

/// What one `docker` call produced.
#[derive(Debug)]
pub struct DockerOutput {
    pub args: Vec<String>,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl DockerOutput {
    /// Exit code, `None` if docker was killed by a signal (e.g. on timeout).
    pub fn code(&self) -> Option<i32> {
        if self.timed_out {
            None
        } else {
            self.status.code()
        }
    }

    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// One-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`docker {}` → {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Process-wide count of running guards and whether the first one created [`PLUGINS_DIR`]
/// (and `/run/docker`).
static PLUGINS: Mutex<(usize, bool, bool)> = Mutex::new((0, false, false));

fn plugins_dir_acquire() {
    let mut g = PLUGINS.lock().unwrap_or_else(|e| e.into_inner());
    if g.0 == 0 {
        g.1 = !Path::new(PLUGINS_DIR).exists();
        g.2 = !Path::new("/run/docker").exists();
    }
    g.0 += 1;
}

fn plugins_dir_release() {
    let mut g = PLUGINS.lock().unwrap_or_else(|e| e.into_inner());
    g.0 = g.0.saturating_sub(1);
    if g.0 == 0 {
        // remove_dir: only if empty, in case something else put a plugin socket there meanwhile.
        if g.1 {
            let _ = fs::remove_dir(PLUGINS_DIR);
        }
        if g.2 {
            let _ = fs::remove_dir("/run/docker");
        }
    }
}

/// A private dockerd on a private backend daemon; see the module docs.
pub struct Docker {
    backend: Option<Containerd>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    cgroup_parent: String,
    dockerd: Option<Child>,
    timeout: Duration,
}

impl Docker {
    /// Starts `daemon` (corrald or containerd) and dockerd on it, and imports [`IMAGE`].
    /// dockerd's containers get containerd's runc shim.
    pub fn start(daemon: Daemon) -> Docker {
        Docker::start_with(daemon, Runtime::Runc)
    }

    /// Like [`Docker::start`], with dockerd's containers on `shim`: our shim is possible on
    /// corrald only, through its runtime mapping of `io.containerd.runc.v2` (dockerd 20.10
    /// always asks for that runtime; its `--add-runtime` only changes the runc binary).
    pub fn start_with(daemon: Daemon, shim: Runtime) -> Docker {
        assert!(
            shim == Runtime::Runc || daemon == Daemon::Corrald,
            "only corrald maps dockerd's runtime to our shim"
        );
        shim.ensure_available();
        let backend = Containerd::start_with(
            Target {
                daemon,
                runtime: shim,
            },
            Options {
                log_level: "debug",
                import_image: false,
                runc_v2_is_corral: shim == Runtime::Corral,
                runc_timeout: None,
                cri_plugin: false,
                message_limits: None,
            },
        );
        let dir = tempfile::Builder::new()
            .prefix("docker-it-")
            .tempdir()
            .expect("cannot create a temp dir for dockerd");
        let path = dir.path().to_path_buf();
        for sub in ["data", "exec", "cli"] {
            fs::create_dir_all(path.join(sub)).expect("cannot create dockerd dirs");
        }
        let config = serde_json::json!({
            "deprecated-key-path": path.join("key.json"),
        });
        fs::write(path.join("daemon.json"), config.to_string()).expect("cannot write daemon.json");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let cgroup_parent = format!(
            "corral-docker-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        plugins_dir_acquire();
        let mut me = Docker {
            backend: Some(backend),
            dir: Some(dir),
            path,
            cgroup_parent,
            dockerd: None,
            timeout: DEFAULT_TIMEOUT,
        };
        me.spawn_dockerd();
        me.import_image();
        me
    }

    /// The backend daemon (corrald or containerd).
    pub fn backend(&self) -> &Containerd {
        self.backend.as_ref().expect("backend present until drop")
    }

    fn backend_mut(&mut self) -> &mut Containerd {
        self.backend.as_mut().expect("backend present until drop")
    }

    /// The temp dir holding everything of this dockerd.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// dockerd's `--data-root`.
    pub fn data_root(&self) -> PathBuf {
        self.path.join("data")
    }

    /// dockerd's `--exec-root`.
    pub fn exec_root(&self) -> PathBuf {
        self.path.join("exec")
    }

    /// The cgroup (below each hierarchy's root) holding this dockerd's containers.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The v1 memory cgroup directory of container `id` (full id).
    pub fn memory_cgroup(&self, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup/memory")
            .join(&self.cgroup_parent)
            .join(id)
    }

    /// pid of the running dockerd, if any.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Child::id)
    }

    fn socket(&self) -> PathBuf {
        self.path.join("docker.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.path.join("dockerd.log")
    }

    /// The command line of dockerd.
    fn dockerd_command(&self) -> Command {
        let mut c = Command::new(dockerd_path());
        c.arg("--config-file")
            .arg(self.path.join("daemon.json"))
            .arg("--containerd")
            .arg(self.backend().address())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--pidfile")
            .arg(self.path.join("docker.pid"))
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.cgroup_parent))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--live-restore",
                "--debug",
            ]);
        c
    }

    fn spawn_dockerd(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open dockerd log");
        let log2 = log.try_clone().expect("cannot dup dockerd log");
        let mut c = self.dockerd_command();
        c.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        cmd::die_with_parent(&mut c);
        let child = c.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} (install Debian's docker.io): {e}",
                dockerd_path().display()
            )
        });
        self.dockerd = Some(child);
        let probe_timeout = Duration::from_secs(5);
        let mut exited = None;
        let ready = try_wait_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = self.dockerd.as_mut().unwrap().try_wait() {
                exited = Some(status);
                return Some(false);
            }
            self.run_timeout(
                &["version", "--format", "{{.Server.Version}}"],
                probe_timeout,
            )
            .success()
            .then_some(true)
        });
        match (ready, exited) {
            (Some(true), _) => {}
            (_, Some(status)) => {
                self.dockerd = None;
                panic!(
                    "dockerd exited during start-up ({status}); log tail:\n{}",
                    self.log_tail(40)
                );
            }
            _ => panic!(
                "dockerd did not answer within {START_TIMEOUT:?}; log tail:\n{}",
                self.log_tail(40)
            ),
        }
    }

    fn import_image(&self) {
        let layer =
            crate::image::busybox_layer_tar().expect("cannot build the busybox root filesystem");
        let out = self.run_with_input(&["import", "-", IMAGE], &layer);
        assert!(out.success(), "docker import failed: {}", out.describe());
    }

    /// SIGTERM to dockerd, then SIGKILL after [`STOP_TIMEOUT`]. Under `--live-restore` the
    /// containers keep running.
    pub fn stop_dockerd(&mut self) {
        if let Some(child) = self.dockerd.take() {
            // SAFETY: kill(2) on our own child, not yet reaped (we still own `child`).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = cmd::wait_with_timeout(child, STOP_TIMEOUT);
        }
    }

    /// Stops dockerd (SIGTERM) and starts it again on the same paths; waits until it answers.
    pub fn restart_dockerd(&mut self) {
        self.stop_dockerd();
        self.spawn_dockerd();
    }

    /// SIGKILL to the backend daemon (corrald or containerd); dockerd, shims and containers stay.
    pub fn kill_9_backend(&mut self) {
        self.backend_mut().kill_9();
    }

    /// Starts the backend daemon again on the same paths and waits until it answers `ctr`.
    pub fn restart_backend(&mut self) {
        self.backend_mut().restart();
    }

    /// `docker -H unix://<sock> <args…>`, not yet spawned (for a pty or a dialogue).
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(docker_cli_path());
        c.env("DOCKER_CONFIG", self.path.join("cli"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()));
        for a in args {
            c.arg(a.as_ref());
        }
        cmd::die_with_parent(&mut c);
        c
    }

    fn output(args: Vec<String>, out: cmd::Output) -> DockerOutput {
        DockerOutput {
            args,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            timed_out: out.timed_out,
        }
    }

    /// Runs `docker <args…>` (stdin /dev/null) with the default deadline; never panics on a
    /// failed command.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> DockerOutput {
        self.run_timeout(args, self.timeout)
    }

    /// Like [`Docker::run`] with another deadline.
    pub fn run_timeout<S: AsRef<str>>(&self, args: &[S], timeout: Duration) -> DockerOutput {
        let strs: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let out = cmd::output_with_timeout(&mut self.command(args), timeout)
            .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", strs.join(" ")));
        Docker::output(strs, out)
    }

    /// Runs `docker <args…>` with `input` on its stdin.
    pub fn run_with_input<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> DockerOutput {
        let strs: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let out = cmd::output_with_input(&mut self.command(args), input, self.timeout)
            .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", strs.join(" ")));
        Docker::output(strs, out)
    }

    /// Runs docker and panics (with its output) unless it exits 0; returns stdout, trimmed.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(out.success(), "docker failed: {}", out.describe());
        out.stdout.trim().to_string()
    }

    /// `docker inspect -f <format> <name>`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "-f", format, name])
    }

    /// Full id of container `name`.
    pub fn id(&self, name: &str) -> String {
        self.inspect(name, "{{.Id}}")
    }

    /// Host pid of container `name`'s init (0 when it does not run).
    pub fn pid(&self, name: &str) -> u32 {
        self.inspect(name, "{{.State.Pid}}")
            .parse()
            .expect("State.Pid is a number")
    }

    /// Polls `docker inspect -f <format> <name>` until it prints `want`; panics after
    /// `timeout` with the last value.
    pub fn wait_inspect(&self, name: &str, format: &str, want: &str, timeout: Duration) {
        let mut last = String::new();
        let done = try_wait_until(timeout, || {
            let out = self.run(&["inspect", "-f", format, name]);
            last = format!("{}{}", out.stdout.trim(), out.stderr.trim());
            (out.success() && out.stdout.trim() == want).then_some(())
        });
        assert!(
            done.is_some(),
            "{name}: `{format}` did not become {want:?} within {timeout:?}; last: {last:?}\n\
             dockerd log tail:\n{}",
            self.log_tail(30)
        );
    }

    /// Actions of `docker events` for container `name` between `since` and now
    /// (e.g. `create`, `start`, `pause`, `exec_start: echo hi`, `die`).
    pub fn events_since(&self, name: &str, since: SystemTime) -> Vec<String> {
        let until = SystemTime::now() + Duration::from_millis(1);
        self.ok(&[
            "events",
            "--since",
            &timestamp(since),
            "--until",
            &timestamp(until),
            "--filter",
            &format!("container={name}"),
            "--format",
            "{{.Action}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Ids of every container this dockerd ever created (from its event log).
    pub fn created_ids(&self) -> Vec<String> {
        let out = self.run(&[
            "events",
            "--since",
            "0",
            "--until",
            &timestamp(SystemTime::now() + Duration::from_millis(1)),
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--format",
            "{{.ID}}",
        ]);
        out.stdout.lines().map(str::to_string).collect()
    }

    /// Last `lines` lines of dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Everything the containers of this dockerd left behind, with dockerd still running:
    /// containers, shims serving our backend, container processes and cgroups, runc state,
    /// bundles, shim sockets, and mounts (dockerd's own bind mount of its data-root excepted).
    pub fn find_leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        let ps = self.run(&["ps", "-aq", "--no-trunc"]);
        for id in ps.stdout.split_whitespace() {
            leaks.push(format!("container {id} still exists"));
        }
        let address = self.backend().address();
        for p in self.shims() {
            leaks.push(format!("shim pid {}: {}", p.pid, p.args.join(" ")));
        }
        for pid in self.container_processes() {
            leaks.push(format!("container process {pid}"));
        }
        for root in leaks::cgroup_roots() {
            if let Ok(entries) = fs::read_dir(root.join(&self.cgroup_parent)) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    leaks.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        let dirs = [
            self.exec_root().join("runtime-runc").join(NAMESPACE),
            self.backend()
                .state()
                .join("io.containerd.runtime.v2.task")
                .join(NAMESPACE),
        ];
        for dir in dirs {
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    leaks.push(format!("state {}", e.path().display()));
                }
            }
        }
        for id in self.created_ids() {
            let sock = leaks::shim_socket_path(&address, NAMESPACE, &id);
            if sock.exists() {
                leaks.push(format!("shim socket {} ({id})", sock.display()));
            }
        }
        let data_root = self.data_root();
        for m in leaks::mounts_under(&self.path)
            .into_iter()
            .chain(leaks::mounts_under(self.backend().dir()))
        {
            if m != data_root {
                leaks.push(format!("mount {}", m.display()));
            }
        }
        leaks
    }

    /// Panics unless [`Docker::find_leaks`] comes back empty within 10 s (a shim exits shortly
    /// after its last Delete).
    pub fn assert_no_leaks(&self) {
        let mut last = Vec::new();
        let clean = try_wait_until(Duration::from_secs(10), || {
            last = self.find_leaks();
            last.is_empty().then_some(())
        });
        assert!(
            clean.is_some(),
            "leaks after the test:\n  {}",
            last.join("\n  ")
        );
    }

    /// Shim processes serving our backend's socket.
    pub fn shims(&self) -> Vec<leaks::ProcessInfo> {
        let address = self.backend().address();
        leaks::processes()
            .into_iter()
            .filter(|p| {
                let is_shim = Path::new(&p.args[0])
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("containerd-shim"));
                is_shim && leaks::flag_value(&p.args, "address").map(Path::new) == Some(&address)
            })
            .collect()
    }

    /// Pids of processes in a cgroup below our cgroup parent.
    fn container_processes(&self) -> Vec<u32> {
        let needle = format!("/{}/", self.cgroup_parent);
        let mut pids = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return pids;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(cg) = fs::read_to_string(e.path().join("cgroup"))
                && cg.contains(&needle)
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Best effort, never panics: `docker rm -f` of every container.
    fn remove_containers(&self) {
        let run = |args: &[&str]| self.run_timeout(args, CLEANUP_TIMEOUT);
        let paused = run(&["ps", "-q", "--filter", "status=paused"]);
        for id in paused.stdout.split_whitespace() {
            run(&["unpause", id]);
        }
        let all = run(&["ps", "-aq"]);
        let ids: Vec<&str> = all.stdout.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            run(&args);
        }
    }

    /// Kills what dockerd and the backend could not clean up. Never panics.
    fn remove_leftovers(&self) {
        for p in self.shims() {
            // SAFETY: plain kill(2) of a shim serving our private socket, just read from /proc.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        let runc_root = self.exec_root().join("runtime-runc").join(NAMESPACE);
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
        for pid in self.container_processes() {
            // SAFETY: plain kill(2) of a process in our private cgroup parent.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let mut mounts = leaks::mounts_under(&self.path);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for root in leaks::cgroup_roots() {
            let parent = root.join(&self.cgroup_parent);
            if let Ok(entries) = fs::read_dir(&parent) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    // The last processes may take a moment to leave after SIGKILL.
                    let _ =
                        try_wait_until(Duration::from_secs(5), || fs::remove_dir(e.path()).ok());
                }
            }
            let _ = fs::remove_dir(&parent);
        }
    }
}

/// `secs.nanos` since the epoch, as `docker events --since/--until` take it.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Waits until process `pid` is gone (reaped by its parent); panics after `timeout`.
pub fn wait_process_gone(pid: u32, timeout: Duration) {
    wait_until(&format!("process {pid} to go away"), timeout, || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- dockerd log tail ({}) ----\n{}\n---- end of dockerd log ----",
                self.path.display(),
                self.log_tail(60)
            );
            let keep = std::env::temp_dir().join("corral-it-logs");
            let dest = keep.join(format!("{}-dockerd.log", self.cgroup_parent));
            if fs::create_dir_all(&keep).is_ok() && fs::copy(self.log_path(), &dest).is_ok() {
                eprintln!("full dockerd log kept at {}", dest.display());
            }
        }
        let alive = match self.dockerd.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        };
        let backend_alive = self.backend.as_ref().is_some_and(|b| b.pid().is_some());
        if alive && backend_alive {
            self.remove_containers();
        }
        self.stop_dockerd();
        self.remove_leftovers();
        drop(self.backend.take());
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
        plugins_dir_release();
    }
}
