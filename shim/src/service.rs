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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, MessageField};
use protocol::Code;
use protocol::options::{Options, ProcessDetails};
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

/// Default runc state root; the namespace is appended, as containerd's runc shim does.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";
/// The shim's private record in the bundle, read by the `delete` action.
pub const BUNDLE_RECORD: &str = "corral.json";
/// How long Delete waits for a process's output to drain before closing the client's FIFOs.
const IO_DRAIN: Duration = Duration::from_secs(2);
const UNCLAIMED_EXITS: usize = 1024;
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
        Arc::new(Service {
            namespace: namespace.to_string(),
            reaper,
            events,
            state: Mutex::new(State::default()),
            shutdown,
        })
    }

    /// Dispatches exits that no runc call awaited to container processes.
    ///
    /// A process's exit is recorded (and Wait answered, /tasks/exit published) only after its
    /// output has been copied to the client, for at most [`OUTPUT_DRAIN`]: ctr stops reading
    /// when it sees the exit, so an exit reported early cuts off the end of the output.
    pub async fn run_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            let drained = {
                let mut st = self.state.lock().unwrap();
                self.find_process(&mut st, exit)
                    .and_then(|p| p.io.as_mut())
                    .and_then(|io| io.drained())
            };
            let svc = self.clone();
            let record = move || {
                let mut st = svc.state.lock().unwrap();
                if !svc.apply_exit(&mut st, exit) {
                    if st.unclaimed.len() >= UNCLAIMED_EXITS {
                        st.unclaimed.pop_front();
                    }
                    st.unclaimed.push_back(exit);
                }
            };
            match drained {
                Some(d) => {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(OUTPUT_DRAIN, d).await;
                        record();
                    });
                }
                None => record(),
            }
        }
    }

    fn find_process<'a>(&self, st: &'a mut State, exit: Exit) -> Option<&'a mut Process> {
        st.containers.values_mut().find_map(|c| {
            std::iter::once(&mut c.init)
                .chain(c.execs.values_mut())
                .find(|p| p.pid == exit.pid && p.pid != 0 && exit.seq > p.spawn_seq)
        })
    }

    /// Records `exit` on the process with its pid, if any. Publishes /tasks/exit unless a
    /// Start is in flight (then Start publishes it after /tasks/start).
    fn apply_exit(&self, st: &mut State, exit: Exit) -> bool {
        for (id, c) in st.containers.iter_mut() {
            let private = c.private_pid_ns;
            let runc = c.runc.clone();
            let procs = std::iter::once(&mut c.init).chain(c.execs.values_mut());
            for p in procs {
                if p.pid != exit.pid || p.pid == 0 || exit.seq <= p.spawn_seq {
                    continue;
                }
                if !p.set_exited(exit.status, util::now()) {
                    return true;
                }
                let is_init = p.exec_id.is_empty();
                if p.starting {
                    p.exit_deferred = true;
                } else {
                    self.publish_exit(id, p);
                }
                if is_init && !private {
                    // Without its own pid namespace nothing kills the container's other
                    // processes when the init dies; do it, as containerd's shim does.
                    let (reaper, id) = (self.reaper.clone(), id.clone());
                    tokio::spawn(async move {
                        let _ = runc.kill(&reaper, &id, 9, true).await;
                    });
                }
                return true;
            }
        }
        false
    }

    /// Takes an exit for `pid` that arrived before the pid was known. Only exits seen after
    /// `since` (taken before the process was spawned) can be its: an older one is a reused pid.
    fn claim_exit(unclaimed: &mut VecDeque<Exit>, pid: u32, since: u64) -> Option<Exit> {
        let i = unclaimed
            .iter()
            .position(|e| e.pid == pid && e.seq > since)?;
        unclaimed.remove(i)
    }

    fn publish_exit(&self, container_id: &str, p: &Process) {
        let Some(exit) = p.exit() else { return };
        let mut ev = TaskExit::new();
        ev.container_id = container_id.to_string();
        ev.id = if p.exec_id.is_empty() {
            container_id.to_string()
        } else {
            p.exec_id.clone()
        };
        ev.pid = p.pid;
        ev.exit_status = exit.status;
        ev.exited_at = MessageField::some(exit.at);
        self.events.publish(&ev);
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

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if !util::valid_identifier(&id) {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("invalid container id {id:?}"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::new(
                Code::Unimplemented,
                "restore from a checkpoint is not supported by containerd-shim-corral-v1",
            ));
        }
        {
            let mut st = self.state.lock().unwrap();
            if st.containers.contains_key(&id) || !st.creating.insert(id.clone()) {
                return Err(Error::new(
                    Code::AlreadyExists,
                    format!("container {id} already exists"),
                ));
            }
        }
        let result = self.create_container(&req).await;
        let mut st = self.state.lock().unwrap();
        st.creating.remove(&id);
        let mut c = result?;
        let pid = c.init.pid;
        if let Some(exit) = Self::claim_exit(&mut st.unclaimed, pid, c.init.spawn_seq) {
            c.init.set_exited(exit.status, util::now());
        }
        let mut ev = TaskCreate::new();
        ev.container_id = id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        ev.io = MessageField::some(tio);
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid;
        self.events.publish(&ev);
        st.containers.insert(id, c);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn create_container(&self, req: &CreateTaskRequest) -> Result<Container> {
        let bundle = if req.bundle.is_empty() {
            std::env::current_dir().map_err(|e| Error::new(Code::Internal, e.to_string()))?
        } else {
            PathBuf::from(&req.bundle)
        };
        let spec = Spec::load(&bundle).map_err(|e| Error::new(Code::InvalidArgument, e))?;
        let opts = runc_options(req.options.as_ref())?;
        let runc = Arc::new(Runc {
            binary: if opts.binary_name.is_empty() {
                "runc".into()
            } else {
                opts.binary_name.clone()
            },
            root: Path::new(if opts.root.is_empty() {
                DEFAULT_RUNC_ROOT
            } else {
                &opts.root
            })
            .join(&self.namespace),
            log: bundle.join("log.json"),
            systemd_cgroup: opts.systemd_cgroup,
        });
        let record = BundleRecord {
            runc_binary: runc.binary.clone(),
            runc_root: runc.root.clone(),
            systemd_cgroup: runc.systemd_cgroup,
        };
        let record = serde_json::to_vec(&record).expect("record serialises");
        util::atomic_write(&bundle.join(BUNDLE_RECORD), &record, 0o600)
            .map_err(|e| Error::new(Code::Internal, format!("write bundle record: {e}")))?;

        let rootfs = bundle.join("rootfs");
        let mut rootfs_mounted = false;
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| Error::new(Code::Internal, format!("create rootfs dir: {e}")))?;
            mount::mount_all(&req.rootfs, &rootfs)
                .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
            rootfs_mounted = true;
        }
        let unmount = |mounted: bool| {
            if mounted && let Err(e) = mount::unmount_all(&rootfs) {
                log::warn!("unmount rootfs of {}: {e}", req.id);
            }
        };
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let setup = IoSetup {
            paths: &stdio,
            container_id: &req.id,
            namespace: &self.namespace,
            io_uid: opts.io_uid,
            io_gid: opts.io_gid,
        };
        let (child_stdio, mut pio) = match ProcessIo::open(&setup).await {
            Ok(x) => x,
            Err(e) => {
                unmount(rootfs_mounted);
                return Err(Error::new(Code::Internal, format!("set up stdio: {e}")));
            }
        };
        let pid_file = bundle.join("init.pid");
        let spawn_seq = self.reaper.seq();
        let console = match req.terminal.then(ConsoleSocket::new).transpose() {
            Ok(c) => c,
            Err(e) => {
                unmount(rootfs_mounted);
                return Err(Error::new(Code::Internal, format!("console socket: {e}")));
            }
        };
        let copts = CreateOpts {
            pid_file: &pid_file,
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
        };
        let create = runc.create(&self.reaper, &req.id, &bundle, &copts, child_stdio);
        let (res, master) = with_console(create, console.as_ref()).await;
        let pid = res.and_then(|()| {
            util::read_pid_file(&pid_file).map_err(|e| Error::new(Code::Internal, e.to_string()))
        });
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                drop(pio);
                let _ = runc.delete(&self.reaper, &req.id, true).await;
                unmount(rootfs_mounted);
                return Err(e);
            }
        };
        if let Some(master) = master {
            let attached = master.and_then(|m| pio.attach_console(m, &stdio));
            if let Err(e) = attached {
                let _ = runc.delete(&self.reaper, &req.id, true).await;
                unmount(rootfs_mounted);
                return Err(Error::new(Code::Internal, format!("console: {e}")));
            }
        }
        let mut init = Process::new("", stdio);
        init.pid = pid;
        init.spawn_seq = spawn_seq;
        init.io = Some(pio);
        Ok(Container {
            bundle,
            runc,
            private_pid_ns: spec.private_pid_namespace(),
            rootfs_mounted,
            deleting: false,
            init,
            execs: HashMap::new(),
        })
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let (runc, bundle, stdio, spec) = {
            let mut st = self.state.lock().unwrap();
            let c = container_mut(&mut st, &req.id)?;
            let (runc, bundle) = (c.runc.clone(), c.bundle.clone());
            if !req.exec_id.is_empty() && c.init.status != Status::RUNNING {
                return Err(Error::precondition(format!(
                    "cannot start exec {} in a {} container",
                    req.exec_id,
                    status_word(c.init.status)
                )));
            }
            let p = c.process_mut(&req.exec_id)?;
            if p.status != Status::CREATED || p.starting {
                return Err(Error::precondition(format!(
                    "cannot start a {} process",
                    status_word(p.status)
                )));
            }
            p.starting = true;
            (runc, bundle, p.stdio.clone(), std::mem::take(&mut p.spec))
        };
        let started = if req.exec_id.is_empty() {
            runc.start(&self.reaper, &req.id).await.map(|()| None)
        } else {
            self.start_exec(&runc, &bundle, &req, &stdio, spec)
                .await
                .map(Some)
        };
        let mut st = self.state.lock().unwrap();
        let pid = self.finish_start(&mut st, &req.id, &req.exec_id, started)?;
        drop(st);
        if req.exec_id.is_empty() {
            self.watch_oom(&req.id, pid);
            // The container is up and the shim goes idle: drop the start-up code it ran.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                crate::trim::trim_text();
            });
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Records a start and publishes /tasks/start or /tasks/exec-started, then any exit seen
    /// while the start was in flight: an exit never overtakes its start on the wire.
    /// `exec` carries an exec's pid, IO and the reaper sequence number taken before it ran.
    fn finish_start(
        &self,
        st: &mut State,
        id: &str,
        exec_id: &str,
        started: Result<Option<ExecStarted>>,
    ) -> Result<u32> {
        let p = container_mut(st, id)?.process_mut(exec_id)?;
        p.starting = false;
        let deferred = std::mem::take(&mut p.exit_deferred);
        let exec = started?;
        if let Some(e) = exec {
            p.pid = e.pid;
            p.spawn_seq = e.spawn_seq;
            p.io = Some(e.io);
        }
        if p.exit().is_none() {
            p.status = Status::RUNNING;
        }
        let (pid, spawn_seq) = (p.pid, p.spawn_seq);
        if exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = id.to_string();
            ev.pid = pid;
            self.events.publish(&ev);
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.to_string();
            ev.exec_id = exec_id.to_string();
            ev.pid = pid;
            self.events.publish(&ev);
        }
        // An exec's pid is only known now: its exit may have been reaped already.
        let early = if exec_id.is_empty() {
            None
        } else {
            Self::claim_exit(&mut st.unclaimed, pid, spawn_seq)
        };
        if let Some(exit) = early {
            // Dispatched again now that the pid is known, so it waits for the output like
            // any other exit; it is published after the exec-started above.
            self.reaper.redeliver(exit);
        } else if deferred {
            let p = container_mut(st, id)?.process_mut(exec_id)?;
            self.publish_exit(id, p);
        }
        Ok(pid)
    }

    /// Runs an exec process: its stdio, then `runc exec --detach`.
    async fn start_exec(
        &self,
        runc: &Runc,
        bundle: &Path,
        req: &StartRequest,
        stdio: &StdioPaths,
        spec: Vec<u8>,
    ) -> Result<ExecStarted> {
        let process_json = bundle.join(format!(".{}.process.json", req.exec_id));
        util::atomic_write(&process_json, &spec, 0o600)
            .map_err(|e| Error::new(Code::Internal, format!("write exec spec: {e}")))?;
        let setup = IoSetup {
            paths: stdio,
            container_id: &req.id,
            namespace: &self.namespace,
            io_uid: 0,
            io_gid: 0,
        };
        let (child_stdio, mut pio) = ProcessIo::open(&setup)
            .await
            .map_err(|e| Error::new(Code::Internal, format!("set up exec stdio: {e}")))?;
        let console = stdio
            .terminal
            .then(ConsoleSocket::new)
            .transpose()
            .map_err(|e| Error::new(Code::Internal, format!("console socket: {e}")))?;
        let pid_file = bundle.join(format!("{}.pid", req.exec_id));
        let copts = CreateOpts {
            pid_file: &pid_file,
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: false,
            no_new_keyring: false,
        };
        let spawn_seq = self.reaper.seq();
        let exec = runc.exec(&self.reaper, &req.id, &process_json, &copts, child_stdio);
        let (res, master) = with_console(exec, console.as_ref()).await;
        let _ = std::fs::remove_file(&process_json);
        res?;
        if let Some(master) = master {
            master
                .and_then(|m| pio.attach_console(m, stdio))
                .map_err(|e| Error::new(Code::Internal, format!("exec console: {e}")))?;
        }
        let pid = util::read_pid_file(&pid_file)
            .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
        Ok(ExecStarted {
            pid,
            io: pio,
            spawn_seq,
        })
    }

    /// Publishes /tasks/oom for each OOM kill in the container's v1 memory cgroup.
    fn watch_oom(&self, id: &str, pid: u32) {
        let Some(cg) = cgroup::Cgroup::of_pid(pid) else {
            return;
        };
        let Some(dir) = cg.memory_dir().map(Path::to_path_buf) else {
            return;
        };
        let watch = match cgroup::OomWatch::new(&dir) {
            Ok(w) => w,
            Err(e) => {
                log::debug!("no OOM notification for {id}: {e}");
                return;
            }
        };
        let (events, id) = (self.events.clone(), id.to_string());
        tokio::spawn(async move {
            while watch.next(&dir).await.is_ok() {
                let mut ev = TaskOOM::new();
                ev.container_id = id.clone();
                events.publish(&ev);
            }
        });
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            let (p, bundle) = {
                let mut st = self.state.lock().unwrap();
                let c = container_mut(&mut st, &req.id)?;
                let p = c.process(&req.exec_id)?;
                if p.is_running() || p.starting {
                    return Err(Error::precondition(format!(
                        "cannot delete a {} process",
                        status_word(p.status)
                    )));
                }
                let p = c.execs.remove(&req.exec_id).expect("checked above");
                (p, c.bundle.clone())
            };
            let _ = std::fs::remove_file(bundle.join(format!("{}.pid", req.exec_id)));
            return Ok(self.finish_delete(p).await);
        }
        let (runc, created, bundle, mounted) = {
            let mut st = self.state.lock().unwrap();
            let c = container_mut(&mut st, &req.id)?;
            if c.deleting {
                return Err(Error::precondition(format!(
                    "container {} is being deleted",
                    req.id
                )));
            }
            if c.init.is_running() || c.init.starting {
                return Err(Error::precondition(format!(
                    "cannot delete a {} process",
                    status_word(c.init.status)
                )));
            }
            c.deleting = true;
            (
                c.runc.clone(),
                c.init.status == Status::CREATED,
                c.bundle.clone(),
                c.rootfs_mounted,
            )
        };
        if let Err(e) = runc.delete(&self.reaper, &req.id, created).await
            && !e.is_gone()
        {
            let mut st = self.state.lock().unwrap();
            if let Some(c) = st.containers.get_mut(&req.id) {
                c.deleting = false;
            }
            return Err(e);
        }
        if mounted && let Err(e) = mount::unmount_all(&bundle.join("rootfs")) {
            log::warn!("unmount rootfs of {}: {e}", req.id);
        }
        let c = {
            let mut st = self.state.lock().unwrap();
            st.containers.remove(&req.id).expect("marked deleting")
        };
        let mut init = c.init;
        if init.exit().is_none() {
            // Deleted before it ran: runc delete --force killed it.
            init.set_exited(128 + 9, util::now());
        }
        let resp = self.finish_delete(init).await;
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = resp.pid;
        ev.exit_status = resp.exit_status;
        ev.exited_at = resp.exited_at.clone();
        self.events.publish(&ev);
        Ok(resp)
    }

    /// Drains and closes a removed process's IO; builds the DeleteResponse.
    async fn finish_delete(&self, mut p: Process) -> DeleteResponse {
        if let Some(io) = p.io.take() {
            io.close(IO_DRAIN).await;
        }
        let exit = p.exit().unwrap_or(Exited {
            status: 0,
            at: util::zero_time(),
        });
        DeleteResponse {
            pid: p.pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        }
    }

    async fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let (runc, execs) = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            let execs: HashMap<u32, String> = c
                .execs
                .values()
                .filter(|p| p.pid != 0)
                .map(|p| (p.pid, p.exec_id.clone()))
                .collect();
            (c.runc.clone(), execs)
        };
        let pids = runc.ps(&self.reaper, &req.id).await?;
        let mut resp = PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            if let Some(exec_id) = execs.get(&pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let runc = {
            let mut st = self.state.lock().unwrap();
            let c = container_mut(&mut st, id)?;
            let want = if pause {
                Status::RUNNING
            } else {
                Status::PAUSED
            };
            if c.init.status != want {
                return Err(Error::precondition(format!(
                    "cannot {} a {} container",
                    if pause { "pause" } else { "resume" },
                    status_word(c.init.status)
                )));
            }
            if pause {
                c.init.status = Status::PAUSING;
            }
            c.runc.clone()
        };
        let res = if pause {
            runc.pause(&self.reaper, id).await
        } else {
            runc.resume(&self.reaper, id).await
        };
        let mut st = self.state.lock().unwrap();
        let c = container_mut(&mut st, id)?;
        if c.init.exit().is_some() {
            return res;
        }
        match (&res, pause) {
            (Ok(()), true) => c.init.status = Status::PAUSED,
            (Ok(()), false) => c.init.status = Status::RUNNING,
            (Err(_), true) => c.init.status = Status::RUNNING,
            (Err(_), false) => {}
        }
        res?;
        if pause {
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.events.publish(&ev);
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.events.publish(&ev);
        }
        Ok(())
    }

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let finished =
            || Error::not_found(format!("process {} already finished", req.exec_id.clone()));
        if req.exec_id.is_empty() {
            let runc = {
                let st = self.state.lock().unwrap();
                let c = container(&st, &req.id)?;
                if c.init.exit().is_some() && !req.all {
                    return Err(Error::not_found(format!(
                        "process {} already finished",
                        req.id
                    )));
                }
                c.runc.clone()
            };
            return runc
                .kill(&self.reaper, &req.id, req.signal, req.all)
                .await
                .map_err(|e| {
                    if e.is_gone() {
                        Error::not_found(format!("process {} already finished: {e}", req.id))
                    } else {
                        e
                    }
                });
        }
        let pid = {
            let st = self.state.lock().unwrap();
            let p = container(&st, &req.id)?.process(&req.exec_id)?;
            if p.exit().is_some() {
                return Err(finished());
            }
            if p.status == Status::CREATED {
                return Err(Error::precondition(format!(
                    "process {} has not been started",
                    req.exec_id
                )));
            }
            p.pid
        };
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| Error::new(Code::InvalidArgument, format!("bad signal {}", req.signal)))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
            Ok(()) => Ok(()),
            Err(nix::Error::ESRCH) => Err(finished()),
            Err(e) => Err(Error::new(Code::Unknown, format!("kill {pid}: {e}"))),
        }
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        if !util::valid_identifier(&req.exec_id) {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("invalid exec id {:?}", req.exec_id),
            ));
        }
        let mut spec: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("exec spec: {e}")))?;
        let Some(obj) = spec.as_object_mut() else {
            return Err(Error::new(
                Code::InvalidArgument,
                "exec spec is not a JSON object",
            ));
        };
        obj.insert("terminal".into(), serde_json::Value::Bool(req.terminal));
        let spec = serde_json::to_vec(&spec).expect("value serialises");
        let mut st = self.state.lock().unwrap();
        let c = container_mut(&mut st, &req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::new(
                Code::AlreadyExists,
                format!("id {}: already exists", req.exec_id),
            ));
        }
        if !c.init.is_running() {
            return Err(Error::precondition(format!(
                "cannot exec in a {} container",
                status_word(c.init.status)
            )));
        }
        let mut p = Process::new(
            &req.exec_id,
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.events.publish(&ev);
        Ok(())
    }

    async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let runc = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            if c.init.exit().is_some() {
                return Err(Error::precondition(format!(
                    "cannot update a stopped container {}",
                    req.id
                )));
            }
            c.runc.clone()
        };
        runc.update(&self.reaper, &req.id, req.resources.value.clone())
            .await
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

    async fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let pid = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            if c.init.exit().is_some() || c.init.pid == 0 {
                return Err(Error::not_found(format!(
                    "container {} is not running",
                    req.id
                )));
            }
            c.init.pid
        };
        let cg = cgroup::Cgroup::of_pid(pid)
            .ok_or_else(|| Error::not_found(format!("no cgroup for container {}", req.id)))?;
        Ok(StatsResponse {
            stats: MessageField::some(cg.metrics()),
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

/// Decodes the runc options from Create's `options` Any; other option types are ignored.
fn runc_options(any: Option<&Any>) -> Result<Options> {
    match any {
        Some(a) if a.type_url.ends_with("containerd.runc.v1.Options") => {
            Options::parse_from_bytes(&a.value).map_err(|e| {
                Error::new(Code::InvalidArgument, format!("invalid runc options: {e}"))
            })
        }
        _ => Ok(Options::new()),
    }
}

#[async_trait]
impl Task for Service {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.do_state(req).await?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let id = req.id.clone();
        self.do_create(req).await.map_err(|e| {
            log::error!("create {id}: {e}");
            e.into()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        Ok(self.do_start(req).await?)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        Ok(self.do_delete(req).await?)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.do_pids(req).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.do_pause(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.do_pause(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(Code::Unimplemented.ttrpc_status(
            "checkpoint is not supported by containerd-shim-corral-v1 (no criu integration)",
        ))
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.do_kill(req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.do_exec(req).await?;
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

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.do_update(req).await?;
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
                seq: 3,
            },
            Exit {
                pid: 200,
                status: 7,
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
