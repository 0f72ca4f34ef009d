//! `google.protobuf.Any` the way containerd writes it.
//!
//! containerd's type URLs are *not* `type.googleapis.com/<name>`: events and option messages
//! carry the bare proto full name (`containerd.events.TaskExit`), and the OCI types registered
//! with its `typeurl` package carry `types.containerd.io/<path>` and a JSON body. ctr and the
//! CRI plugin decode by exact type URL, so any other prefix breaks them (shared/protocol.md
//! §3.2). That is why this module takes the URL explicitly instead of using `prost::Name`.
//!
//! ```
//! use protocol::grpc::any;
//! use protocol::grpc::containerd::events::TaskStart;
//!
//! let ev = any::pack(any::TASK_START, &TaskStart { container_id: "c1".into(), pid: 42 });
//! assert_eq!(ev.type_url, "containerd.events.TaskStart");
//! let back: TaskStart = any::unpack(&ev, any::TASK_START).unwrap();
//! assert_eq!(back.pid, 42);
//! ```

use prost_types::Any;

use crate::Code;

/// Wrap `msg` (protobuf-encoded) in an `Any` with the given type URL.
pub fn pack(type_url: &str, msg: &impl prost::Message) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: msg.encode_to_vec(),
    }
}

/// Wrap an already encoded body, e.g. the JSON of an OCI spec under [`OCI_SPEC`].
pub fn pack_raw(type_url: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value,
    }
}

/// Decode `any` as `M`, after checking that its type URL is `type_url`.
pub fn unpack<M: prost::Message + Default>(any: &Any, type_url: &str) -> Result<M, UnpackError> {
    if any.type_url != type_url {
        return Err(UnpackError::WrongType {
            expected: type_url.to_owned(),
            found: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// Why an `Any` could not be unpacked. Both are the sender's fault: InvalidArgument.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unexpected Any type {found:?}, expected {expected:?}")]
    WrongType { expected: String, found: String },
    #[error("failed to decode Any of type {type_url:?}: {source}")]
    Decode {
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
}

impl UnpackError {
    pub fn code(&self) -> Code {
        Code::InvalidArgument
    }
}

// Task events, published by shims (topics /tasks/...).
pub const TASK_CREATE: &str = "containerd.events.TaskCreate";
pub const TASK_START: &str = "containerd.events.TaskStart";
pub const TASK_DELETE: &str = "containerd.events.TaskDelete";
pub const TASK_IO: &str = "containerd.events.TaskIO";
pub const TASK_EXIT: &str = "containerd.events.TaskExit";
pub const TASK_OOM: &str = "containerd.events.TaskOOM";
pub const TASK_EXEC_ADDED: &str = "containerd.events.TaskExecAdded";
pub const TASK_EXEC_STARTED: &str = "containerd.events.TaskExecStarted";
pub const TASK_PAUSED: &str = "containerd.events.TaskPaused";
pub const TASK_RESUMED: &str = "containerd.events.TaskResumed";
pub const TASK_CHECKPOINTED: &str = "containerd.events.TaskCheckpointed";

// Daemon-side events (topics /containers/..., /content/..., /namespaces/..., /snapshot/...).
pub const CONTAINER_CREATE: &str = "containerd.events.ContainerCreate";
pub const CONTAINER_UPDATE: &str = "containerd.events.ContainerUpdate";
pub const CONTAINER_DELETE: &str = "containerd.events.ContainerDelete";
pub const CONTENT_DELETE: &str = "containerd.events.ContentDelete";
pub const NAMESPACE_CREATE: &str = "containerd.events.NamespaceCreate";
pub const NAMESPACE_UPDATE: &str = "containerd.events.NamespaceUpdate";
pub const NAMESPACE_DELETE: &str = "containerd.events.NamespaceDelete";
pub const SNAPSHOT_PREPARE: &str = "containerd.events.SnapshotPrepare";
pub const SNAPSHOT_COMMIT: &str = "containerd.events.SnapshotCommit";
pub const SNAPSHOT_REMOVE: &str = "containerd.events.SnapshotRemove";

// Image events live in the images service package (topics /images/...).
pub const IMAGE_CREATE: &str = "containerd.services.images.v1.ImageCreate";
pub const IMAGE_UPDATE: &str = "containerd.services.images.v1.ImageUpdate";
pub const IMAGE_DELETE: &str = "containerd.services.images.v1.ImageDelete";

// OCI runtime-spec types, JSON-encoded: Container.spec, Tasks.Exec spec, Tasks.Update resources.
pub const OCI_SPEC: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub const OCI_PROCESS: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub const OCI_LINUX_RESOURCES: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// runc shim options (Container.runtime.options, Tasks.Create options), protobuf.
pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

// Task metrics (Metric.data), as runc shims report them on cgroup v1 and v2.
pub const CGROUPS_V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
pub const CGROUPS_V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::containerd::events::{ContainerCreate, TaskExit, container_create};
    use crate::grpc::containerd::services::images::v1::ImageCreate;

    #[test]
    fn pack_uses_the_bare_type_url() {
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 7,
            exit_status: 137,
            exited_at: None,
        };
        let any = pack(TASK_EXIT, &exit);
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        assert_eq!(unpack::<TaskExit>(&any, TASK_EXIT).unwrap(), exit);
    }

    #[test]
    fn unpack_rejects_another_type() {
        let any = pack(IMAGE_CREATE, &ImageCreate::default());
        let err = unpack::<ImageCreate>(&any, IMAGE_UPDATE).unwrap_err();
        assert!(matches!(err, UnpackError::WrongType { .. }), "{err}");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("ImageCreate"), "{err}");
    }

    #[test]
    fn unpack_reports_garbage() {
        let any = pack_raw(CONTAINER_CREATE, vec![0xff, 0xff, 0xff]);
        let err = unpack::<ContainerCreate>(&any, CONTAINER_CREATE).unwrap_err();
        assert!(matches!(err, UnpackError::Decode { .. }), "{err}");
    }

    #[test]
    fn nested_runtime_message_round_trips() {
        let ev = ContainerCreate {
            id: "c1".into(),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Some(container_create::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: Some(pack_raw(RUNC_OPTIONS, vec![])),
            }),
        };
        let back: ContainerCreate = unpack(&pack(CONTAINER_CREATE, &ev), CONTAINER_CREATE).unwrap();
        assert_eq!(back, ev);
    }
}
