//! A private Kubernetes node for a test: corrald and corral-cri on private paths, a private
//! CNI bridge network, the busybox test image and our pause image in corrald's `k8s.io`
//! namespace, and `crictl` (the real CRI client) pointed at corral-cri's socket.
//!
//! corral-cri is `$CORRAL_CRI_BIN`, else `<workspace>/target/debug/corral-cri`. On drop every
//! pod is removed through crictl, corral-cri stops, the bridge is deleted and corrald's own
//! drop removes the rest; a failing test prints the end of corral-cri's log.
//!
//! [`ContainerdCri`] is the same node served by containerd 1.6's own CRI plugin instead (for
//! the benchmark beside it): the same network chain on a bridge of its own, the same two images.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocol::grpc::runtime::v1::ReopenContainerLogRequest;
use protocol::grpc::runtime::v1::runtime_service_client::RuntimeServiceClient;
use protocol::grpc::tonic;

use crate::corrald::unmount_below;
use crate::{Containerd, Corrald, Ctr, Daemon, Target, cmd, image, wait_until};

/// The sandbox image corral-cri is configured with (our pause, imported under this name).
pub const PAUSE_REF: &str = "registry.k8s.io/pause:3.10";
/// The namespace corral-cri keeps pods in.
pub const K8S_NAMESPACE: &str = "k8s.io";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The corral-cri binary under test.
pub fn corral_cri_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_CRI_BIN") {
        return PathBuf::from(p);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(&manifest)
        .join("target/debug/corral-cri")
}

/// How [`CriNode::start_with`] and [`ContainerdCri::start_with`] set a node up.
#[derive(Clone, Debug)]
pub struct CriOptions {
    /// Log level of the daemons (corrald and corral-cri, or containerd): `debug` for tests,
    /// `info` for benchmarks, as in production.
    pub log_level: &'static str,
    /// A registry hosts directory (containerd's `hosts.toml` layout) for the node's pulls:
    /// corrald's `[registry] config_path`, or containerd's CRI `registry.config_path`. None:
    /// each daemon's default.
    pub registry_hosts: Option<PathBuf>,
    /// A certificate and key (PEM files) for corral-cri's streaming server, which then serves
    /// HTTPS. None: plain HTTP. containerd's node ignores it.
    pub streaming_tls: Option<(PathBuf, PathBuf)>,
}

impl Default for CriOptions {
    fn default() -> CriOptions {
        CriOptions {
            log_level: "debug",
            registry_hosts: None,
            streaming_tls: None,
        }
    }
}

pub struct CriNode {
    child: Option<Child>,
    dir: PathBuf,
    net: CniNetwork,
    log_level: &'static str,
    streaming_tls: Option<(PathBuf, PathBuf)>,
    // Dropped last: the daemon and its directory outlive corral-cri.
    corrald: Corrald,
    _tmp: tempfile::TempDir,
}

impl CriNode {
    /// Starts corrald and corral-cri, imports the images, and waits until `crictl version`
    /// answers.
    pub fn start() -> CriNode {
        CriNode::start_with(CriOptions::default())
    }

    /// Like [`CriNode::start`], set up as `options` say. corrald runs our shim
    /// ([`crate::corral_shim_path`]) for `io.containerd.corral.v1`, corral-cri's default runtime.
    pub fn start_with(options: CriOptions) -> CriNode {
        let bin = corral_cri_path();
        assert!(
            bin.is_file(),
            "corral-cri not found at {} (run `cargo build -p cri` or set CORRAL_CRI_BIN)",
            bin.display()
        );
        let shim = crate::corral_shim_path();
        let mut config = String::from("version = 1\n");
        if shim.is_file() {
            config.push_str(&format!(
                "\n[runtime.runtimes.\"{}\"]\nbinary = \"{}\"\n",
                crate::Runtime::Corral.name(),
                shim.display()
            ));
        }
        if let Some(hosts) = &options.registry_hosts {
            config.push_str(&format!(
                "\n[registry]\nconfig_path = \"{}\"\n",
                hosts.display()
            ));
        }
        let corrald = Corrald::start_with(Some(&config), options.log_level);
        let tmp = tempfile::Builder::new()
            .prefix("cri-it-")
            .tempdir()
            .expect("cannot create a temp dir for corral-cri");
        let dir = tmp.path().to_path_buf();
        let net = CniNetwork::create(&dir);
        let node = CriNode {
            child: None,
            dir,
            net,
            log_level: options.log_level,
            streaming_tls: options.streaming_tls.clone(),
            corrald,
            _tmp: tmp,
        };
        node.write_files();
        import_images(&node.corrald.ctr_in(K8S_NAMESPACE), &node.dir);
        let mut node = node;
        node.spawn();
        node
    }

    fn write_files(&self) {
        let mut config = format!(
            "sandbox_image = {PAUSE_REF:?}\n\n[cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\", \"/opt/cni/bin\"]\n",
            self.net.conf_dir().display()
        );
        if let Some((cert, key)) = &self.streaming_tls {
            config.push_str(&format!(
                "\n[streaming]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
                cert.display(),
                key.display()
            ));
        }
        fs::write(self.dir.join("cri.toml"), config).unwrap();
        write_crictl_config(&self.dir.join("crictl.yaml"), &self.socket());
    }

    pub fn corrald(&self) -> &Corrald {
        &self.corrald
    }

    pub fn corrald_mut(&mut self) -> &mut Corrald {
        &mut self.corrald
    }

    /// corral-cri's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("cri.sock")
    }

    /// corral-cri's `--root` (network namespaces, per-pod files).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where tests put pod logs and config files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod network's subnet (`10.x.y.0/24`).
    pub fn subnet(&self) -> &str {
        self.net.subnet()
    }

    /// The pod network's bridge on the host.
    pub fn bridge(&self) -> &str {
        self.net.bridge()
    }

    /// host-local's data directory: one file per allocated address, under the network's name.
    pub fn ipam_dir(&self) -> PathBuf {
        self.net.ipam_dir()
    }

    /// The node's own network config: a bridge with host-local IPAM, portmap and loopback.
    pub fn cni_config(&self) -> serde_json::Value {
        self.net.config()
    }

    /// Replaces the node's network config (the only file of its CNI conf dir), atomically:
    /// corral-cri reads it again at the next pod.
    pub fn set_cni_config(&self, conflist: &serde_json::Value) {
        self.net.set_config(conflist);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `crictl` against this node.
    pub fn crictl(&self) -> Crictl {
        Crictl {
            config: self.dir.join("crictl.yaml"),
            timeout: Duration::from_secs(90),
        }
    }

    /// corral-cri's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("corral-cri.log")
    }

    /// The command line that starts corral-cri on this node's paths.
    pub fn command(&self) -> Command {
        let mut c = Command::new(corral_cri_path());
        c.arg("--address")
            .arg(self.corrald.address())
            .arg("--listen")
            .arg(self.socket())
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.dir.join("cri.toml"))
            .args(["--log-level", self.log_level]);
        c
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "corral-cri is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open corral-cri log");
        let log2 = log.try_clone().unwrap();
        let mut c = self.command();
        c.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        cmd::die_with_parent(&mut c);
        self.child = Some(c.spawn().expect("cannot start corral-cri"));
        let crictl = self.crictl();
        let log = self.log_path();
        wait_until("corral-cri answers crictl version", START_TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "corral-cri exited with {status}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            crictl.run(&["version"]).success().then_some(())
        });
    }

    /// SIGKILL to corral-cri, reaped.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts corral-cri again on the same paths (SIGTERM to a running one first).
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

    /// The last `lines` lines of corral-cri's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `crictl inspect <id>`'s status object.
    pub fn container_status(&self, id: &str) -> serde_json::Value {
        self.crictl().json(&["inspect", id])["status"].clone()
    }

    /// Waits until container `id` is in `state` (`CONTAINER_RUNNING`, ...); its status then.
    pub fn wait_container_state(&self, id: &str, state: &str) -> serde_json::Value {
        crate::wait_until(&format!("container {id} {state}"), START_TIMEOUT, || {
            let s = self.container_status(id);
            (s["state"] == state).then_some(s)
        })
    }

    /// A pod's IP as `crictl inspectp` reports it.
    pub fn pod_ip(&self, pod: &str) -> String {
        let v = self.crictl().json(&["inspectp", pod]);
        v["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs a pod from `pod_config` and one container in it from `container_config`, started
    /// and running; returns (pod id, container id).
    pub fn run_pod_with(&self, pod_cfg: &Path, ctr_cfg: &Path) -> (String, String) {
        let c = self.crictl();
        let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
        let id = c.ok(&[
            "create",
            &pod,
            ctr_cfg.to_str().unwrap(),
            pod_cfg.to_str().unwrap(),
        ]);
        c.ok(&["start", &id]);
        self.wait_container_state(&id, "CONTAINER_RUNNING");
        (pod, id)
    }

    /// The entries of corral-cri's network namespace directory (one per pod with a network).
    pub fn netns_entries(&self) -> Vec<String> {
        dir_entries(&self.root().join("netns"))
    }

    /// The entries of corral-cri's per-pod file directory.
    pub fn sandbox_dirs(&self) -> Vec<String> {
        dir_entries(&self.root().join("sandboxes"))
    }

    /// The addresses host-local holds for the node's network (its data files named by IP).
    pub fn ipam_allocations(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(format!("corral-{}", self.bridge()));
        dir_entries(&dir)
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Runs `f` with a client of corral-cri's RuntimeService, for what crictl cannot send
    /// (requests it refuses itself, ReopenContainerLog) or for the calls' exact answers.
    pub fn runtime_api<T>(
        &self,
        f: impl AsyncFnOnce(&mut RuntimeServiceClient<tonic::transport::Channel>) -> T,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let channel = protocol::grpc::unix::connect(self.socket())
                .await
                .unwrap_or_else(|e| panic!("connect to corral-cri: {e}"));
            let mut client = RuntimeServiceClient::new(channel);
            f(&mut client).await
        })
    }

    /// ReopenContainerLog through the CRI API (crictl has no command for it).
    pub fn reopen_container_log(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime_api(async |client| {
            let mut req = tonic::Request::new(ReopenContainerLogRequest {
                container_id: id.to_string(),
            });
            req.set_timeout(Duration::from_secs(30));
            client.reopen_container_log(req).await.map(|_| ())
        })
    }

    /// Writes a pod sandbox config for `crictl runp` and returns its path.
    pub fn pod_config(&self, name: &str, extra: serde_json::Value) -> PathBuf {
        let mut pod = serde_json::json!({
            "metadata": { "name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 0 },
            "log_directory": self.dir.join("logs").join(name),
            "linux": {},
        });
        merge(&mut pod, extra);
        let path = self.dir.join(format!("pod-{name}.json"));
        fs::write(&path, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        path
    }

    /// Writes a container config (busybox test image, `command`) and returns its path.
    pub fn container_config(
        &self,
        name: &str,
        command: &[&str],
        extra: serde_json::Value,
    ) -> PathBuf {
        let mut c = serde_json::json!({
            "metadata": { "name": name },
            "image": { "image": image::IMAGE_REF },
            "command": command,
            "log_path": format!("{name}.log"),
            "linux": {},
        });
        merge(&mut c, extra);
        let path = self.dir.join(format!("ctr-{name}.json"));
        fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        path
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- corral-cri log (last 60 lines) ---\n{}",
                self.log_tail(60)
            );
        }
        if self.child.is_some() {
            let c = self.crictl();
            let _ = c.run(&["rmp", "-fa"]);
        }
        self.stop();
        self.remove_leftovers();
        // The bridge goes with `self.net`.
        unmount_below(&self.dir);
    }
}

impl CriNode {
    /// What a failed test may leave in corrald's `k8s.io` (tasks, containers) is removed through
    /// ctr, and a shim that still runs after that is killed: a failing test leaks nothing.
    fn remove_leftovers(&self) {
        let ctr = self.corrald.ctr_in(K8S_NAMESPACE);
        for t in ctr.tasks() {
            let _ = ctr.run(&["tasks", "rm", "-f", &t.id]);
        }
        let out = ctr.run(&["containers", "ls", "-q"]);
        for id in out.stdout_str().split_whitespace() {
            let _ = ctr.run(&["containers", "rm", id]);
        }
        for p in crate::leaks::daemon_shim_processes(&self.corrald.address(), K8S_NAMESPACE) {
            // SAFETY: kill(2) of a shim this node's daemon started.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Our pause image's OCI layout tar, built once per process.
pub fn pause_tar() -> &'static [u8] {
    static TAR: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAR.get_or_init(|| {
        image::pause_image_tar(PAUSE_REF).unwrap_or_else(|e| panic!("pause image: {e}"))
    })
}

fn dir_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A private CNI bridge network for one node: its conflist (bridge, host-local IPAM with
/// state in `<dir>/ipam`, portmap, loopback) in `<dir>/net.d`, a bridge name and a `/24` of its
/// own so that parallel tests never share either. The bridge is deleted on drop.
pub struct CniNetwork {
    dir: PathBuf,
    bridge: String,
    subnet: String,
}

impl CniNetwork {
    /// Writes the network's configuration below `dir`.
    pub fn create(dir: &Path) -> CniNetwork {
        let n = node_number();
        let net = CniNetwork {
            dir: dir.to_path_buf(),
            bridge: format!("crit{n}"),
            subnet: format!("10.{}.{}.0/24", 200 + n / 250 % 50, n % 250),
        };
        fs::create_dir_all(net.conf_dir()).unwrap();
        net.set_config(&net.config());
        net
    }

    /// The CNI configuration directory (`conf_dir`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// The pod network's subnet (`10.x.y.0/24`).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The bridge on the host.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// host-local's data directory.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// The network's default config: a bridge with host-local IPAM, portmap and loopback.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("corral-{}", self.bridge),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": self.subnet }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": self.ipam_dir(),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" },
            ],
        })
    }

    /// Replaces the config (the only file of the conf dir), atomically.
    pub fn set_config(&self, conflist: &serde_json::Value) {
        let net = self.conf_dir();
        let tmp = net.join(".10-test.conflist.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(conflist).unwrap()).unwrap();
        fs::rename(&tmp, net.join("10-test.conflist")).unwrap();
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// Writes a crictl configuration file pointing both endpoints at `socket`.
pub fn write_crictl_config(path: &Path, socket: &Path) {
    let crictl = format!(
        "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: 60\n",
        socket.display()
    );
    fs::write(path, crictl).unwrap();
}

/// Imports the busybox test image and our pause image through `ctr` (in `k8s.io`), with the
/// tars written to `scratch` for the time of the import.
fn import_images(ctr: &Ctr, scratch: &Path) {
    let busybox = scratch.join("busybox.tar");
    fs::write(&busybox, image::test_image_tar()).unwrap();
    ctr.ok(&["images", "import", busybox.to_str().unwrap()]);
    let pause = scratch.join("pause.tar");
    fs::write(&pause, pause_tar()).unwrap();
    ctr.ok(&["images", "import", pause.to_str().unwrap()]);
    let _ = fs::remove_file(busybox);
    let _ = fs::remove_file(pause);
}

/// A private node served by containerd 1.6's own CRI plugin (`io.containerd.grpc.v1.cri`, on
/// the daemon socket), set up as [`CriNode`] is: the same [`CniNetwork`] chain on a bridge and
/// /24 of its own, our pause image as `sandbox_image` and the busybox test image in `k8s.io`.
/// The shims are containerd's `containerd-shim-runc-v2`, the CRI plugin's default runtime.
///
/// On drop every pod is removed through crictl (CNI DEL included), whatever is left in `k8s.io`
/// through ctr, shims of this daemon still alive are killed, the bridge is deleted, and the
/// [`Containerd`] guard removes the rest. Only objects of this daemon are touched: runc's state
/// dir for `k8s.io` (`/run/containerd/runc/k8s.io`) is shared with any other containerd.
pub struct ContainerdCri {
    // Dropped after Drop::drop removed the pods: the bridge, then containerd and its directory.
    net: CniNetwork,
    containerd: Containerd,
}

impl ContainerdCri {
    /// Starts containerd with its CRI plugin, writes the network, imports the images, and waits
    /// until the plugin reports the runtime and the network ready and lists both images.
    pub fn start_with(options: CriOptions) -> ContainerdCri {
        let containerd = Containerd::start_with(
            Target {
                daemon: Daemon::Containerd,
                runtime: crate::Runtime::Runc,
            },
            crate::containerd::Options {
                log_level: options.log_level,
                import_image: false,
                runc_v2_is_corral: false,
                runc_timeout: None,
                cri_plugin: true,
                message_limits: None,
            },
        );
        let dir = containerd.dir().to_path_buf();
        if let Some(hosts) = &options.registry_hosts {
            // The plugin's `registry.config_path`, read at each pull.
            std::os::unix::fs::symlink(hosts, dir.join("certs.d"))
                .expect("cannot link the registry hosts directory");
        }
        // `<dir>/net.d`, the plugin's `conf_dir`, which it watches: CniNetwork writes atomically.
        let net = CniNetwork::create(&dir);
        let node = ContainerdCri { net, containerd };
        write_crictl_config(&dir.join("crictl.yaml"), &node.socket());
        import_images(&Ctr::new(&node.socket(), K8S_NAMESPACE), &dir);
        let crictl = node.crictl();
        wait_until(
            "containerd's CRI plugin: runtime and network ready, images listed",
            START_TIMEOUT,
            || {
                let info = crictl.run(&["info"]);
                if !info.success() {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(&info.stdout).ok()?;
                let conditions = v["status"]["conditions"].as_array()?.clone();
                let ready = ["RuntimeReady", "NetworkReady"].iter().all(|c| {
                    conditions
                        .iter()
                        .any(|x| x["type"] == *c && x["status"] == true)
                });
                let images = crictl.run(&["images"]);
                (ready
                    && images.success()
                    && images.stdout.contains("registry.k8s.io/pause")
                    && images.stdout.contains("docker.io/library/busybox"))
                .then_some(())
            },
        );
        node
    }

    /// The CRI socket: containerd's own.
    pub fn socket(&self) -> PathBuf {
        self.containerd.address()
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// containerd's temp dir (also where callers put pod logs).
    pub fn dir(&self) -> &Path {
        self.containerd.dir()
    }

    /// The pod network's subnet (`10.x.y.0/24`).
    pub fn subnet(&self) -> &str {
        self.net.subnet()
    }

    pub fn pid(&self) -> Option<u32> {
        self.containerd.pid()
    }

    /// `crictl` against this node.
    pub fn crictl(&self) -> Crictl {
        Crictl::new(self.dir().join("crictl.yaml"))
    }
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        if self.containerd.pid().is_some() {
            let _ = self.crictl().run(&["rmp", "-fa"]);
            let ctr = Ctr::new(&self.socket(), K8S_NAMESPACE);
            for t in ctr.tasks() {
                let _ = ctr.run(&["tasks", "rm", "-f", &t.id]);
            }
            let out = ctr.run(&["containers", "ls", "-q"]);
            for id in out.stdout_str().split_whitespace() {
                let _ = ctr.run(&["containers", "rm", id]);
            }
        }
        for p in crate::leaks::daemon_shim_processes(&self.socket(), K8S_NAMESPACE) {
            // SAFETY: kill(2) of a shim this node's containerd started.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
        }
        // The bridge goes with `self.net`.
    }
}

fn node_number() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Distinct across the test binaries that run at once (pid) and within one (counter).
    (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_500
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// `crictl` with a private config (endpoints of one node).
#[derive(Clone)]
pub struct Crictl {
    config: PathBuf,
    timeout: Duration,
}

pub struct CrictlOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl CrictlOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn describe(&self) -> String {
        format!(
            "`crictl {}` → {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

impl Crictl {
    /// crictl with the configuration file `config` (see [`write_crictl_config`]).
    pub fn new(config: PathBuf) -> Crictl {
        Crictl {
            config,
            timeout: Duration::from_secs(90),
        }
    }

    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("crictl");
        c.arg("--config").arg(&self.config);
        c.args(args.iter().map(AsRef::as_ref));
        c
    }

    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> CrictlOutput {
        let mut c = self.command(args);
        c.stdin(Stdio::null());
        let out = cmd::output_with_timeout(&mut c, self.timeout)
            .unwrap_or_else(|e| panic!("cannot run crictl: {e} (is crictl installed?)"));
        CrictlOutput {
            status: if out.timed_out {
                None
            } else {
                out.status.code()
            },
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        }
    }

    /// Runs crictl and returns its trimmed stdout; panics with the whole output on failure.
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(out.success(), "crictl failed: {}", out.describe());
        out.stdout.trim().to_string()
    }

    /// `crictl <what> -o json`, parsed.
    pub fn json<S: AsRef<str>>(&self, args: &[S]) -> serde_json::Value {
        // crictl takes flags before positional arguments only.
        let mut all: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let at = 1.min(all.len());
        all.splice(at..at, ["-o".to_string(), "json".to_string()]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("crictl json: {e}: {text}"))
    }
}
