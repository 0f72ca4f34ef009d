//! The CRI block (issue 11): corral-cri + corrald + our shim beside containerd 1.6's own CRI
//! plugin + `containerd-shim-runc-v2`, on the same machine, both driven through the CRI API by
//! this process — tonic over the unix socket, one HTTP/2 connection per runtime as kubelet keeps —
//! so that no client process start-up is part of any figure.
//!
//! Both nodes are set up by the harness the same way ([`CriNode`], [`ContainerdCri`]): the same
//! CNI chain (bridge + host-local, portmap, loopback) on a bridge and /24 of their own, our pause
//! image as `registry.k8s.io/pause:3.10`, the busybox test image, logging at `info`. Every pod
//! and container gets the same config, shaped as kubelet sends it (pid namespace CONTAINER, a
//! log directory, labels); the container runs `sleep 3600`.
//!
//! Figures, runs interleaved containerd/corral:
//! - pod start: RunPodSandbox → CreateContainer → StartContainer → ContainerStatus says
//!   RUNNING, one pod at a time (removed untimed after each), with the time of each call;
//! - ExecSync of `/bin/true` into a running container, one at a time;
//! - `crictl exec` of `/bin/true` and 64 MiB through `crictl port-forward`, over SPDY and
//!   over WebSocket (`crate::cristream`);
//! - P (30) pods started at once (P concurrent sequences of the three calls on the one
//!   connection), wall time until all P containers are RUNNING; memory of the runtime's own
//!   processes with P pods (daemons and shims; pause and `sleep` are the same on both sides and
//!   not counted); teardown (StopPodSandbox + RemovePodSandbox of all P at once, wall); memory
//!   of the daemons after teardown, once every shim has exited.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use integration::{ContainerdCri, CriNode, CriOptions, IMAGE_REF, leaks};
use protocol::grpc::runtime::v1 as api;
use protocol::grpc::tonic;
use protocol::grpc::tonic::transport::Channel;

use api::runtime_service_client::RuntimeServiceClient;

use crate::crifloor::CniFloor;
use crate::floor::RuncFloor;
use crate::stats::{Row, Samples, Single, Unit};
use crate::{Config, Report, mem_of, ms};

/// Deadline of one CRI call.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for a started container to be reported RUNNING, and for shims to exit after a
/// teardown.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The namespace both CRI implementations keep pods in.
const K8S_NS: &str = "k8s.io";

/// One runtime under test.
pub(crate) enum Node {
    Containerd(ContainerdCri),
    Corral(CriNode),
}

impl Node {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Node::Containerd(_) => "containerd",
            Node::Corral(_) => "corral-cri",
        }
    }

    fn socket(&self) -> PathBuf {
        match self {
            Node::Containerd(n) => n.socket(),
            Node::Corral(n) => n.socket(),
        }
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        match self {
            Node::Containerd(n) => n.dir().join("logs"),
            Node::Corral(n) => n.dir().join("logs"),
        }
    }

    /// crictl against this node.
    pub(crate) fn crictl(&self) -> integration::Crictl {
        match self {
            Node::Containerd(n) => n.crictl(),
            Node::Corral(n) => n.crictl(),
        }
    }

    /// The daemons' pids: containerd; or corrald and corral-cri.
    fn daemons(&self) -> Vec<(&'static str, u32)> {
        match self {
            Node::Containerd(n) => n.pid().map(|p| ("containerd", p)).into_iter().collect(),
            Node::Corral(n) => [
                n.corrald().pid().map(|p| ("corrald", p)),
                n.pid().map(|p| ("corral-cri", p)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// The daemons' log files.
    fn logs(&self) -> Vec<PathBuf> {
        match self {
            Node::Containerd(n) => vec![n.containerd().log_path()],
            Node::Corral(n) => vec![n.log_path(), n.corrald().log_path()],
        }
    }

    /// Copies the daemons' logs to `$TMPDIR/corral-bench-logs/<label>-<pid>-<n>/` (the node's
    /// own directory goes away with it) and returns that directory.
    fn keep_logs(&self) -> Option<PathBuf> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dest = std::env::temp_dir().join("corral-bench-logs").join(format!(
            "{}-{}-{}",
            self.label(),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dest).ok()?;
        for log in self.logs() {
            let name = log.file_name()?.to_owned();
            std::fs::copy(&log, dest.join(name)).ok()?;
        }
        Some(dest)
    }

    /// Serving shims of this node's daemon (not short-lived `start`/`delete` invocations).
    fn shims(&self) -> Vec<u32> {
        let address = match self {
            Node::Containerd(n) => n.socket(),
            Node::Corral(n) => n.corrald().address(),
        };
        leaks::daemon_shim_processes(&address, K8S_NS)
            .into_iter()
            .filter(|p| p.action().is_none())
            .map(|p| p.pid)
            .collect()
    }
}

pub(crate) fn side<'a>(row: &'a mut Row, node: &Node) -> &'a mut Samples {
    match node {
        Node::Containerd(_) => &mut row.containerd,
        Node::Corral(_) => &mut row.corral,
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

fn status_err(what: &str, s: tonic::Status) -> String {
    format!("{what}: {:?}: {}", s.code(), s.message())
}

/// A started pod, and how long each step took.
pub(crate) struct PodStart {
    pub(crate) pod: String,
    pub(crate) container: String,
    run_pod: Duration,
    create: Duration,
    start: Duration,
    /// From StartContainer's answer until ContainerStatus said RUNNING.
    running: Duration,
    total: Duration,
}

/// The pod and container configs, identical for both runtimes.
fn pod_config(name: &str, log_dir: &std::path::Path) -> api::PodSandboxConfig {
    let pid_per_container = api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "bench".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.join(name).display().to_string(),
        labels: [("app".to_string(), "bench".to_string())].into(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(pid_per_container),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(command: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "app".to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: IMAGE_REF.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|c| c.to_string()).collect(),
        log_path: "app/0.log".to_string(),
        labels: [("app".to_string(), "bench".to_string())].into(),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    pid: api::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A CRI client of one node.
#[derive(Clone)]
pub(crate) struct Client(RuntimeServiceClient<Channel>);

impl Client {
    async fn connect(node: &Node) -> Result<Client, String> {
        let ch = protocol::grpc::unix::connect(node.socket())
            .await
            .map_err(|e| format!("{}: connect {}: {e}", node.label(), node.socket().display()))?;
        let mut c = RuntimeServiceClient::new(ch);
        let v = c
            .version(request(api::VersionRequest {
                version: "v1".into(),
            }))
            .await
            .map_err(|s| status_err("Version", s))?
            .into_inner();
        if v.runtime_api_version != "v1" {
            return Err(format!("{}: runtime API {:?}", node.label(), v));
        }
        Ok(Client(c))
    }

    /// RunPodSandbox → CreateContainer → StartContainer → ContainerStatus until RUNNING.
    async fn start_pod(&self, name: &str, log_dir: &std::path::Path) -> Result<PodStart, String> {
        self.start_pod_running(name, log_dir, &["sleep", "3600"])
            .await
    }

    /// [`Client::start_pod`] with the container running `command`.
    pub(crate) async fn start_pod_running(
        &self,
        name: &str,
        log_dir: &std::path::Path,
        command: &[&str],
    ) -> Result<PodStart, String> {
        let mut c = self.0.clone();
        let config = pod_config(name, log_dir);
        let t0 = Instant::now();
        let pod = c
            .run_pod_sandbox(request(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .await
            .map_err(|s| status_err("RunPodSandbox", s))?
            .into_inner()
            .pod_sandbox_id;
        let t1 = Instant::now();
        let container = c
            .create_container(request(api::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(command)),
                sandbox_config: Some(config),
            }))
            .await
            .map_err(|s| status_err("CreateContainer", s))?
            .into_inner()
            .container_id;
        let t2 = Instant::now();
        c.start_container(request(api::StartContainerRequest {
            container_id: container.clone(),
        }))
        .await
        .map_err(|s| status_err("StartContainer", s))?;
        let t3 = Instant::now();
        loop {
            let st = c
                .container_status(request(api::ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                }))
                .await
                .map_err(|s| status_err("ContainerStatus", s))?
                .into_inner()
                .status
                .unwrap_or_default();
            match api::ContainerState::try_from(st.state) {
                Ok(api::ContainerState::ContainerRunning) => break,
                Ok(api::ContainerState::ContainerExited) => {
                    return Err(format!(
                        "container of {name} exited ({}, {}: {})",
                        st.exit_code, st.reason, st.message
                    ));
                }
                _ if t3.elapsed() > STATE_TIMEOUT => {
                    return Err(format!("container of {name} not RUNNING: {st:?}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        let t4 = Instant::now();
        Ok(PodStart {
            pod,
            container,
            run_pod: t1 - t0,
            create: t2 - t1,
            start: t3 - t2,
            running: t4 - t3,
            total: t4 - t0,
        })
    }

    /// StopPodSandbox + RemovePodSandbox, as kubelet ends a pod.
    pub(crate) async fn remove_pod(&self, pod: &str) -> Result<(), String> {
        let mut c = self.0.clone();
        c.stop_pod_sandbox(request(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        }))
        .await
        .map_err(|s| status_err("StopPodSandbox", s))?;
        c.remove_pod_sandbox(request(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        }))
        .await
        .map_err(|s| status_err("RemovePodSandbox", s))?;
        Ok(())
    }

    /// ExecSync `/bin/true` (with a timeout, as kubelet's exec probes have); its wall time.
    async fn exec_true(&self, container: &str) -> Result<Duration, String> {
        let mut c = self.0.clone();
        let t = Instant::now();
        let r = c
            .exec_sync(request(api::ExecSyncRequest {
                container_id: container.to_string(),
                cmd: vec!["/bin/true".into()],
                timeout: 10,
            }))
            .await
            .map_err(|s| status_err("ExecSync", s))?
            .into_inner();
        let el = t.elapsed();
        if r.exit_code != 0 {
            return Err(format!(
                "ExecSync /bin/true exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            ));
        }
        Ok(el)
    }

    /// How many containers are RUNNING, per ListContainers.
    async fn running(&self) -> Result<usize, String> {
        let mut c = self.0.clone();
        let list = c
            .list_containers(request(api::ListContainersRequest { filter: None }))
            .await
            .map_err(|s| status_err("ListContainers", s))?
            .into_inner();
        Ok(list
            .containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .count())
    }

    /// How many of `pods` ListPodSandbox still lists.
    async fn listed(&self, pods: &[String]) -> Result<usize, String> {
        let mut c = self.0.clone();
        let list = c
            .list_pod_sandbox(request(api::ListPodSandboxRequest { filter: None }))
            .await
            .map_err(|s| status_err("ListPodSandbox", s))?
            .into_inner();
        Ok(list.items.iter().filter(|p| pods.contains(&p.id)).count())
    }
}

pub(crate) fn next_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Rows of the block, filled as it goes.
struct Rows {
    start: Row,
    run_pod: Row,
    create: Row,
    start_call: Row,
    until_running: Row,
    exec: Row,
    many: Row,
    many_teardown: Row,
    rss_total: Row,
    pss_total: Row,
    daemon_rss: Row,
    daemon_pss: Row,
    shim_pss: Row,
    shims: Row,
    after_rss: Row,
    after_pss: Row,
    /// corral's two daemons apart.
    corrald_rss: Samples,
    cri_rss: Samples,
    corrald_after: Samples,
    cri_after: Samples,
    /// `crictl exec` and port-forward (`crate::cristream`).
    streaming: crate::cristream::Rows,
    /// The floor: CNI ADDs, one runc create + start, and a pod's sum of them.
    floor_cni: Samples,
    floor_runc: Samples,
    floor_pod: Samples,
}

impl Rows {
    fn new(pods: usize) -> Rows {
        Rows {
            start: Row::new(
                "pod start: RunPodSandbox → CreateContainer → StartContainer → RUNNING",
                Unit::Millis,
                Some(0.5),
            ),
            run_pod: Row::new("  of which RunPodSandbox", Unit::Millis, None),
            create: Row::new("  of which CreateContainer", Unit::Millis, None),
            start_call: Row::new("  of which StartContainer", Unit::Millis, None),
            until_running: Row::new(
                "  of which ContainerStatus until RUNNING",
                Unit::Millis,
                None,
            ),
            exec: Row::new("ExecSync `/bin/true`", Unit::Millis, None),
            many: Row::new(
                format!("{pods} pods started concurrently, until all RUNNING (wall)"),
                Unit::Seconds,
                Some(0.5),
            ),
            many_teardown: Row::new(
                format!("teardown of {pods} pods (StopPodSandbox + RemovePodSandbox, concurrent)"),
                Unit::Seconds,
                None,
            ),
            rss_total: Row::new(
                format!("RSS of daemons + shims with {pods} pods (sum)"),
                Unit::MegaBytes,
                Some(1.0 / 3.0),
            ),
            pss_total: Row::new(
                format!("Pss of daemons + shims with {pods} pods (sum)"),
                Unit::MegaBytes,
                Some(1.0 / 3.0),
            ),
            daemon_rss: Row::new(
                format!("daemon RSS with {pods} pods (containerd; corrald + corral-cri)"),
                Unit::MegaBytes,
                None,
            ),
            daemon_pss: Row::new(
                format!("daemon Pss with {pods} pods"),
                Unit::MegaBytes,
                None,
            ),
            shim_pss: Row::new(
                format!("Pss of all shims with {pods} pods"),
                Unit::MegaBytes,
                None,
            ),
            shims: Row::new(format!("shim processes for {pods} pods"), Unit::Count, None),
            after_rss: Row::new(
                "daemon RSS after teardown (no shim left)",
                Unit::MegaBytes,
                None,
            ),
            after_pss: Row::new("daemon Pss after teardown", Unit::MegaBytes, None),
            corrald_rss: Samples::default(),
            cri_rss: Samples::default(),
            corrald_after: Samples::default(),
            cri_after: Samples::default(),
            streaming: crate::cristream::Rows::new(),
            floor_cni: Samples::default(),
            floor_runc: Samples::default(),
            floor_pod: Samples::default(),
        }
    }
}

/// (RSS MB, Pss MB) summed over `pids`.
fn rss_pss(pids: &[u32]) -> (f64, f64) {
    pids.iter().fold((0.0, 0.0), |(r, p), &pid| {
        let (pss, _, _, rss) = mem_of(pid);
        (r + rss / 1024.0, p + pss / 1024.0)
    })
}

/// The pods started but not yet removed, removed at the end of a failed step.
async fn remove_all(client: &Client, pods: &[String]) -> Vec<Result<(), String>> {
    let tasks: Vec<_> = pods
        .iter()
        .map(|p| {
            let c = client.clone();
            let p = p.clone();
            tokio::spawn(async move { c.remove_pod(&p).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// One round of the P-pod figures on one node.
async fn many_round(
    cfg: &Config,
    node: &Node,
    client: &Client,
    rows: &mut Rows,
    report: &mut Report,
) -> Result<(), String> {
    let n = cfg.cri.pods;
    let log_dir = node.log_dir();
    // Shims of pods an earlier failed round could not remove; they stay out of the figures.
    let shims_before = node.shims().len();
    report.quiet(cfg, &format!("CRI: {n} pods at once, {}", node.label()));
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            let name = next_name("many");
            let dir = log_dir.clone();
            tokio::spawn(async move { c.start_pod(&name, &dir).await })
        })
        .collect();
    let mut started = Vec::new();
    let mut failed = None;
    for task in tasks {
        match task.await.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(p) => started.push(p),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    let el = t.elapsed();
    let pods: Vec<String> = started.iter().map(|p| p.pod.clone()).collect();
    if let Some(e) = failed {
        remove_all(client, &pods).await;
        return Err(format!("starting {n} pods at once: {e}"));
    }
    let up = client.running().await?;
    if up < n {
        remove_all(client, &pods).await;
        return Err(format!("{up} of {n} containers RUNNING after all started"));
    }
    side(&mut rows.many, node).push(el.as_secs_f64());

    // Memory with the P pods running.
    let daemons = node.daemons();
    let shims = node.shims();
    if shims_before > 0 {
        report.notes.push(format!(
            "{}: {shims_before} shims of pods an earlier round left are counted in the memory \
             with {n} pods",
            node.label()
        ));
    }
    let daemon_pids: Vec<u32> = daemons.iter().map(|d| d.1).collect();
    let (d_rss, d_pss) = rss_pss(&daemon_pids);
    let (s_rss, s_pss) = rss_pss(&shims);
    side(&mut rows.daemon_rss, node).push(d_rss);
    side(&mut rows.daemon_pss, node).push(d_pss);
    side(&mut rows.shim_pss, node).push(s_pss);
    side(&mut rows.shims, node).push(shims.len() as f64);
    side(&mut rows.rss_total, node).push(d_rss + s_rss);
    side(&mut rows.pss_total, node).push(d_pss + s_pss);
    for (what, pid) in &daemons {
        let rss = mem_of(*pid).3 / 1024.0;
        match *what {
            "corrald" => rows.corrald_rss.push(rss),
            "corral-cri" => rows.cri_rss.push(rss),
            _ => {}
        }
    }

    report.quiet(cfg, &format!("CRI: teardown of {n} pods, {}", node.label()));
    let t = Instant::now();
    let outs = remove_all(client, &pods).await;
    let el = t.elapsed();
    if let Some(Err(e)) = outs.into_iter().find(Result::is_err) {
        // Once more, for what failed (kubelet retries too); the round is lost either way.
        remove_all(client, &pods).await;
        return Err(format!("teardown: {e}"));
    }
    let left = client.listed(&pods).await?;
    if left != 0 {
        return Err(format!("{left} pods listed after teardown"));
    }
    side(&mut rows.many_teardown, node).push(el.as_secs_f64());

    // Memory after teardown, once the shims are gone.
    let t = Instant::now();
    while node.shims().len() > shims_before {
        if t.elapsed() > STATE_TIMEOUT {
            return Err(format!(
                "{} shims still running {STATE_TIMEOUT:?} after teardown ({shims_before} before \
                 the round)",
                node.shims().len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rss, pss) = rss_pss(&daemon_pids);
    side(&mut rows.after_rss, node).push(rss);
    side(&mut rows.after_pss, node).push(pss);
    for (what, pid) in &daemons {
        let rss = mem_of(*pid).3 / 1024.0;
        match *what {
            "corrald" => rows.corrald_after.push(rss),
            "corral-cri" => rows.cri_after.push(rss),
            _ => {}
        }
    }
    Ok(())
}

async fn run(cfg: &Config, nodes: &[Node; 2], report: &mut Report) -> Result<Rows, String> {
    let mut rows = Rows::new(cfg.cri.pods);
    let mut clients = Vec::new();
    for node in nodes {
        clients.push(Client::connect(node).await?);
    }
    // Warm-up: page cache, first-use paths (image config, CNI plugin binaries) on both sides.
    for (node, client) in nodes.iter().zip(&clients) {
        for _ in 0..2 {
            let p = client
                .start_pod(&next_name("warm"), &node.log_dir())
                .await?;
            client.exec_true(&p.container).await?;
            client.remove_pod(&p.pod).await?;
        }
    }

    println!(
        "  pod start, one at a time ({} per runtime), and its floor",
        cfg.cri.starts
    );
    let mut cni_floor = CniFloor::new();
    let mut runc_floor = RuncFloor::new();
    cni_floor.add()?;
    runc_floor.create_start();
    report.quiet(cfg, "CRI: pod start");
    for i in 0..cfg.cri.starts {
        if i > 0 && i % 10 == 0 {
            report.quiet(cfg, "CRI: pod start (cont.)");
        }
        let cni = cni_floor.add()?;
        let pause = runc_floor.create_start();
        let app = runc_floor.create_start();
        rows.floor_cni.push(ms(cni));
        rows.floor_runc.push(ms(pause));
        rows.floor_runc.push(ms(app));
        rows.floor_pod.push(ms(cni + pause + app));
        for (node, client) in nodes.iter().zip(&clients) {
            let p = client.start_pod(&next_name("one"), &node.log_dir()).await?;
            side(&mut rows.start, node).push(ms(p.total));
            side(&mut rows.run_pod, node).push(ms(p.run_pod));
            side(&mut rows.create, node).push(ms(p.create));
            side(&mut rows.start_call, node).push(ms(p.start));
            side(&mut rows.until_running, node).push(ms(p.running));
            client.remove_pod(&p.pod).await?;
        }
    }

    println!("  ExecSync /bin/true ({} per runtime)", cfg.cri.execs);
    let mut targets = Vec::new();
    for (node, client) in nodes.iter().zip(&clients) {
        targets.push(
            client
                .start_pod(&next_name("exec"), &node.log_dir())
                .await?,
        );
    }
    report.quiet(cfg, "CRI: ExecSync");
    for i in 0..cfg.cri.execs {
        if i > 0 && i % 25 == 0 {
            report.quiet(cfg, "CRI: ExecSync (cont.)");
        }
        for ((node, client), p) in nodes.iter().zip(&clients).zip(&targets) {
            let el = client.exec_true(&p.container).await?;
            side(&mut rows.exec, node).push(ms(el));
        }
    }
    for (client, p) in clients.iter().zip(&targets) {
        client.remove_pod(&p.pod).await?;
    }

    crate::cristream::run(cfg, nodes, &clients, &mut rows.streaming, report).await?;

    println!(
        "  {} pods at once, memory, teardown ({} rounds)",
        cfg.cri.pods, cfg.rounds
    );
    for r in 0..cfg.rounds {
        for (node, client) in nodes.iter().zip(&clients) {
            if let Err(e) = many_round(cfg, node, client, &mut rows, report).await {
                let logs = node
                    .keep_logs()
                    .map(|d| format!(" Logs: {}.", d.display()))
                    .unwrap_or_default();
                eprintln!("  {}: round {} failed: {e}{logs}", node.label(), r + 1);
                report.notes.push(format!(
                    "**CRI round {} on {} failed** (its remaining samples are missing): {}.{logs}",
                    r + 1,
                    node.label(),
                    e.lines().take(12).collect::<Vec<_>>().join(" / ")
                ));
            }
        }
    }
    Ok(rows)
}

/// The CRI block; see the module docs.
pub fn block(cfg: &Config, report: &mut Report) {
    println!(
        "== CRI: corral-cri + corrald beside containerd's CRI plugin ({} starts, {} execs, {} pods × {} rounds)",
        cfg.cri.starts, cfg.cri.execs, cfg.cri.pods, cfg.rounds
    );
    let cri_bin = integration::cri::corral_cri_path();
    assert!(
        cri_bin.is_file(),
        "corral-cri not found at {} (set CORRAL_CRI_BIN to a release build)",
        cri_bin.display()
    );
    let critest = if cfg.cri.critest_n == 0 {
        report
            .notes
            .push("critest -benchmark not run (BENCH_CRITEST_N=0).".into());
        None
    } else {
        match crate::critest::Setup::new(cfg.cri.critest_n) {
            Ok(s) => Some(s),
            Err(e) => {
                report
                    .notes
                    .push(format!("critest -benchmark not run: {e}"));
                None
            }
        }
    };
    let options = CriOptions {
        log_level: cfg.cri.log_level,
        registry_hosts: critest.as_ref().map(|c| c.hosts_dir()),
        ..CriOptions::default()
    };
    let nodes = [
        Node::Containerd(ContainerdCri::start_with(options.clone())),
        Node::Corral(CriNode::start_with(options)),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start a tokio runtime");
    let rows = rt
        .block_on(run(cfg, &nodes, report))
        .unwrap_or_else(|e| panic!("CRI block: {e}"));
    report.close_block();
    let Rows {
        start,
        run_pod,
        create,
        start_call,
        until_running,
        exec,
        many,
        many_teardown,
        rss_total,
        pss_total,
        daemon_rss,
        daemon_pss,
        shim_pss,
        shims,
        after_rss,
        after_pss,
        corrald_rss,
        cri_rss,
        corrald_after,
        cri_after,
        streaming,
        floor_cni,
        floor_runc,
        floor_pod,
    } = rows;
    let mut all = vec![start, run_pod, create, start_call, until_running, exec];
    all.extend(streaming.into_rows());
    all.extend([
        many,
        many_teardown,
        rss_total,
        pss_total,
        daemon_rss,
        daemon_pss,
        shim_pss,
        shims,
        after_rss,
        after_pss,
    ]);
    println!("{}", crate::cri_table(&all));
    report.cri.extend(all);
    let p = cfg.cri.pods;
    for (figure, samples) in [
        (format!("corrald RSS with {p} pods"), corrald_rss),
        (format!("corral-cri RSS with {p} pods"), cri_rss),
        ("corrald RSS after teardown".to_string(), corrald_after),
        ("corral-cri RSS after teardown".to_string(), cri_after),
    ] {
        report.cri_parts.push(Single {
            figure,
            unit: Unit::MegaBytes,
            samples,
        });
    }
    for (figure, samples) in [
        (
            "netns ready → CNI ADD of `lo` and of the node's chain (bridge + host-local, portmap, \
             loopback: 4 plugin execs)",
            floor_cni,
        ),
        (
            "`runc create` + `runc start` of `sleep` (prepared rootfs, no overlay mount)",
            floor_runc,
        ),
        (
            "a pod start's floor: the CNI ADDs + 2 × (`runc create` + `runc start`)",
            floor_pod,
        ),
    ] {
        report.cri_floor.push(Single {
            figure: figure.to_string(),
            unit: Unit::Millis,
            samples,
        });
    }
    drop(rt);
    if let Some(setup) = critest {
        critest_block(cfg, &setup, &nodes, report);
    }
}

/// `critest -benchmark` against each node in turn (see [`crate::critest`]).
fn critest_block(
    cfg: &Config,
    setup: &crate::critest::Setup,
    nodes: &[Node; 2],
    report: &mut Report,
) {
    println!(
        "  critest -benchmark ({} samples per benchmark; pull image {})",
        cfg.cri.critest_n,
        setup.pull_ref()
    );
    let mut figures = Vec::new();
    for node in nodes {
        report.quiet(cfg, &format!("critest -benchmark, {}", node.label()));
        match setup.run(node.label(), &node.socket()) {
            Ok(f) => figures.push(f),
            Err(e) => {
                eprintln!("  critest on {}: {e}", node.label());
                report.notes.push(format!(
                    "**critest -benchmark on {} failed**: {e}",
                    node.label()
                ));
                figures.push(Vec::new());
            }
        }
    }
    report.close_block();
    let rows = crate::critest::rows(&figures[0], &figures[1]);
    println!("{}", crate::cri_table(&rows));
    report.critest.extend(rows);
}
