//! Container churn through corrald's gRPC API, for the soak tests (`make soak`): containers
//! created, started, exec'd and removed as containerd's Go client does it, many at once,
//! without a `ctr` process per step.
//!
//! ```text
//! Snapshots.Prepare(key=id, parent=image's top layer) ─► Containers.Create(spec of a ctr
//! template, cgroup /<ns>/<id>) ─► Tasks.Create(rootfs = the snapshot's mounts) ─► Tasks.Start
//! ─► Tasks.Exec + Start + Wait + DeleteProcess ─► Tasks.Kill(SIGKILL) + Wait ─► Tasks.Delete
//! ─► Containers.Delete ─► Snapshots.Remove
//! ```
//!
//! The template is one container `ctr containers create` made (so the spec is exactly ctr's),
//! removed again once read.

// Each soak test uses its part.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use integration::procstat::{self, ProcStats};
use integration::{Containerd, try_wait_until};
use protocol::grpc::client::Client;
use protocol::grpc::containerd::services::containers::v1 as containers;
use protocol::grpc::containerd::services::leases::v1 as leases;
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use protocol::grpc::containerd::types::Mount;
use protocol::grpc::prost_types::Any;
use protocol::grpc::tonic;

/// Deadline of every call: a stuck daemon fails the soak instead of hanging it.
const CALL: Duration = Duration::from_secs(120);
const PROCESS_SPEC: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// What every container is made from.
#[derive(Clone)]
pub struct Churn {
    client: Client,
    namespace: String,
    spec: serde_json::Value,
    image: String,
    runtime: String,
    snapshotter: String,
    parent: String,
}

fn req<T>(c: &Client, msg: T) -> tonic::Request<T> {
    let mut r = c.req(msg);
    r.set_timeout(CALL);
    r
}

fn failed(id: &str, step: &str) -> impl FnOnce(tonic::Status) -> String {
    let (id, step) = (id.to_string(), step.to_string());
    move |s| format!("{id}: {step}: {:?}: {}", s.code(), s.message())
}

impl Churn {
    /// Reads the template from a container `ctr` creates in `d`'s namespace, then removes it.
    pub async fn new(d: &Containerd) -> Churn {
        let template = d.new_id("template");
        d.ctr().ok(&[
            "containers",
            "create",
            "--runtime",
            d.runtime().name(),
            integration::IMAGE_REF,
            &template,
            "sleep",
            "1000",
        ]);
        let client = Client::connect(d.address(), d.namespace())
            .await
            .expect("connect to the daemon");
        let c = client
            .containers()
            .get(req(
                &client,
                containers::GetContainerRequest {
                    id: template.clone(),
                },
            ))
            .await
            .expect("get the template container")
            .into_inner()
            .container
            .expect("a container");
        let info = client
            .snapshots()
            .stat(req(
                &client,
                snapshots::StatSnapshotRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: c.snapshot_key.clone(),
                },
            ))
            .await
            .expect("stat the template's snapshot")
            .into_inner()
            .info
            .expect("snapshot info");
        let spec = serde_json::from_slice(&c.spec.as_ref().expect("a spec").value)
            .expect("the spec is JSON");
        d.ctr().ok(&["containers", "rm", &template]);
        Churn {
            client,
            namespace: d.namespace().to_string(),
            spec,
            image: c.image,
            runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
            snapshotter: c.snapshotter,
            parent: info.parent,
        }
    }

    /// Snapshot, container and task for `id`, started (`sleep 1000`); its pid.
    pub async fn start(&self, id: &str) -> Result<u32, String> {
        // A snapshot nothing refers to is garbage: until the container refers to it, a lease
        // holds it (as containerd's client does).
        let lease = format!("soak-{id}");
        self.client
            .leases()
            .create(req(
                &self.client,
                leases::CreateRequest {
                    id: lease.clone(),
                    labels: Default::default(),
                },
            ))
            .await
            .map_err(failed(id, "create lease"))?;
        let created = self.create(id, &self.client.with_lease(&lease)).await;
        self.client
            .leases()
            .delete(req(
                &self.client,
                leases::DeleteRequest {
                    id: lease,
                    sync: false,
                },
            ))
            .await
            .map_err(failed(id, "delete lease"))?;
        let mounts = created?;
        let c = &self.client;
        c.tasks()
            .create(req(
                c,
                tasks::CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
                    ..Default::default()
                },
            ))
            .await
            .map_err(failed(id, "create task"))?;
        let pid = c
            .tasks()
            .start(req(
                c,
                tasks::StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
            ))
            .await
            .map_err(failed(id, "start task"))?
            .into_inner()
            .pid;
        Ok(pid)
    }

    /// The snapshot and the container of `id` through `c` (with a lease); the rootfs mounts.
    async fn create(&self, id: &str, c: &Client) -> Result<Vec<Mount>, String> {
        let mounts = c
            .snapshots()
            .prepare(req(
                c,
                snapshots::PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.to_string(),
                    parent: self.parent.clone(),
                    labels: Default::default(),
                },
            ))
            .await
            .map_err(failed(id, "prepare snapshot"))?
            .into_inner()
            .mounts;
        let mut spec = self.spec.clone();
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", self.namespace).into();
        spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
        let container = containers::Container {
            id: id.to_string(),
            image: self.image.clone(),
            runtime: Some(containers::container::Runtime {
                name: self.runtime.clone(),
                options: None,
            }),
            spec: Some(Any {
                type_url: protocol::grpc::any::OCI_SPEC.into(),
                value: serde_json::to_vec(&spec).unwrap(),
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        c.containers()
            .create(req(
                c,
                containers::CreateContainerRequest {
                    container: Some(container),
                },
            ))
            .await
            .map_err(failed(id, "create container"))?;
        Ok(mounts)
    }

    /// Exec process `exec_id` (`sh -c 'exit 3'`) in `id`'s task, run to its end and deleted;
    /// its exit status.
    pub async fn exec(&self, id: &str, exec_id: &str) -> Result<u32, String> {
        let c = &self.client;
        let mut process = self.spec["process"].clone();
        process["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
        c.tasks()
            .exec(req(
                c,
                tasks::ExecProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    spec: Some(Any {
                        type_url: PROCESS_SPEC.into(),
                        value: serde_json::to_vec(&process).unwrap(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .map_err(failed(id, "exec"))?;
        let one = || tasks::StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        c.tasks()
            .start(req(c, one()))
            .await
            .map_err(failed(id, "start exec"))?;
        // An exec that already ended is still there to wait for until it is deleted.
        let status = c
            .tasks()
            .wait(req(
                c,
                tasks::WaitRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
            ))
            .await
            .map_err(failed(id, "wait exec"))?
            .into_inner()
            .exit_status;
        c.tasks()
            .delete_process(req(
                c,
                tasks::DeleteProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
            ))
            .await
            .map_err(failed(id, "delete exec"))?;
        Ok(status)
    }

    /// SIGKILL, wait, and everything of `id` deleted; the init's exit status.
    pub async fn remove(&self, id: &str) -> Result<u32, String> {
        let c = &self.client;
        c.tasks()
            .kill(req(
                c,
                tasks::KillRequest {
                    container_id: id.to_string(),
                    signal: 9,
                    ..Default::default()
                },
            ))
            .await
            .map_err(failed(id, "kill"))?;
        let status = c
            .tasks()
            .wait(req(
                c,
                tasks::WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
            ))
            .await
            .map_err(failed(id, "wait"))?
            .into_inner()
            .exit_status;
        c.tasks()
            .delete(req(
                c,
                tasks::DeleteTaskRequest {
                    container_id: id.to_string(),
                },
            ))
            .await
            .map_err(failed(id, "delete task"))?;
        c.containers()
            .delete(req(
                c,
                containers::DeleteContainerRequest { id: id.to_string() },
            ))
            .await
            .map_err(failed(id, "delete container"))?;
        // The garbage collector may have been first (nothing refers to the snapshot once the
        // container is gone); containerd's client ignores NotFound here too.
        let removed = c
            .snapshots()
            .remove(req(
                c,
                snapshots::RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.to_string(),
                },
            ))
            .await;
        match removed {
            Err(s) if s.code() != tonic::Code::NotFound => Err(failed(id, "remove snapshot")(s)),
            _ => Ok(status),
        }
    }

    /// One wave: every id started, then exec'd, then removed, each step for all at once.
    /// Errors name the container and the step.
    pub async fn wave(&self, ids: &[String]) -> Result<(), String> {
        let all = |f: &dyn Fn(String) -> tokio::task::JoinHandle<Result<(), String>>| {
            ids.iter().map(|id| f(id.clone())).collect::<Vec<_>>()
        };
        let me = self.clone();
        join(all(&|id| {
            let me = me.clone();
            tokio::spawn(async move { me.start(&id).await.map(drop) })
        }))
        .await?;
        join(all(&|id| {
            let me = me.clone();
            tokio::spawn(async move {
                match me.exec(&id, "soak-exec").await? {
                    3 => Ok(()),
                    s => Err(format!("{id}: exec exited {s}, not 3")),
                }
            })
        }))
        .await?;
        join(all(&|id| {
            let me = me.clone();
            tokio::spawn(async move {
                match me.remove(&id).await? {
                    137 => Ok(()),
                    s => Err(format!("{id}: init exited {s}, not 137")),
                }
            })
        }))
        .await
    }

    /// Containers and tasks the daemon has in the namespace (both 0 after a clean run), and
    /// the snapshots of its snapshotter (the image's layers only, then).
    pub async fn counts(&self) -> (usize, usize, usize) {
        let c = &self.client;
        let containers = c
            .containers()
            .list(req(c, containers::ListContainersRequest::default()))
            .await
            .expect("list containers")
            .into_inner()
            .containers
            .len();
        let tasks = c
            .tasks()
            .list(req(c, tasks::ListTasksRequest::default()))
            .await
            .expect("list tasks")
            .into_inner()
            .tasks
            .len();
        let mut snaps = c
            .snapshots()
            .list(req(
                c,
                snapshots::ListSnapshotsRequest {
                    snapshotter: self.snapshotter.clone(),
                    filters: vec![],
                },
            ))
            .await
            .expect("list snapshots")
            .into_inner();
        let mut snapshots = 0;
        while let Some(m) = snaps.message().await.expect("snapshot list stream") {
            snapshots += m.info.len();
        }
        (containers, tasks, snapshots)
    }
}

/// Waits for every task; the first error (all are awaited, so none is left running).
async fn join(handles: Vec<tokio::task::JoinHandle<Result<(), String>>>) -> Result<(), String> {
    let mut first = Ok(());
    for h in handles {
        let r = h
            .await
            .unwrap_or_else(|e| Err(format!("task panicked: {e}")));
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// How long a daemon's figures may take to come back after a run: tokio's idle blocking
/// threads exit after 10 s, shims' and clients' connections close as they go.
const SETTLE: Duration = Duration::from_secs(90);
const READING: Duration = Duration::from_secs(2);
const STEADY: Duration = Duration::from_secs(12);

/// corrald's figures once they stop falling (idle threads exit, closed connections go): read
/// every [`READING`] until open files and threads have not changed for [`STEADY`] (longer than
/// tokio's 10 s keep-alive of idle blocking threads) and, given `start`, are within 10 % of
/// it; for at most [`SETTLE`]. The last reading either way.
pub fn settled(stats: &dyn Fn() -> ProcStats, start: Option<ProcStats>) -> ProcStats {
    let none = ProcStats::ZERO;
    let mut last = stats();
    let mut since = Instant::now();
    let _ = try_wait_until(SETTLE, || {
        // Readings are spaced: the point is what stays, not how fast it is read.
        std::thread::sleep(READING);
        let now = stats();
        if (now.fds, now.threads) != (last.fds, last.threads) {
            since = Instant::now();
        }
        last = now;
        let close = start.is_none_or(|s| procstat::within(s, now, 10, none));
        (since.elapsed() >= STEADY && close).then_some(())
    });
    last
}
