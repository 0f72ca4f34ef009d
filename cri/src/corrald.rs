//! The calls corral-cri makes to corrald, with their deadlines and the way "already gone" is
//! read: corrald answers NotFound for a container, task or snapshot that does not exist, and
//! for delete-like calls that is success (containerd's clients rely on the same meaning).
//!
//! The channel dials lazily and redials after corrald restarts, so corral-cri starts and keeps
//! serving while corrald is down; calls made meanwhile fail with Unavailable.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use protocol::grpc::client::Client;
use protocol::grpc::containerd::services::containers::v1 as containers;
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use protocol::grpc::containerd::types::Mount;
use protocol::grpc::containerd::v1::types::Process;
use protocol::grpc::prost_types::{Any, FieldMask, Timestamp};
use protocol::grpc::tonic::{Request, Status};

use crate::error::{Context, Result};

/// Calls answered from corrald's own state.
const QUICK: Duration = Duration::from_secs(10);
/// Calls that run runc or a shim's start-up (create, start, exec, delete).
const SLOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Corrald {
    client: Client,
    snapshotter: String,
}

/// A task's exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    /// Unix nanoseconds.
    pub at: i64,
}

fn with_deadline<T>(mut r: Request<T>, d: Duration) -> Request<T> {
    r.set_timeout(d);
    r
}

/// Ok(None) for NotFound, the error otherwise.
fn absent_ok<T>(r: std::result::Result<T, Status>) -> std::result::Result<Option<T>, Status> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == protocol::grpc::tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

pub fn nanos(ts: Option<&Timestamp>) -> i64 {
    ts.map(|t| t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos))
        .unwrap_or(0)
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Corrald {
    pub fn new(address: &Path, namespace: &str, snapshotter: &str) -> Corrald {
        let channel = protocol::grpc::unix::connect_lazy(address);
        Corrald {
            client: Client::new(channel, namespace),
            snapshotter: snapshotter.to_string(),
        }
    }

    /// The namespaced client, for calls this module has no helper for.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    fn req<T>(&self, msg: T, d: Duration) -> Request<T> {
        with_deadline(self.client.req(msg), d)
    }

    /// corrald's version; also how Status tells whether corrald answers.
    pub async fn version(&self) -> Result<String> {
        let v = self
            .client
            .version()
            .version(with_deadline(Request::new(()), QUICK))
            .await?
            .into_inner();
        Ok(v.version)
    }

    // --- containers ---

    pub async fn list_containers(&self, filters: &[&str]) -> Result<Vec<containers::Container>> {
        let r = self
            .client
            .containers()
            .list(self.req(
                containers::ListContainersRequest {
                    filters: filters.iter().map(|f| f.to_string()).collect(),
                },
                QUICK,
            ))
            .await?;
        Ok(r.into_inner().containers)
    }

    pub async fn get_container(&self, id: &str) -> Result<Option<containers::Container>> {
        let r = absent_ok(
            self.client
                .containers()
                .get(self.req(
                    containers::GetContainerRequest { id: id.to_string() },
                    QUICK,
                ))
                .await,
        )?;
        Ok(r.and_then(|r| r.into_inner().container))
    }

    pub async fn create_container(&self, c: containers::Container) -> Result<()> {
        let id = c.id.clone();
        self.client
            .containers()
            .create(self.req(
                containers::CreateContainerRequest { container: Some(c) },
                QUICK,
            ))
            .await
            .with_context(|| format!("create container {id} in corrald"))?;
        Ok(())
    }

    /// Replaces one extension of a container, leaving everything else as it is.
    pub async fn set_extension(&self, id: &str, key: &str, value: Any) -> Result<()> {
        let mut extensions = HashMap::new();
        extensions.insert(key.to_string(), value);
        self.client
            .containers()
            .update(self.req(
                containers::UpdateContainerRequest {
                    container: Some(containers::Container {
                        id: id.to_string(),
                        extensions,
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec![format!("extensions.{key}")],
                    }),
                },
                QUICK,
            ))
            .await
            .with_context(|| format!("update {key} of container {id} in corrald"))?;
        Ok(())
    }

    /// Deletes a container record; gone already is fine.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        absent_ok(
            self.client
                .containers()
                .delete(self.req(
                    containers::DeleteContainerRequest { id: id.to_string() },
                    QUICK,
                ))
                .await,
        )
        .with_context(|| format!("delete container {id} from corrald"))?;
        Ok(())
    }

    // --- snapshots ---

    /// An active snapshot `key` on top of the committed `parent`.
    pub async fn prepare_snapshot(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let r = self
            .client
            .snapshots()
            .prepare(self.req(
                snapshots::PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                SLOW,
            ))
            .await
            .with_context(|| format!("prepare snapshot {key} on {parent}"))?;
        Ok(r.into_inner().mounts)
    }

    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let r = self
            .client
            .snapshots()
            .mounts(self.req(
                snapshots::MountsRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                },
                QUICK,
            ))
            .await
            .with_context(|| format!("mounts of snapshot {key}"))?;
        Ok(r.into_inner().mounts)
    }

    /// Removes a snapshot; gone already is fine.
    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        absent_ok(
            self.client
                .snapshots()
                .remove(self.req(
                    snapshots::RemoveSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: key.to_string(),
                    },
                    SLOW,
                ))
                .await,
        )
        .with_context(|| format!("remove snapshot {key}"))?;
        Ok(())
    }

    /// Bytes and inodes a snapshot uses on its own (the writable layer of a container).
    pub async fn snapshot_usage(&self, key: &str) -> Result<snapshots::UsageResponse> {
        let r = self
            .client
            .snapshots()
            .usage(self.req(
                snapshots::UsageRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                },
                QUICK,
            ))
            .await
            .with_context(|| format!("usage of snapshot {key}"))?;
        Ok(r.into_inner())
    }

    // --- tasks ---

    /// Creates a container's task (the rootfs is the container's snapshot) and returns its pid.
    pub async fn create_task(&self, r: tasks::CreateTaskRequest) -> Result<u32> {
        let id = r.container_id.clone();
        let r = self
            .client
            .tasks()
            .create(self.req(r, SLOW))
            .await
            .with_context(|| format!("create task {id}"))?;
        Ok(r.into_inner().pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = self
            .client
            .tasks()
            .start(self.req(
                tasks::StartRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                SLOW,
            ))
            .await
            .with_context(|| format!("start task {id} {exec_id}"))?;
        Ok(r.into_inner().pid)
    }

    pub async fn get_task(&self, id: &str) -> Result<Option<Process>> {
        let r = absent_ok(
            self.client
                .tasks()
                .get(self.req(
                    tasks::GetRequest {
                        container_id: id.to_string(),
                        exec_id: String::new(),
                    },
                    QUICK,
                ))
                .await,
        )
        .with_context(|| format!("get task {id}"))?;
        Ok(r.and_then(|r| r.into_inner().process))
    }

    pub async fn list_tasks(&self) -> Result<Vec<Process>> {
        let r = self
            .client
            .tasks()
            .list(self.req(tasks::ListTasksRequest::default(), SLOW))
            .await
            .context("list tasks")?;
        Ok(r.into_inner().tasks)
    }

    /// Signals a task's process; false if there is no such task or process.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<bool> {
        let r = absent_ok(
            self.client
                .tasks()
                .kill(self.req(
                    tasks::KillRequest {
                        container_id: id.to_string(),
                        exec_id: exec_id.to_string(),
                        signal,
                        all,
                    },
                    QUICK,
                ))
                .await,
        )
        .with_context(|| format!("signal {signal} to task {id} {exec_id}"))?;
        Ok(r.is_some())
    }

    /// Waits up to `timeout` for a process to exit. Ok(None): still running at the deadline.
    /// NotFound (no such task) is an error the caller can tell apart.
    pub async fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<Option<Exit>> {
        let mut client = self.client.tasks();
        let call = client.wait(self.client.req(tasks::WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }));
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Ok(None),
            Ok(r) => {
                let r = r.with_context(|| format!("wait for task {id} {exec_id}"))?;
                let r = r.into_inner();
                Ok(Some(Exit {
                    status: r.exit_status,
                    at: nanos(r.exited_at.as_ref()),
                }))
            }
        }
    }

    /// Deletes a stopped task and returns its exit; None if there was no task, or if another
    /// caller (the exit monitor and a Stop race for it) is deleting it: then this waits until
    /// the task is gone, so either caller returns only once the task no longer exists.
    pub async fn delete_task(&self, id: &str) -> Result<Option<Exit>> {
        let answer = self
            .client
            .tasks()
            .delete(self.req(
                tasks::DeleteTaskRequest {
                    container_id: id.to_string(),
                },
                SLOW,
            ))
            .await;
        if let Err(s) = &answer
            && s.code() == protocol::grpc::tonic::Code::FailedPrecondition
            && s.message().contains("being deleted")
        {
            let deadline = tokio::time::Instant::now() + SLOW;
            while self.get_task(id).await?.is_some() {
                if tokio::time::Instant::now() > deadline {
                    return Err(
                        crate::error::Error::from(s.clone()).context(format!("delete task {id}"))
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Ok(None);
        }
        let r = absent_ok(answer).with_context(|| format!("delete task {id}"))?;
        Ok(r.map(|r| {
            let r = r.into_inner();
            Exit {
                status: r.exit_status,
                at: nanos(r.exited_at.as_ref()),
            }
        }))
    }

    pub async fn exec(&self, r: tasks::ExecProcessRequest) -> Result<()> {
        let what = format!("exec {} in {}", r.exec_id, r.container_id);
        self.client
            .tasks()
            .exec(self.req(r, SLOW))
            .await
            .context(what)?;
        Ok(())
    }

    /// Removes an exec process's record; gone already is fine.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<()> {
        absent_ok(
            self.client
                .tasks()
                .delete_process(self.req(
                    tasks::DeleteProcessRequest {
                        container_id: id.to_string(),
                        exec_id: exec_id.to_string(),
                    },
                    SLOW,
                ))
                .await,
        )
        .with_context(|| format!("delete exec {exec_id} of {id}"))?;
        Ok(())
    }

    /// Sets the window size of a process's terminal (the init process when `exec_id` is "").
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        self.client
            .tasks()
            .resize_pty(self.req(
                tasks::ResizePtyRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    width,
                    height,
                },
                QUICK,
            ))
            .await
            .with_context(|| format!("resize the terminal of {id} {exec_id}"))?;
        Ok(())
    }

    /// Closes a process's stdin: it reads end of file once no writer of its FIFO is left.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.client
            .tasks()
            .close_io(self.req(
                tasks::CloseIoRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    stdin: true,
                },
                QUICK,
            ))
            .await
            .with_context(|| format!("close the stdin of {id} {exec_id}"))?;
        Ok(())
    }

    pub async fn update_task(
        &self,
        id: &str,
        resources: Option<Any>,
        annotations: HashMap<String, String>,
    ) -> Result<()> {
        self.client
            .tasks()
            .update(self.req(
                tasks::UpdateTaskRequest {
                    container_id: id.to_string(),
                    resources,
                    annotations,
                },
                SLOW,
            ))
            .await
            .with_context(|| format!("update task {id}"))?;
        Ok(())
    }

    /// Metrics of the tasks named (all of ours when `ids` is empty).
    pub async fn metrics(
        &self,
        ids: &[String],
    ) -> Result<Vec<protocol::grpc::containerd::types::Metric>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filters = ids.iter().map(|id| format!("id=={id}")).collect();
        let r = self
            .client
            .tasks()
            .metrics(self.req(tasks::MetricsRequest { filters }, QUICK))
            .await
            .context("task metrics")?;
        Ok(r.into_inner().metrics)
    }
}
