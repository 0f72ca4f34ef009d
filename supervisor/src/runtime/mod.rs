//! Tasks and their shims (containerd's runtime v2 manager).
//!
//! Each task has a bundle (see [`bundle`]) and one long-lived shim process, started with the
//! shim's `start` action and then driven over one ttrpc connection. The shim, not corrald, is
//! the parent of the container, so containers outlive corrald; what corrald knows about a task
//! it asks the shim for (State, Wait), it does not remember it.
//!
//! ```text
//!   Tasks.Create ─▶ bundle ─▶ `shim start` ─▶ dial address ─▶ Task.Create ─▶ Connect (shim pid)
//!                                                      └─ pidfd(shim) ─▶ died: `shim delete`,
//!                                                         /tasks/exit + /tasks/delete, STOPPED
//!   Tasks.Delete ─▶ Task.Delete ─▶ Task.Shutdown ─▶ bundle removed
//!   start-up     ─▶ every bundle in parallel: dial + Connect + State ─▶ live, or `shim delete`
//! ```
//!
//! A task is [`Task::Live`] (its shim answers) or [`Task::Dead`] (its shim died; the exit the
//! shim's `delete` action reported is kept in the bundle's `exit` file until the task is
//! deleted, so it survives a restart of corrald too). The registry lock is never held across
//! a call to a shim, a process spawn or file-system work.

pub mod binary;
pub mod bundle;
pub mod legacy;
pub mod orphans;
pub mod shim;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use protocol::Code;
use protocol::grpc::any;
use protocol::protobuf::MessageField;
use protocol::shim as api;
use tonic::Status;

use self::binary::{Resolver, ShimEnv};
use self::bundle::{Bundle, Exit};
use self::shim::{LONG, SHORT, Shim, ctx};
use crate::events::Exchange;
use crate::metadata::{self, Container, Db, Time};
use protocol::grpc::containerd::services::events::v1::Envelope;

/// How long a shim without a task gets, at start-up, for a Create in flight to finish.
const CREATE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The directory name containerd uses under root and state.
pub const PLUGIN_DIR: &str = "io.containerd.runtime.v2.task";

type Key = (String, String);

#[derive(Clone)]
enum Entry {
    /// Reserved by a Create in progress.
    Creating,
    Live(Arc<Shim>),
    Dead(Arc<Dead>),
}

/// A task whose shim is gone: only its exit is left.
pub struct Dead {
    pub bundle: Bundle,
    pub exit: Exit,
}

/// A registered task.
#[derive(Clone)]
pub enum Task {
    Live(Arc<Shim>),
    Dead(Arc<Dead>),
}

/// What Tasks.Create needs.
pub struct CreateTask {
    pub namespace: String,
    pub container: Container,
    pub id: String,
    pub rootfs: Vec<protocol::mount::Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// Options from the request (they win over the container's).
    pub options: Option<prost_types::Any>,
    pub runtime_path: String,
}

pub struct Manager {
    state_dir: PathBuf,
    work_dir: PathBuf,
    env: ShimEnv,
    resolver: Resolver,
    events: Exchange,
    tasks: Mutex<HashMap<Key, Entry>>,
}

fn not_found(id: &str) -> Status {
    Code::NotFound.grpc_status(format!("task {id}: not found"))
}

fn internal(what: String) -> Status {
    Code::Internal.grpc_status(what)
}

impl Manager {
    pub fn new(
        root: &std::path::Path,
        state: &std::path::Path,
        env: ShimEnv,
        config: crate::config::RuntimeConfig,
        events: Exchange,
    ) -> Manager {
        Manager {
            state_dir: state.join(PLUGIN_DIR),
            work_dir: root.join(PLUGIN_DIR),
            env,
            resolver: Resolver::new(config),
            events,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_runtime(&self) -> &str {
        self.resolver.default_runtime()
    }

    fn bundle(&self, ns: &str, id: &str) -> Bundle {
        Bundle::new(&self.state_dir, &self.work_dir, ns, id)
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Task, Status> {
        match self
            .tasks
            .lock()
            .unwrap()
            .get(&(ns.to_string(), id.to_string()))
        {
            Some(Entry::Live(s)) => Ok(Task::Live(s.clone())),
            Some(Entry::Dead(d)) => Ok(Task::Dead(d.clone())),
            Some(Entry::Creating) | None => Err(not_found(id)),
        }
    }

    /// The tasks of a namespace, ordered by id.
    pub fn list(&self, ns: &str) -> Vec<(String, Task)> {
        let mut v: Vec<(String, Task)> = self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == ns)
            .filter_map(|((_, id), e)| match e {
                Entry::Live(s) => Some((id.clone(), Task::Live(s.clone()))),
                Entry::Dead(d) => Some((id.clone(), Task::Dead(d.clone()))),
                Entry::Creating => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Tasks.Create: bundle, shim, Task.Create; returns the task's pid.
    pub async fn create(self: &Arc<Self>, req: CreateTask) -> Result<u32, Status> {
        let key = (req.namespace.clone(), req.id.clone());
        {
            let mut tasks = self.tasks.lock().unwrap();
            if tasks.contains_key(&key) {
                return Err(
                    Code::AlreadyExists.grpc_status(format!("task {}: already exists", req.id))
                );
            }
            tasks.insert(key.clone(), Entry::Creating);
        }
        // Whatever happens below, the reservation is released or replaced.
        let result = self.create_reserved(&req).await;
        let mut tasks = self.tasks.lock().unwrap();
        match result {
            Ok(shim) => {
                let pid = shim.1;
                tasks.insert(key, Entry::Live(shim.0.clone()));
                drop(tasks);
                self.watch(shim.0);
                Ok(pid)
            }
            Err(e) => {
                tasks.remove(&key);
                Err(e)
            }
        }
    }

    async fn create_reserved(&self, req: &CreateTask) -> Result<(Arc<Shim>, u32), Status> {
        let mut runtime = if req.container.runtime.name.is_empty() {
            self.resolver.default_runtime().to_string()
        } else {
            req.container.runtime.name.clone()
        };
        let task_options = req.options.clone().filter(|o| !o.type_url.is_empty());
        let container_options = req
            .container
            .runtime
            .options
            .as_ref()
            .map(|o| prost_types::Any {
                type_url: o.type_url.clone(),
                value: o.value.clone(),
            });
        let options = if runtime == legacy::RUNTIME_V1 && !self.resolver.configured(&runtime) {
            runtime = legacy::RUNTIME_RUNC_V2.to_string();
            legacy::runc_v2_options(container_options.as_ref(), task_options.as_ref())?
        } else {
            task_options.or(container_options)
        }
        .or_else(|| self.resolver.default_options(&runtime));
        let binary = if req.runtime_path.is_empty() {
            self.resolver.resolve(&runtime)?
        } else {
            let p = PathBuf::from(&req.runtime_path);
            if !p.is_absolute() {
                return Err(Code::InvalidArgument.grpc_status(format!(
                    "runtime_path {:?} must be absolute",
                    req.runtime_path
                )));
            }
            p
        };
        let spec = match &req.container.spec {
            Some(s) if !s.value.is_empty() => s.value.clone(),
            _ => {
                return Err(Code::FailedPrecondition
                    .grpc_status(format!("container {}: has no spec", req.id)));
            }
        };
        let bundle = self.bundle(&req.namespace, &req.id);
        {
            let bundle = bundle.clone();
            let binary = binary.clone();
            crate::services::blocking(move || {
                bundle.create(&spec, &binary).map_err(|e| {
                    let code = match e.kind() {
                        std::io::ErrorKind::AlreadyExists => Code::AlreadyExists,
                        std::io::ErrorKind::InvalidData => Code::InvalidArgument,
                        _ => Code::Internal,
                    };
                    code.grpc_status(format!("bundle {}: {e}", bundle.path.display()))
                })
            })
            .await?;
        }
        match self.start_shim(req, &bundle, &binary, options).await {
            Ok(v) => Ok(v),
            Err((e, started)) => {
                if started {
                    binary::delete(&binary, &self.env, &bundle).await;
                }
                self.remove_bundle(bundle).await;
                Err(e)
            }
        }
    }

    /// Starts the shim and creates the task in it. On error, says whether a shim was started
    /// (it then needs its `delete` action).
    async fn start_shim(
        &self,
        req: &CreateTask,
        bundle: &Bundle,
        binary: &std::path::Path,
        options: Option<prost_types::Any>,
    ) -> Result<(Arc<Shim>, u32), (Status, bool)> {
        // The log reader must exist before `start`: the shim opens the FIFO for writing.
        let log = shim::forward_log(bundle);
        let address = binary::start(binary, &self.env, bundle, options.as_ref())
            .await
            .map_err(|e| (e, true))?;
        let client = shim::dial(&address, LONG)
            .await
            .map_err(|e| (internal(format!("shim for {}: {e}", req.id)), true))?;
        let create = api::CreateTaskRequest {
            id: req.id.clone(),
            bundle: bundle.path.display().to_string(),
            rootfs: req.rootfs.clone(),
            terminal: req.terminal,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            options: MessageField::from_option(options.map(|o| {
                protocol::protobuf::well_known_types::any::Any {
                    type_url: o.type_url,
                    value: o.value,
                    ..Default::default()
                }
            })),
            ..Default::default()
        };
        let created = client.create(ctx(LONG), &create).await;
        let fail = |e: Status| {
            let client = client.clone();
            let id = req.id.clone();
            async move {
                let _ = client
                    .shutdown(
                        ctx(SHORT),
                        &api::ShutdownRequest {
                            id,
                            now: true,
                            ..Default::default()
                        },
                    )
                    .await;
                (e, true)
            }
        };
        let pid = match created {
            Ok(r) => r.pid,
            Err(e) => return Err(fail(shim::status(&format!("create task {}", req.id), e)).await),
        };
        let connect = client
            .connect(
                ctx(SHORT),
                &api::ConnectRequest {
                    id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        let shim_pid = match connect {
            Ok(r) => r.shim_pid,
            Err(e) => return Err(fail(shim::status(&format!("connect task {}", req.id), e)).await),
        };
        let shim = Shim::new(bundle.clone(), binary.to_path_buf(), client, shim_pid, log);
        Ok((Arc::new(shim), pid))
    }

    /// Watches a live shim's process; its unexpected death makes the task Dead.
    fn watch(self: &Arc<Self>, shim: Arc<Shim>) {
        let me = self.clone();
        let exited = shim::exit_of(shim.pid);
        tokio::spawn(async move {
            match exited {
                Ok(f) => f.await,
                Err(e) => log::warn!(
                    "shim {} (pid {}) cannot be watched: {e}",
                    shim.id(),
                    shim.pid
                ),
            }
            // Boxed: the clean-up's state is large, and a watch that waits is all most tasks
            // ever are (it would be ~2 KB of corrald's heap per task).
            Box::pin(me.shim_died(shim)).await;
        });
    }

    /// The shim of a task exited. If the task is still registered to it, clean up with the
    /// shim's `delete` action and report the task stopped (protocol.md §3.4).
    async fn shim_died(self: &Arc<Self>, shim: Arc<Shim>) {
        let key = (shim.bundle.namespace.clone(), shim.id().to_string());
        let ours = matches!(
            self.tasks.lock().unwrap().get(&key),
            Some(Entry::Live(s)) if Arc::ptr_eq(s, &shim)
        );
        if !ours {
            return;
        }
        log::warn!(
            "shim of task {}/{} (pid {}) exited; cleaning up",
            key.0,
            key.1,
            shim.pid
        );
        let exit = binary::delete(&shim.binary, &self.env, &shim.bundle).await;
        self.bury(&shim.bundle, exit).await;
        {
            let mut tasks = self.tasks.lock().unwrap();
            if matches!(tasks.get(&key), Some(Entry::Live(s)) if Arc::ptr_eq(s, &shim)) {
                tasks.insert(
                    key,
                    Entry::Dead(Arc::new(Dead {
                        bundle: shim.bundle.clone(),
                        exit,
                    })),
                );
            }
        }
        shim.set_died(exit);
        self.publish_stopped(&shim.bundle, exit);
    }

    /// Records a dead task's exit in its bundle (rootfs unmounted) so a restart sees it too.
    async fn bury(&self, bundle: &Bundle, exit: Exit) {
        let b = bundle.clone();
        let _ = tokio::task::spawn_blocking(move || {
            b.unmount_rootfs();
            b.remove_stale_socket();
            if let Err(e) = b.write_exit(&exit) {
                log::warn!("record exit of {}/{}: {e}", b.namespace, b.id);
            }
        })
        .await;
    }

    fn publish_stopped(&self, bundle: &Bundle, exit: Exit) {
        use protocol::grpc::containerd::events::{TaskDelete, TaskExit};
        let at = Some(prost_types::Timestamp {
            seconds: exit.at.seconds,
            nanos: exit.at.nanos,
        });
        self.events.publish(
            &bundle.namespace,
            "/tasks/exit",
            any::pack(
                any::TASK_EXIT,
                &TaskExit {
                    container_id: bundle.id.clone(),
                    id: bundle.id.clone(),
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: at,
                },
            ),
        );
        self.events.publish(
            &bundle.namespace,
            "/tasks/delete",
            any::pack(
                any::TASK_DELETE,
                &TaskDelete {
                    container_id: bundle.id.clone(),
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: at,
                    id: bundle.id.clone(),
                },
            ),
        );
    }

    async fn remove_bundle(&self, bundle: Bundle) {
        let _ = tokio::task::spawn_blocking(move || {
            bundle.remove_cgroups();
            if let Err(e) = bundle.remove() {
                log::warn!("remove bundle {}: {e}", bundle.path.display());
            }
        })
        .await;
    }

    /// Tasks.Delete: the task's exit; its shim is shut down and its bundle removed.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<Exit, Status> {
        let key = (ns.to_string(), id.to_string());
        match self.get(ns, id)? {
            Task::Dead(d) => {
                let removed = {
                    let mut tasks = self.tasks.lock().unwrap();
                    match tasks.get(&key) {
                        Some(Entry::Dead(x)) if Arc::ptr_eq(x, &d) => tasks.remove(&key).is_some(),
                        _ => false,
                    }
                };
                if !removed {
                    return Err(not_found(id));
                }
                self.remove_bundle(d.bundle.clone()).await;
                Ok(d.exit)
            }
            Task::Live(s) => {
                let resp = s
                    .client
                    .delete(
                        ctx(LONG),
                        &api::DeleteRequest {
                            id: id.to_string(),
                            ..Default::default()
                        },
                    )
                    .await;
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        let st = shim::status(&format!("delete task {id}"), e);
                        if st.code() == tonic::Code::NotFound {
                            // The shim no longer knows the task: nothing is left to keep.
                            self.forget(&key, &s).await;
                        }
                        return Err(st);
                    }
                };
                {
                    let mut tasks = self.tasks.lock().unwrap();
                    if matches!(tasks.get(&key), Some(Entry::Live(x)) if Arc::ptr_eq(x, &s)) {
                        tasks.remove(&key);
                    }
                }
                let exit = Exit {
                    pid: resp.pid,
                    status: resp.exit_status,
                    at: resp
                        .exited_at
                        .as_ref()
                        .map(|t| Time {
                            seconds: t.seconds,
                            nanos: t.nanos,
                        })
                        .unwrap_or_default(),
                };
                self.shutdown(&s).await;
                self.remove_bundle(s.bundle.clone()).await;
                Ok(exit)
            }
        }
    }

    /// Drops a live task whose shim lost it: shim shut down, bundle removed.
    async fn forget(&self, key: &Key, s: &Arc<Shim>) {
        {
            let mut tasks = self.tasks.lock().unwrap();
            if matches!(tasks.get(key), Some(Entry::Live(x)) if Arc::ptr_eq(x, s)) {
                tasks.remove(key);
            }
        }
        self.shutdown(s).await;
        binary::delete(&s.binary, &self.env, &s.bundle).await;
        self.remove_bundle(s.bundle.clone()).await;
    }

    /// Asks a shim we are done with to exit (it stays while it serves other tasks of its group).
    async fn shutdown(&self, s: &Shim) {
        if let Err(e) = s
            .client
            .shutdown(
                ctx(SHORT),
                &api::ShutdownRequest {
                    id: s.id().to_string(),
                    ..Default::default()
                },
            )
            .await
        {
            // A shim exits while answering Shutdown; a closed connection is the usual answer.
            log::debug!("shutdown shim of {}: {e}", s.id());
        }
    }

    /// Start-up: finds every task again by asking its shim (protocol.md §4). Runs before
    /// corrald serves. Every bundle ends up as a live task, a dead one (its shim did not
    /// answer; its `delete` action ran), or removed (no task was ever created in it, or its
    /// container is gone) — no shim is left running without a task. Returns how many tasks
    /// (live or dead) it registered.
    ///
    /// A task whose process exited while corrald was down (after `outage_since`, when the
    /// previous corrald was last alive) has its /tasks/exit published again from its shim's
    /// State, all of them in the order they exited, before corrald serves: containerd's own
    /// shim gives up delivering an exit after about 20 s, and ours may come back after
    /// corrald serves. The shim's own copy, if it comes, is dropped by the exchange.
    pub async fn load(
        self: &Arc<Self>,
        db: &Db,
        outage_since: Option<std::time::SystemTime>,
    ) -> usize {
        let dir = self.state_dir.clone();
        let address = self.env.address.display().to_string();
        let found = tokio::task::spawn_blocking(move || {
            orphans::kill_starts(&address);
            bundle::scan(&dir)
        })
        .await
        .unwrap_or_default();
        let started = std::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (ns, id) in found {
            let container =
                match db.get::<Container>(metadata::CONTAINERS, &metadata::key(&ns, &[&id])) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("container {ns}/{id}: {e}");
                        None
                    }
                };
            let me = self.clone();
            set.spawn(async move {
                let key = (ns.clone(), id.clone());
                let (kept, exit) = me.load_one(ns, id, container, outage_since).await;
                (kept.then_some(key), exit)
            });
        }
        let mut kept = HashSet::new();
        let mut live = 0;
        let mut exits = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((k, exit)) = r {
                if let Some(k) = k {
                    kept.insert(k);
                    live += 1;
                }
                exits.extend(exit);
            }
        }
        exits.sort_by_key(|e: &Envelope| e.timestamp.as_ref().map(|t| (t.seconds, t.nanos)));
        if !exits.is_empty() {
            log::info!(
                "runtime: {} tasks exited while corrald was down; publishing their exits",
                exits.len()
            );
        }
        for e in exits {
            self.events.forward(e);
        }
        let live_pids: HashSet<u32> = self
            .tasks
            .lock()
            .unwrap()
            .values()
            .filter_map(|e| match e {
                Entry::Live(s) => Some(s.pid),
                _ => None,
            })
            .collect();
        let work = self.work_dir.clone();
        let address = self.env.address.display().to_string();
        let _ = tokio::task::spawn_blocking(move || {
            bundle::remove_stale_work_dirs(&work, &kept);
            orphans::kill_unaccounted(&address, &live_pids);
        })
        .await;
        log::info!(
            "runtime: {live} tasks loaded in {} ms",
            started.elapsed().as_millis()
        );
        live
    }

    /// Loads one bundle; true if a task (live or dead) was registered for it, and the exit
    /// to publish if its process exited after `outage_since`.
    async fn load_one(
        self: &Arc<Self>,
        ns: String,
        id: String,
        container: Option<Container>,
        outage_since: Option<std::time::SystemTime>,
    ) -> (bool, Option<Envelope>) {
        let bundle = self.bundle(&ns, &id);
        let key = (ns.clone(), id.clone());
        if let Some(exit) = bundle.exit() {
            self.tasks
                .lock()
                .unwrap()
                .insert(key, Entry::Dead(Arc::new(Dead { bundle, exit })));
            return (true, None);
        }
        let binary = bundle.shim_binary().or_else(|| {
            container
                .as_ref()
                .and_then(|c| self.resolver.resolve(&c.runtime.name).ok())
        });
        let Some(binary) = binary else {
            log::warn!("bundle {ns}/{id}: no shim binary known; removing it");
            self.remove_bundle(bundle).await;
            return (false, None);
        };
        let Some(address) = bundle.address() else {
            // The shim was never started (or its `start` was cut short): nothing to reach.
            log::info!("bundle {ns}/{id}: no shim address; cleaning up");
            binary::delete(&binary, &self.env, &bundle).await;
            self.remove_bundle(bundle).await;
            return (false, None);
        };
        let timeout = self.resolver.load_timeout();
        // A shim blocked opening its log FIFO (no reader while corrald was down) answers only
        // once the FIFO has a reader again.
        let log = shim::forward_log(&bundle);
        let connected = async {
            let client = shim::dial(&address, timeout).await?;
            let c = client
                .connect(
                    ctx(timeout),
                    &api::ConnectRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| shim::status("connect", e).message().to_string())?;
            // A shim whose Create is still running (corrald died while waiting for it) says
            // NotFound until runc is done: give it a moment to become a task.
            let deadline = tokio::time::Instant::now() + CREATE_GRACE;
            let state = loop {
                let state = client
                    .state(
                        ctx(timeout),
                        &api::StateRequest {
                            id: id.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
                match &state {
                    Err(e)
                        if Code::of_ttrpc(e) == Code::NotFound
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    _ => break state,
                }
            };
            let state = state.map_err(|e| shim::status("state", e));
            Ok::<_, String>((client, c.shim_pid, state))
        }
        .await;
        match connected {
            Ok((client, pid, Ok(state))) if container.is_some() => {
                let exit = exit_during_outage(&ns, &id, &state, outage_since);
                let shim = Arc::new(Shim::new(bundle, binary, client, pid, log));
                self.tasks
                    .lock()
                    .unwrap()
                    .insert(key, Entry::Live(shim.clone()));
                self.watch(shim);
                (true, exit)
            }
            Ok((client, pid, state)) => {
                // A shim without a task (corrald died between `start` and Create) or a task
                // whose container record is gone: shut it down, nothing may run unaccounted.
                let why = match state {
                    Err(e) => format!("its shim has no task ({})", e.message()),
                    Ok(_) => "its container is gone".into(),
                };
                log::warn!("task {ns}/{id}: {why}; shutting the shim (pid {pid}) down");
                let s = Shim::new(bundle.clone(), binary.clone(), client, pid, None);
                if let Ok(exited) = shim::exit_of(pid) {
                    let _ = s
                        .client
                        .kill(
                            ctx(SHORT),
                            &api::KillRequest {
                                id: id.clone(),
                                signal: 9,
                                all: true,
                                ..Default::default()
                            },
                        )
                        .await;
                    self.shutdown(&s).await;
                    if tokio::time::timeout(SHORT, exited).await.is_err() {
                        log::warn!("shim of {ns}/{id} (pid {pid}) ignored Shutdown; killing it");
                        // SAFETY: kill(2) of the shim pid it reported itself, still watched.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
                drop(s);
                binary::delete(&binary, &self.env, &bundle).await;
                self.remove_bundle(bundle).await;
                (false, None)
            }
            Err(e) => {
                log::warn!("task {ns}/{id}: shim unreachable ({e}); running its delete action");
                drop(log);
                let exit = binary::delete(&binary, &self.env, &bundle).await;
                if container.is_none() {
                    self.remove_bundle(bundle).await;
                    return (false, None);
                }
                self.bury(&bundle, exit).await;
                self.tasks.lock().unwrap().insert(
                    key,
                    Entry::Dead(Arc::new(Dead {
                        bundle: bundle.clone(),
                        exit,
                    })),
                );
                self.publish_stopped(&bundle, exit);
                (true, None)
            }
        }
    }
}

/// The /tasks/exit of a task its shim reports STOPPED with an exit after `since` (corrald was
/// down then, so nobody may have got it), stamped with the exit's own time: as the shim
/// publishes it, so that the exchange knows the shim's copy for the same exit.
fn exit_during_outage(
    ns: &str,
    id: &str,
    state: &api::StateResponse,
    since: Option<std::time::SystemTime>,
) -> Option<Envelope> {
    use protocol::grpc::containerd::events::TaskExit;
    let since = since?;
    if state.status.enum_value() != Ok(protocol::task::Status::STOPPED) {
        return None;
    }
    let at = state.exited_at.as_ref()?;
    let at = prost_types::Timestamp {
        seconds: at.seconds,
        nanos: at.nanos,
    };
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if (at.seconds, at.nanos) <= (since.as_secs() as i64, since.subsec_nanos() as i32) {
        return None;
    }
    Some(Envelope {
        timestamp: Some(at),
        namespace: ns.to_string(),
        topic: "/tasks/exit".into(),
        event: Some(any::pack(
            any::TASK_EXIT,
            &TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: state.pid,
                exit_status: state.exit_status,
                exited_at: Some(at),
            },
        )),
    })
}
