//! containerd.services.tasks.v1.Tasks: wire conversions around [`crate::runtime::Manager`].
//! Most calls pass through to the task's shim; its answer (code and message) goes back as is.

use std::sync::Arc;

use protocol::Code;
use protocol::convert::{to_prost, to_protobuf};
use protocol::grpc::containerd::services::tasks::v1::tasks_server::{Tasks, TasksServer};
use protocol::grpc::containerd::services::tasks::v1::*;
use protocol::grpc::containerd::types::Metric;
use protocol::grpc::containerd::v1::types::{Process, Status as TaskStatus};
use protocol::protobuf::MessageField;
use protocol::protobuf::well_known_types::any::Any as PbAny;
use protocol::shim as api;
use tonic::{Request, Response, Status};

use super::{Shared, namespace};
use crate::metadata::{self, Container, Time};
use crate::runtime::shim::{LONG, SHORT, ctx, ctx_forever, status};
use crate::runtime::{CreateTask, Manager, Task};

pub struct TasksService {
    pub daemon: Shared,
    pub runtime: Arc<Manager>,
}

pub fn server(daemon: Shared, runtime: Arc<Manager>) -> TasksServer<TasksService> {
    TasksServer::new(TasksService { daemon, runtime })
}

fn ts(t: Time) -> Option<prost_types::Timestamp> {
    (t != Time::default()).then_some(prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    })
}

fn pb_ts(
    t: &MessageField<protocol::protobuf::well_known_types::timestamp::Timestamp>,
) -> Option<prost_types::Timestamp> {
    t.as_ref().map(|t| prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    })
}

fn pb_any(a: Option<prost_types::Any>) -> MessageField<PbAny> {
    MessageField::from_option(a.map(|a| PbAny {
        type_url: a.type_url,
        value: a.value,
        ..Default::default()
    }))
}

fn transcode_err(e: protocol::convert::TranscodeError) -> Status {
    e.code().grpc_status(e.to_string())
}

/// The live shim of a task, or why there is none to ask.
fn live(task: Task, id: &str, what: &str) -> Result<Arc<crate::runtime::shim::Shim>, Status> {
    match task {
        Task::Live(s) => Ok(s),
        Task::Dead(_) => Err(Code::NotFound.grpc_status(format!(
            "{what} task {id}: process already finished (its shim exited)"
        ))),
    }
}

fn process_of(container_id: &str, exec_id: &str, s: &api::StateResponse) -> Process {
    Process {
        container_id: container_id.to_string(),
        id: if exec_id.is_empty() {
            container_id.to_string()
        } else {
            exec_id.to_string()
        },
        pid: s.pid,
        status: s.status.value(),
        stdin: s.stdin.clone(),
        stdout: s.stdout.clone(),
        stderr: s.stderr.clone(),
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: pb_ts(&s.exited_at),
    }
}

fn dead_process(id: &str, d: &crate::runtime::Dead) -> Process {
    Process {
        container_id: id.to_string(),
        id: id.to_string(),
        pid: d.exit.pid,
        status: TaskStatus::Stopped as i32,
        exit_status: d.exit.status,
        exited_at: ts(d.exit.at),
        ..Default::default()
    }
}

impl TasksService {
    async fn state(&self, ns: &str, id: &str, exec_id: &str) -> Result<Process, Status> {
        match self.runtime.get(ns, id)? {
            Task::Dead(d) if exec_id.is_empty() => Ok(dead_process(id, &d)),
            Task::Dead(_) => Err(Code::NotFound.grpc_status(format!(
                "process {exec_id} of task {id}: not found (its shim exited)"
            ))),
            Task::Live(s) => {
                let r = s
                    .client
                    .state(
                        ctx(SHORT),
                        &api::StateRequest {
                            id: id.to_string(),
                            exec_id: exec_id.to_string(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| status(&format!("state of task {id}"), e))?;
                Ok(process_of(id, exec_id, &r))
            }
        }
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        super::check_identifier("container id", &r.container_id)?;
        if r.checkpoint.is_some() {
            return Err(Code::Unimplemented
                .grpc_status("restoring from a checkpoint is not supported by corrald (no CRIU)"));
        }
        let container: Container = self
            .daemon
            .db
            .get(
                metadata::CONTAINERS,
                &metadata::key(&ns, &[&r.container_id]),
            )
            .map_err(super::db_err)?
            .ok_or_else(|| {
                Code::NotFound.grpc_status(format!(
                    "container \"{}\" in namespace \"{ns}\": not found",
                    r.container_id
                ))
            })?;
        // containerd takes the rootfs from the request only; a client that sends none for a
        // container with a snapshot gets the snapshot's mounts.
        let wire_rootfs = if r.rootfs.is_empty() && !container.snapshot_key.is_empty() {
            super::snapshots::SnapshotsService::new(self.daemon.clone())
                .mounts_of(
                    ns.clone(),
                    container.snapshotter.clone(),
                    container.snapshot_key.clone(),
                )
                .await?
        } else {
            r.rootfs
        };
        let rootfs = wire_rootfs
            .iter()
            .map(|m| {
                to_protobuf::<protocol::mount::Mount>(m)
                    .map(|mut m| {
                        // The target is the shim's business (always the bundle's rootfs).
                        m.target.clear();
                        m
                    })
                    .map_err(transcode_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pid = self
            .runtime
            .create(CreateTask {
                namespace: ns,
                container,
                id: r.container_id.clone(),
                rootfs,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
                options: r.options,
                runtime_path: r.runtime_path,
            })
            .await?;
        Ok(Response::new(CreateTaskResponse {
            container_id: r.container_id,
            pid,
        }))
    }

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = live(
            self.runtime.get(&ns, &r.container_id)?,
            &r.container_id,
            "start",
        )?;
        let resp = s
            .client
            .start(
                ctx(LONG),
                &api::StartRequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("start task {}", r.container_id), e))?;
        Ok(Response::new(StartResponse { pid: resp.pid }))
    }

    async fn delete(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&request)?;
        let id = request.into_inner().container_id;
        let exit = self.runtime.delete(&ns, &id).await?;
        crate::trim::soon();
        Ok(Response::new(DeleteResponse {
            id,
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: ts(exit.at),
        }))
    }

    async fn delete_process(
        &self,
        request: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        if r.exec_id.is_empty() {
            return Err(Code::InvalidArgument
                .grpc_status("exec id is empty (use Delete for the task itself)"));
        }
        let s = live(
            self.runtime.get(&ns, &r.container_id)?,
            &r.container_id,
            "delete process of",
        )?;
        let resp = s
            .client
            .delete(
                ctx(LONG),
                &api::DeleteRequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                status(
                    &format!("delete process {} of task {}", r.exec_id, r.container_id),
                    e,
                )
            })?;
        Ok(Response::new(DeleteResponse {
            id: r.exec_id,
            pid: resp.pid,
            exit_status: resp.exit_status,
            exited_at: pb_ts(&resp.exited_at),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let p = self.state(&ns, &r.container_id, &r.exec_id).await?;
        Ok(Response::new(GetResponse { process: Some(p) }))
    }

    async fn list(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace(&request)?;
        let tasks = self.runtime.list(&ns);
        // Every shim is asked at once; one that does not answer in time is left out.
        let asks = tasks.into_iter().map(|(id, t)| {
            let ns = ns.clone();
            async move {
                match t {
                    Task::Dead(d) => Some(dead_process(&id, &d)),
                    Task::Live(_) => match self.state(&ns, &id, "").await {
                        Ok(p) => Some(p),
                        Err(e) => {
                            if e.code() != tonic::Code::NotFound {
                                log::warn!("list: state of task {ns}/{id}: {}", e.message());
                            }
                            None
                        }
                    },
                }
            }
        });
        let tasks = futures_join_all(asks).await.into_iter().flatten().collect();
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = live(
            self.runtime.get(&ns, &r.container_id)?,
            &r.container_id,
            "kill",
        )?;
        s.client
            .kill(
                ctx(SHORT),
                &api::KillRequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id,
                    signal: r.signal,
                    all: r.all,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("kill task {}", r.container_id), e))?;
        Ok(Response::new(()))
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        if r.exec_id.is_empty() {
            return Err(Code::InvalidArgument.grpc_status("exec id cannot be empty"));
        }
        super::check_identifier("exec id", &r.exec_id)?;
        let s = match self.runtime.get(&ns, &r.container_id)? {
            Task::Live(s) => s,
            Task::Dead(_) => {
                return Err(Code::FailedPrecondition.grpc_status(format!(
                    "exec in task {}: the task is stopped (its shim exited)",
                    r.container_id
                )));
            }
        };
        s.client
            .exec(
                ctx(LONG),
                &api::ExecProcessRequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id.clone(),
                    terminal: r.terminal,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    spec: pb_any(r.spec),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("exec {} in task {}", r.exec_id, r.container_id), e))?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = live(
            self.runtime.get(&ns, &r.container_id)?,
            &r.container_id,
            "resize pty of",
        )?;
        s.client
            .resize_pty(
                ctx(SHORT),
                &api::ResizePtyRequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id,
                    width: r.width,
                    height: r.height,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("resize pty of task {}", r.container_id), e))?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = live(
            self.runtime.get(&ns, &r.container_id)?,
            &r.container_id,
            "close io of",
        )?;
        s.client
            .close_io(
                ctx(SHORT),
                &api::CloseIORequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id,
                    stdin: r.stdin,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("close io of task {}", r.container_id), e))?;
        Ok(Response::new(()))
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let id = request.into_inner().container_id;
        let s = live(self.runtime.get(&ns, &id)?, &id, "pause")?;
        s.client
            .pause(
                ctx(LONG),
                &api::PauseRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("pause task {id}"), e))?;
        Ok(Response::new(()))
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let id = request.into_inner().container_id;
        let s = live(self.runtime.get(&ns, &id)?, &id, "resume")?;
        s.client
            .resume(
                ctx(LONG),
                &api::ResumeRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("resume task {id}"), e))?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        request: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace(&request)?;
        let id = request.into_inner().container_id;
        let s = live(self.runtime.get(&ns, &id)?, &id, "list pids of")?;
        let resp = s
            .client
            .pids(
                ctx(SHORT),
                &api::PidsRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("list pids of task {id}"), e))?;
        let processes = resp
            .processes
            .iter()
            .map(|p| to_prost(p).map_err(transcode_err))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(ListPidsResponse { processes }))
    }

    async fn checkpoint(
        &self,
        _request: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        Err(Code::Unimplemented
            .grpc_status("checkpoint is not supported by corrald (no CRIU on this host)"))
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = live(
            self.runtime.get(&ns, &r.container_id)?,
            &r.container_id,
            "update",
        )?;
        s.client
            .update(
                ctx(LONG),
                &api::UpdateTaskRequest {
                    id: r.container_id.clone(),
                    resources: pb_any(r.resources),
                    annotations: r.annotations.into_iter().collect(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("update task {}", r.container_id), e))?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace(&request)?;
        let filters = protocol::filters::Filters::parse_all(&request.get_ref().filters)
            .map_err(|e| e.code().grpc_status(e.to_string()))?;
        struct Fields<'a>(&'a str, &'a str);
        impl protocol::filters::Fields for Fields<'_> {
            fn field(&self, path: &[String]) -> Option<String> {
                match path.first().map(String::as_str)? {
                    "id" => Some(self.0.to_string()),
                    "namespace" => Some(self.1.to_string()),
                    _ => None,
                }
            }
        }
        let tasks: Vec<_> = self
            .runtime
            .list(&ns)
            .into_iter()
            .filter(|(id, _)| filters.matches(&Fields(id, &ns)))
            .filter_map(|(id, t)| match t {
                Task::Live(s) => Some((id, s)),
                Task::Dead(_) => None,
            })
            .collect();
        let asks = tasks.into_iter().map(|(id, s)| async move {
            let r = s
                .client
                .stats(
                    ctx(SHORT),
                    &api::StatsRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                )
                .await;
            match r {
                Ok(r) => Some(Metric {
                    timestamp: ts(Time::now()),
                    id,
                    data: r.stats.as_ref().map(|a| prost_types::Any {
                        type_url: a.type_url.clone(),
                        value: a.value.clone(),
                    }),
                }),
                Err(e) => {
                    log::debug!("metrics of task {id}: {e}");
                    None
                }
            }
        });
        let metrics = futures_join_all(asks).await.into_iter().flatten().collect();
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace(&request)?;
        let r = request.into_inner();
        let s = match self.runtime.get(&ns, &r.container_id)? {
            Task::Dead(d) => {
                return Ok(Response::new(WaitResponse {
                    exit_status: d.exit.status,
                    exited_at: ts(d.exit.at),
                }));
            }
            Task::Live(s) => s,
        };
        let req = api::WaitRequest {
            id: r.container_id.clone(),
            exec_id: r.exec_id.clone(),
            ..Default::default()
        };
        let from_death = |exit: crate::runtime::bundle::Exit| WaitResponse {
            exit_status: exit.status,
            exited_at: ts(exit.at),
        };
        // The shim answers when the process exits; if the shim itself dies, the exit its
        // `delete` action reported answers instead.
        tokio::select! {
            r = s.client.wait(ctx_forever(), &req) => match r {
                Ok(resp) => Ok(Response::new(WaitResponse {
                    exit_status: resp.exit_status,
                    exited_at: pb_ts(&resp.exited_at),
                })),
                Err(e) => {
                    let st = status(&format!("wait for task {}", r_id(&req)), e);
                    // A Delete that raced this Wait (another client reaping the exit) took the
                    // process from the shim, or the task from us and then shut the shim down:
                    // nothing is left to wait for, and no death will ever be reported.
                    let deleted = st.code() == tonic::Code::NotFound
                        || matches!(
                            self.runtime.get(&ns, &req.id),
                            Err(ref g) if g.code() == tonic::Code::NotFound
                        );
                    if deleted {
                        return Err(st);
                    }
                    match tokio::time::timeout(LONG, s.died()).await {
                        Ok(exit) => Ok(Response::new(from_death(exit))),
                        Err(_) => Err(st),
                    }
                }
            },
            exit = s.died() => Ok(Response::new(from_death(exit))),
        }
    }
}

fn r_id(r: &api::WaitRequest) -> String {
    if r.exec_id.is_empty() {
        r.id.clone()
    } else {
        format!("{} process {}", r.id, r.exec_id)
    }
}

/// Polls futures concurrently and collects their outputs in order.
async fn futures_join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("every future completed"))
        .collect()
}
