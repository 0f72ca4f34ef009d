//! The daemon's gRPC API, blocking, for what `ctr` cannot do: a task created with runtime
//! options (runc `shim_cgroup`, `root`), a container spec changed after `ctr containers create`
//! (containerd's client tests build specs `ctr` has no flag for, e.g. no pid namespace), and
//! Wait/Kill of one task, timed by the test rather than by ctr.
//!
//! ```ignore
//! d.ctr().ok(&["containers", "create", "--runtime", rt, IMAGE_REF, &id, "sleep", "1000"]);
//! let api = d.api();
//! api.create_task(&id, Some(api::runc_options(&opts)))?; // rootfs: the container's snapshot
//! api.start_task(&id);
//! api.kill(&id, 9);
//! assert_eq!(api.wait(&id), 137);
//! api.delete_task(&id);
//! ```
//!
//! Every call but [`Api::create_task`] panics, naming the call, when the daemon answers with an
//! error: tests that expect an error use the Result-returning one.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use protobuf::Message as _;
use protocol::grpc::client::Client;
use protocol::grpc::containerd::services::containers::v1 as containers;
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use protocol::grpc::prost_types;
use protocol::grpc::tonic;

/// Deadline of each call: a daemon or shim that never answers fails the test, not hangs it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one daemon socket and namespace, with its own single-threaded runtime.
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: Client,
}

/// `options` as the `Any` containerd's clients send to `io.containerd.runc.*` runtimes.
pub fn runc_options(options: &protocol::options::Options) -> prost_types::Any {
    prost_types::Any {
        type_url: protocol::grpc::any::RUNC_OPTIONS.into(),
        value: options.write_to_bytes().expect("runc options encode"),
    }
}

impl Api {
    /// Dials `address`; panics if the daemon does not answer.
    pub fn connect(address: &Path, namespace: &str) -> Api {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = rt
            .block_on(Client::connect(address, namespace))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", address.display()));
        Api { rt, client }
    }

    /// Runs one call to its answer or [`CALL_TIMEOUT`] (then panics naming `what`).
    fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, call).await })
            .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
            .map(tonic::Response::into_inner)
    }

    /// Rewrites container `id`'s OCI spec (JSON) with `edit`.
    pub fn edit_spec(&self, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let c = &self.client;
        let mut container = self.container(id);
        let mut spec_any = container.spec.take().expect("the container has a spec");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&spec_any.value).expect("the spec is JSON");
        edit(&mut spec);
        spec_any.value = serde_json::to_vec(&spec).expect("spec encodes");
        container.spec = Some(spec_any);
        let update = containers::UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["spec".into()],
            }),
        };
        self.call("update container", c.containers().update(c.req(update)))
            .unwrap_or_else(|e| panic!("update the spec of {id}: {e}"));
    }

    /// Container `id` as the daemon stores it.
    pub fn container(&self, id: &str) -> containers::Container {
        let c = &self.client;
        let get = containers::GetContainerRequest { id: id.to_string() };
        self.call("get container", c.containers().get(c.req(get)))
            .unwrap_or_else(|e| panic!("get container {id}: {e}"))
            .container
            .unwrap_or_else(|| panic!("get container {id}: no container in the answer"))
    }

    /// Tasks.Create for container `id` with no stdio, its snapshot's mounts as rootfs (as
    /// containerd's client sends them: containerd 1.6 does not look them up itself) and
    /// `options`; returns the init's pid.
    pub fn create_task(
        &self,
        id: &str,
        options: Option<prost_types::Any>,
    ) -> Result<u32, tonic::Status> {
        let c = &self.client;
        let container = self.container(id);
        let mut rootfs = Vec::new();
        if !container.snapshot_key.is_empty() {
            let mounts = snapshots::MountsRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            };
            rootfs = self
                .call("snapshot mounts", c.snapshots().mounts(c.req(mounts)))
                .unwrap_or_else(|e| panic!("mounts of {}: {e}", container.snapshot_key))
                .mounts;
        }
        let req = tasks::CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            options,
            ..Default::default()
        };
        self.call("create task", c.tasks().create(c.req(req)))
            .map(|r| r.pid)
    }

    /// Tasks.Start of the init; returns its pid.
    pub fn start_task(&self, id: &str) -> u32 {
        let c = &self.client;
        let req = tasks::StartRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.call("start task", c.tasks().start(c.req(req)))
            .unwrap_or_else(|e| panic!("start task {id}: {e}"))
            .pid
    }

    /// Tasks.Kill of the init with `signal` (not `all`, as containerd's `task.Kill`).
    pub fn kill(&self, id: &str, signal: u32) {
        let c = &self.client;
        let req = tasks::KillRequest {
            container_id: id.to_string(),
            signal,
            ..Default::default()
        };
        self.call("kill task", c.tasks().kill(c.req(req)))
            .unwrap_or_else(|e| panic!("kill task {id} with {signal}: {e}"));
    }

    /// Tasks.Wait for the init; returns its exit status.
    pub fn wait(&self, id: &str) -> u32 {
        let c = &self.client;
        let req = tasks::WaitRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.call("wait task", c.tasks().wait(c.req(req)))
            .unwrap_or_else(|e| panic!("wait for task {id}: {e}"))
            .exit_status
    }

    /// Tasks.Delete; returns the exit status it reports.
    pub fn delete_task(&self, id: &str) -> u32 {
        let c = &self.client;
        let req = tasks::DeleteTaskRequest {
            container_id: id.to_string(),
        };
        self.call("delete task", c.tasks().delete(c.req(req)))
            .unwrap_or_else(|e| panic!("delete task {id}: {e}"))
            .exit_status
    }

    /// Tasks.Start of the init (`exec_id` empty) or of an exec process: the daemon's answer.
    pub fn try_start(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        let c = &self.client;
        let req = tasks::StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        self.call("start", c.tasks().start(c.req(req)))
            .map(|r| r.pid)
    }

    /// Tasks.Kill of the init with `signal`: the daemon's answer.
    pub fn try_kill(&self, id: &str, signal: u32) -> Result<(), tonic::Status> {
        let c = &self.client;
        let req = tasks::KillRequest {
            container_id: id.to_string(),
            signal,
            ..Default::default()
        };
        self.call("kill task", c.tasks().kill(c.req(req))).map(drop)
    }

    /// Tasks.Delete: the daemon's answer (the exit status it reports).
    pub fn try_delete_task(&self, id: &str) -> Result<u32, tonic::Status> {
        let c = &self.client;
        let req = tasks::DeleteTaskRequest {
            container_id: id.to_string(),
        };
        self.call("delete task", c.tasks().delete(c.req(req)))
            .map(|r| r.exit_status)
    }

    /// Tasks.Exec of `args` as exec process `exec_id` of task `id`, with the rest of the
    /// container's process spec and no stdio (not started: see [`Api::try_start`]).
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<(), tonic::Status> {
        let spec = self.container(id).spec.expect("the container has a spec");
        let spec: serde_json::Value =
            serde_json::from_slice(&spec.value).expect("the container's spec is JSON");
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        let c = &self.client;
        let req = tasks::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).expect("process spec encodes"),
            }),
            ..Default::default()
        };
        self.call("exec", c.tasks().exec(c.req(req))).map(drop)
    }

    /// Tasks.DeleteProcess of exec process `exec_id`: the daemon's answer.
    pub fn try_delete_process(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        let c = &self.client;
        let req = tasks::DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        self.call("delete process", c.tasks().delete_process(c.req(req)))
            .map(|r| r.exit_status)
    }
}
