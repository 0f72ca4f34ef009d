//! The `containerd.task.v2.Task` service: every method implemented explicitly.
//!
//! Locking rule: the state mutex is held only to read or change the tables, never across a
//! runc call, a mount, or any other I/O that can block. Handlers copy what they need, release
//! the lock, act, then lock again to record the outcome.
//!
//! Error codes (shared/protocol.md §2.4): NotFound for an unknown container or exec id and for
//! a process that has already finished (Kill), AlreadyExists for a duplicate id,
//! FailedPrecondition for a wrong state, Unimplemented for Checkpoint. Never the generated
//! default: it answers NotFound, which clients read as "already gone".

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, MessageField};
use protocol::Code;
use protocol::options::ProcessDetails;
use protocol::shim::*;
use protocol::shim_ttrpc::Task;
use protocol::task::{ProcessInfo, Status};
use protocol::task_events::*;
use tokio::sync::{Notify, mpsc};
use ttrpc::r#async::TtrpcContext;

use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::io::{ConsoleSocket, IoSetup, ProcessIo, StdioPaths};
use crate::process::{Exited, Process, status_word};
use crate::reaper::{Exit, Reaper};
use crate::runc::{CreateOpts, Runc};
use crate::spec::Spec;
use crate::{cgroup, mount, util};

mod control;
mod create;
mod delete;
mod exec;
mod exits;
mod kill;
mod start;

/// Default runc state root; the namespace is appended, as containerd's runc shim does.
///
/// Our own, not runc-v2's `/run/containerd/runc`: a host migrating from containerd runs both
/// daemons for a while, and a container `web` in namespace `default` under each would
/// otherwise be the same runc container (`container with given ID already exists`). The
/// runtime options' `root` still overrides it.
pub const DEFAULT_RUNC_ROOT: &str = "/run/corral/runc";
/// The shim's private record in the bundle, read by the `delete` action.
pub const BUNDLE_RECORD: &str = "corral.json";
/// How long Delete waits for a process's output to drain before closing the client's FIFOs.
const IO_DRAIN: Duration = Duration::from_secs(2);
const UNCLAIMED_EXITS: usize = 1024;
/// How long an init's exit waits for `runc kill --all` of the rest of its container.
const KILL_ALL_DEADLINE: Duration = Duration::from_secs(10);
/// How long an exit waits for the process's output to reach the client.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// What the `delete` action needs to clean up without the server.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BundleRecord {
    pub runc_binary: String,
    pub runc_root: PathBuf,
    pub systemd_cgroup: bool,
}

/// An exec process that runc has started.
struct ExecStarted {
    pid: u32,
    io: ProcessIo,
    spawn_seq: u64,
}

struct Container {
    bundle: PathBuf,
    runc: Arc<Runc>,
    private_pid_ns: bool,
    rootfs_mounted: bool,
    deleting: bool,
    init: Process,
    execs: HashMap<String, Process>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::not_found(format!("process {exec_id} does not exist")))
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::not_found(format!("process {exec_id} does not exist")))
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    creating: HashSet<String>,
    /// Exits of pids not (yet) known: an init that died before its pid file was read.
    unclaimed: VecDeque<Exit>,
}

pub struct Service {
    namespace: String,
    reaper: Reaper,
    events: Publisher,
    state: Mutex<State>,
    shutdown: Arc<Notify>,
    /// The service itself, for handlers that must outlive their call (see `detached`).
    this: Weak<Service>,
}

fn container<'a>(st: &'a State, id: &str) -> Result<&'a Container> {
    st.containers
        .get(id)
        .ok_or_else(|| Error::not_found(format!("container {id} not created")))
}

fn container_mut<'a>(st: &'a mut State, id: &str) -> Result<&'a mut Container> {
    st.containers
        .get_mut(id)
        .ok_or_else(|| Error::not_found(format!("container {id} not created")))
}

impl Service {
    pub fn new(
        namespace: &str,
        reaper: Reaper,
        events: Publisher,
        shutdown: Arc<Notify>,
    ) -> Arc<Service> {
        Arc::new_cyclic(|this| Service {
            namespace: namespace.to_string(),
            reaper,
            events,
            state: Mutex::new(State::default()),
            shutdown,
            this: this.clone(),
        })
    }

    /// Runs a handler that changes state on a task of its own, so that it runs to the end
    /// even when its caller goes away mid-call (the daemon killed, the connection closed, a
    /// ttrpc deadline): a Start dropped between `runc start` and its bookkeeping would leave
    /// the process marked as starting for good, and every later Delete refused.
    ///
    /// runc calls it makes answer before the request's deadline (`timeout_nano`, 0: none).
    async fn detached<T, F, Fut>(&self, timeout_nano: i64, handler: F) -> Result<T>
    where
        F: FnOnce(Arc<Service>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let this = self
            .this
            .upgrade()
            .ok_or_else(|| Error::new(Code::Unavailable, "the shim is shutting down"))?;
        tokio::spawn(crate::runc::with_request_deadline(
            timeout_nano,
            handler(this),
        ))
        .await
        .map_err(|e| Error::new(Code::Internal, format!("handler failed: {e}")))?
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
        let st = self.state.lock().unwrap();
        let c = container(&st, &req.id)?;
        let p = c.process(&req.exec_id)?;
        let mut status = p.status;
        // An exec of a paused container is paused too.
        if !p.exec_id.is_empty()
            && matches!(c.init.status, Status::PAUSED | Status::PAUSING)
            && p.status == Status::RUNNING
        {
            status = c.init.status;
        }
        let mut r = StateResponse::new();
        r.id = if p.exec_id.is_empty() {
            req.id.clone()
        } else {
            p.exec_id.clone()
        };
        r.bundle = c.bundle.to_string_lossy().into_owned();
        r.pid = p.pid;
        r.status = status.into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        match p.exit() {
            Some(e) => {
                r.exit_status = e.status;
                r.exited_at = MessageField::some(e.at);
            }
            None => r.exited_at = MessageField::some(util::zero_time()),
        }
        Ok(r)
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let mut rx = {
            let st = self.state.lock().unwrap();
            container(&st, &req.id)?
                .process(&req.exec_id)?
                .exited
                .subscribe()
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::not_found(format!("process {} was deleted", req.id)))?
            .clone()
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn do_connect(&self, req: ConnectRequest) -> ConnectResponse {
        let st = self.state.lock().unwrap();
        ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: st.containers.get(&req.id).map(|c| c.init.pid).unwrap_or(0),
            ..Default::default()
        }
    }

    fn do_shutdown(&self) {
        let st = self.state.lock().unwrap();
        if st.containers.is_empty() && st.creating.is_empty() {
            // Unlink the socket before answering: once the daemon has our reply, no new
            // connection may find a socket whose server is going away.
            crate::serve::remove_socket();
            self.shutdown.notify_one();
        }
    }

    /// The containers the shim holds (for the hostile-input harness).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn container_ids(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.containers.keys().chain(&st.creating).cloned().collect()
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.state.lock().unwrap();
        let c = container_mut(&mut st, id)?;
        f(c.process_mut(exec_id)?)
    }
}

/// Runs a runc create/exec while receiving the console from the console socket, if any.
async fn with_console<F: std::future::Future<Output = Result<()>>>(
    run: F,
    console: Option<&ConsoleSocket>,
) -> (Result<()>, Option<std::io::Result<std::os::fd::OwnedFd>>) {
    let Some(console) = console else {
        return (run.await, None);
    };
    let mut run = std::pin::pin!(run);
    let mut recv = std::pin::pin!(console.receive());
    let mut master = None;
    let res = loop {
        tokio::select! {
            r = &mut run => break r,
            m = &mut recv, if master.is_none() => master = Some(m),
        }
    };
    if res.is_ok() && master.is_none() {
        // runc sends the console before it exits; anything else is a broken runc.
        master = Some(
            tokio::time::timeout(Duration::from_secs(5), recv)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "runc did not send the console",
                    ))
                }),
        );
    }
    (res, master)
}

#[async_trait]
impl Task for Service {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.do_state(req).await?)
    }

    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let id = req.id.clone();
        self.detached(ctx.timeout_nano, |s| async move { s.do_create(req).await })
            .await
            .map_err(|e| {
                log::error!("create {id}: {e}");
                e.into()
            })
    }

    async fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        Ok(self
            .detached(ctx.timeout_nano, |s| async move { s.do_start(req).await })
            .await?)
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        Ok(self
            .detached(ctx.timeout_nano, |s| async move { s.do_delete(req).await })
            .await?)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.do_pids(req).await?)
    }

    async fn pause(&self, ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.detached(ctx.timeout_nano, |s| async move {
            s.do_pause(&req.id, true).await
        })
        .await?;
        Ok(Empty::new())
    }

    async fn resume(&self, ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.detached(ctx.timeout_nano, |s| async move {
            s.do_pause(&req.id, false).await
        })
        .await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(Code::Unimplemented.ttrpc_status(
            "checkpoint is not supported by containerd-shim-corral-v1 (no criu integration)",
        ))
    }

    async fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.detached(ctx.timeout_nano, |s| async move { s.do_kill(req).await })
            .await?;
        Ok(Empty::new())
    }

    async fn exec(&self, ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.detached(ctx.timeout_nano, |s| async move { s.do_exec(req).await })
            .await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.with_process(&req.id, &req.exec_id, |p| match &p.io {
            Some(io) => io
                .resize(req.width, req.height)
                .map_err(|e| Error::new(Code::Internal, format!("resize pty: {e}"))),
            None => Ok(()),
        })?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.with_process(&req.id, &req.exec_id, |p| {
            if req.stdin
                && let Some(io) = p.io.as_mut()
            {
                io.close_stdin();
            }
            Ok(())
        })?;
        Ok(Empty::new())
    }

    async fn update(&self, ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.detached(ctx.timeout_nano, |s| async move { s.do_update(req).await })
            .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        Ok(self.do_wait(req).await?)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        Ok(self.do_stats(req).await?)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        Ok(self.do_connect(req))
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.do_shutdown();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Arc<Service> {
        service_with_exits().0
    }

    fn service_with_exits() -> (Arc<Service>, mpsc::UnboundedReceiver<Exit>) {
        let (reaper, exits) = Reaper::new();
        let svc = Service::new("ns", reaper, Publisher::new("ns"), Arc::new(Notify::new()));
        (svc, exits)
    }

    fn container(init_pid: u32) -> Container {
        let mut init = Process::new("", StdioPaths::default());
        init.pid = init_pid;
        Container {
            bundle: "/bundle".into(),
            runc: Arc::new(Runc {
                binary: "runc".into(),
                root: "/run/runc".into(),
                log: "/bundle/log.json".into(),
                systemd_cgroup: false,
            }),
            private_pid_ns: true,
            rootfs_mounted: false,
            deleting: false,
            init,
            execs: HashMap::new(),
        }
    }

    #[test]
    fn init_exit_during_start_is_published_after_start() {
        let svc = service();
        let mut st = svc.state.lock().unwrap();
        let mut c = container(100);
        c.init.starting = true;
        st.containers.insert("c1".into(), c);

        // The process exits while `runc start` is still running.
        let exit = Exit {
            pid: 100,
            status: 3,
            signal: None,
            seq: 1,
        };
        assert!(svc.apply_exit(&mut st, exit));
        assert!(
            svc.events.topics().is_empty(),
            "exit published before start"
        );

        let pid = svc.finish_start(&mut st, "c1", "", Ok(None)).unwrap();
        assert_eq!(pid, 100);
        assert_eq!(svc.events.topics(), ["/tasks/start", "/tasks/exit"]);
        let init = &st.containers["c1"].init;
        assert_eq!(init.status, Status::STOPPED);
        assert_eq!(init.exit().unwrap().status, 3);
    }

    #[test]
    fn exec_exit_reaped_before_its_pid_is_known() {
        let (svc, mut exits) = service_with_exits();
        let mut st = svc.state.lock().unwrap();
        let mut c = container(100);
        c.init.status = Status::RUNNING;
        let mut e = Process::new("e1", StdioPaths::default());
        e.starting = true;
        c.execs.insert("e1".into(), e);
        st.containers.insert("c1".into(), c);

        // An old exit of a reused pid, then the exec's own: the reaper saw both before the pid
        // file was read, so they wait among the unclaimed exits.
        for exit in [
            Exit {
                pid: 200,
                status: 9,
                signal: None,
                seq: 3,
            },
            Exit {
                pid: 200,
                status: 7,
                signal: None,
                seq: 5,
            },
        ] {
            assert!(!svc.apply_exit(&mut st, exit));
            st.unclaimed.push_back(exit);
        }
        let started = ExecStarted {
            pid: 200,
            io: ProcessIo::default(),
            spawn_seq: 4,
        };
        svc.finish_start(&mut st, "c1", "e1", Ok(Some(started)))
            .unwrap();
        assert_eq!(svc.events.topics(), ["/tasks/exec-started"]);
        // The exec's own exit (not the reused pid's) is dispatched again, now that the pid is
        // known, and lands on the exec after its start.
        let again = exits.try_recv().expect("exit redelivered");
        assert_eq!(again.seq, 5);
        assert!(svc.apply_exit(&mut st, again));
        assert_eq!(svc.events.topics(), ["/tasks/exec-started", "/tasks/exit"]);
        let e = &st.containers["c1"].execs["e1"];
        assert_eq!(e.status, Status::STOPPED);
        assert_eq!(
            e.exit().unwrap().status,
            7,
            "took the reused pid's older exit"
        );
        assert_eq!(st.unclaimed.len(), 1);
    }

    #[test]
    fn detached_handler_finishes_when_its_caller_goes_away() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let svc = service();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let call = svc.detached(0, |s| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.state.lock().unwrap().creating.insert("c1".into());
                let _ = done_tx.send(());
                Ok(())
            });
            // The caller gives up (as a dropped connection does) before the handler is done.
            let gave_up = tokio::time::timeout(Duration::from_millis(5), call).await;
            assert!(
                gave_up.is_err(),
                "the handler finished too early to test this"
            );
            tokio::time::timeout(Duration::from_secs(10), done_rx)
                .await
                .expect("the handler was cancelled with its caller")
                .unwrap();
            assert!(svc.state.lock().unwrap().creating.contains("c1"));
        });
    }

    #[test]
    fn failed_start_publishes_nothing_and_stays_created() {
        let svc = service();
        let mut st = svc.state.lock().unwrap();
        let mut c = container(100);
        c.init.starting = true;
        st.containers.insert("c1".into(), c);
        let err = svc
            .finish_start(&mut st, "c1", "", Err(Error::runc("start", "boom".into())))
            .unwrap_err();
        assert!(err.msg.contains("boom"));
        assert!(svc.events.topics().is_empty());
        let init = &st.containers["c1"].init;
        assert_eq!(init.status, Status::CREATED);
        assert!(!init.starting);
    }

    #[test]
    fn unknown_ids_are_not_found_and_bad_ids_invalid() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let svc = service();
            let state = svc
                .do_state(StateRequest {
                    id: "nope".into(),
                    ..Default::default()
                })
                .await;
            assert_eq!(state.unwrap_err().code(), Code::NotFound);
            let kill = svc
                .do_kill(KillRequest {
                    id: "nope".into(),
                    signal: 9,
                    ..Default::default()
                })
                .await;
            assert_eq!(kill.unwrap_err().code(), Code::NotFound);
            let create = svc
                .do_create(CreateTaskRequest {
                    id: "../escape".into(),
                    ..Default::default()
                })
                .await;
            assert_eq!(create.unwrap_err().code(), Code::InvalidArgument);
            // Connect answers for any id.
            let c = svc.do_connect(ConnectRequest {
                id: "nope".into(),
                ..Default::default()
            });
            assert_eq!(c.shim_pid, std::process::id());
            assert_eq!(c.task_pid, 0);
        });
    }
}
