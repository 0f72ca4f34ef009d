//! containerd 1.6 with its own CRI plugin on private paths: the reference critest's numbers for
//! corral-cri are compared with.
//!
//! Layout of its temp dir (`/tmp/containerd-cri-XXXXXX/`): `config.toml`, `root/`, `state/`,
//! `c.sock` (gRPC; the CRI services are on the same socket), `net.d/` and `ipam/` (a private CNI
//! bridge, [`CniNetwork`]), `crictl.yaml`, `containerd.log`. The CRI plugin pulls through the
//! registry hosts directory of the [`Setup`] (`registry.config_path`), clamps OOM scores it may
//! not set (`restrict_oom_score_adj`: root on these machines cannot lower its own), and serves
//! streaming on a free port of 127.0.0.1. The sandbox image is our pause, imported before
//! start-up as for corral-cri.
//!
//! Drop removes every pod through crictl, stops containerd (SIGTERM, then SIGKILL), kills the
//! shims it left, unmounts what is mounted below the dir and deletes the bridge.

use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Setup;
use crate::corrald::unmount_below;
use crate::cri::{CniNetwork, Crictl, K8S_NAMESPACE, PAUSE_REF, pause_tar, write_crictl_config};
use crate::{Ctr, cmd, leaks, wait_until};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running containerd with its CRI plugin; see the module docs.
pub struct ContainerdCri {
    child: Option<Child>,
    path: PathBuf,
    net: CniNetwork,
    dir: Option<tempfile::TempDir>,
}

impl ContainerdCri {
    /// Starts containerd with its CRI plugin, pulling through `setup`'s mirrors, imports the
    /// sandbox image and waits until crictl gets an answer.
    pub fn start(setup: &Setup) -> ContainerdCri {
        let dir = tempfile::Builder::new()
            .prefix("containerd-cri-")
            .tempdir()
            .expect("cannot create a temp dir for containerd");
        let path = dir.path().to_path_buf();
        let net = CniNetwork::create(&path);
        let stream_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port")
            .port();
        let config = format!(
            "version = 2\n\
             root = {root:?}\n\
             state = {state:?}\n\
             \n\
             [grpc]\n  address = {sock:?}\n\
             \n\
             [debug]\n  level = \"info\"\n\
             \n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = {PAUSE_REF:?}\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             \x20 stream_server_port = \"{stream_port}\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20   bin_dir = \"/usr/lib/cni\"\n\
             \x20   conf_dir = {net:?}\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
             \x20   config_path = {hosts:?}\n",
            root = path.join("root"),
            state = path.join("state"),
            sock = path.join("c.sock"),
            net = net.conf_dir(),
            hosts = setup.hosts_dir(),
        );
        fs::write(path.join("config.toml"), config).expect("cannot write the containerd config");
        write_crictl_config(&path.join("crictl.yaml"), &path.join("c.sock"));
        let mut me = ContainerdCri {
            child: None,
            path,
            net,
            dir: Some(dir),
        };
        me.spawn();
        let pause = me.path.join("pause.tar");
        fs::write(&pause, pause_tar()).expect("cannot write the pause image");
        me.ctr()
            .ok(&["images", "import", pause.to_str().expect("UTF-8 temp path")]);
        let _ = fs::remove_file(pause);
        me
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open the containerd log");
        let log2 = log.try_clone().expect("cannot dup the containerd log");
        let mut c = Command::new("containerd");
        c.arg("--config")
            .arg(self.path.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        cmd::die_with_parent(&mut c);
        self.child = Some(c.spawn().expect("cannot start containerd"));
        let crictl = self.crictl();
        let log = self.log_path();
        wait_until(
            "containerd's CRI answers crictl info",
            START_TIMEOUT,
            || {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    panic!(
                        "containerd exited with {status}:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                crictl.run(&["info"]).success().then_some(())
            },
        );
    }

    /// The gRPC socket, CRI included.
    pub fn socket(&self) -> PathBuf {
        self.path.join("c.sock")
    }

    /// `ctr` in the CRI plugin's namespace.
    pub fn ctr(&self) -> Ctr {
        Ctr::new(&self.socket(), K8S_NAMESPACE)
    }

    /// crictl against this containerd.
    pub fn crictl(&self) -> Crictl {
        Crictl::new(self.path.join("crictl.yaml"))
    }

    /// The pod network's subnet.
    pub fn subnet(&self) -> &str {
        self.net.subnet()
    }

    fn log_path(&self) -> PathBuf {
        self.path.join("containerd.log")
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- containerd log (last 60 lines) ---\n{}",
                self.log_tail(60)
            );
        }
        if self.child.is_some() {
            let _ = self.crictl().run(&["rmp", "-fa"]);
        }
        if let Some(child) = self.child.take() {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = cmd::wait_with_timeout(child, STOP_TIMEOUT);
        }
        for p in leaks::daemon_shim_processes(&self.socket(), K8S_NAMESPACE) {
            // SAFETY: kill(2) of a shim this containerd started.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        unmount_below(&self.path);
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
