//! How pods and containers are kept in corrald: each is a corrald container in our namespace,
//! marked by a label, with the CRI record in an extension. Nothing else holds them, so this is
//! the on-disk format of corral-cri (kept compatible across versions: add fields, never
//! renumber).
//!
//! ```text
//! corrald container <pod id>           labels   io.cri-containerd.kind=sandbox
//!   image = sandbox image, runtime = handler's, spec = the pause process
//!   extensions["io.corral.cri.sandbox"]   SandboxRecord  (config, network, created_at)
//! corrald container <container id>     labels   io.cri-containerd.kind=container
//!                                               io.corral.cri.sandbox-id=<pod id>
//!   extensions["io.corral.cri.container"] ContainerRecord (config, image, log path)
//!   extensions["io.corral.cri.status"]    ContainerStatusRecord (started/finished, exit)
//! ```
//!
//! The kind label is containerd's CRI label, so tools that look for CRI objects in `k8s.io`
//! find ours. The status extension is the only part that changes after creation; it is
//! replaced alone with the field mask `extensions.io.corral.cri.status`.

use protocol::grpc::any;
use protocol::grpc::containerd::services::containers::v1::Container;
use protocol::grpc::corral::cri::v1::{ContainerRecord, ContainerStatusRecord, SandboxRecord};
use protocol::grpc::prost_types::Any;

use crate::error::{Error, Result};

pub const KIND_LABEL: &str = "io.cri-containerd.kind";
pub const KIND_SANDBOX: &str = "sandbox";
pub const KIND_CONTAINER: &str = "container";
pub const SANDBOX_ID_LABEL: &str = "io.corral.cri.sandbox-id";

pub const SANDBOX_EXT: &str = "io.corral.cri.sandbox";
pub const CONTAINER_EXT: &str = "io.corral.cri.container";
pub const STATUS_EXT: &str = "io.corral.cri.status";

const SANDBOX_TYPE: &str = "corral.cri.v1.SandboxRecord";
const CONTAINER_TYPE: &str = "corral.cri.v1.ContainerRecord";
const STATUS_TYPE: &str = "corral.cri.v1.ContainerStatusRecord";

/// The filter that lists every pod and container of ours in one call.
pub const LIST_FILTER: &str = "labels.\"io.cri-containerd.kind\"";

/// What one corrald container is to us.
#[allow(clippy::large_enum_variant)] // read once per object at start-up
pub enum Record {
    Sandbox(SandboxRecord),
    Container(ContainerRecord, ContainerStatusRecord),
}

pub fn pack_sandbox(r: &SandboxRecord) -> Any {
    any::pack(SANDBOX_TYPE, r)
}

pub fn pack_container(r: &ContainerRecord) -> Any {
    any::pack(CONTAINER_TYPE, r)
}

pub fn pack_status(r: &ContainerStatusRecord) -> Any {
    any::pack(STATUS_TYPE, r)
}

/// Reads our record out of a corrald container. `Ok(None)`: not one of ours (another client's
/// container in the same namespace). A container with our kind label but a record we cannot
/// read is an error naming it: it is ours and damaged, which must not pass unnoticed.
pub fn decode(c: &Container) -> Result<Option<Record>> {
    let damaged = |what: &str, e: &dyn std::fmt::Display| {
        Error::internal(format!(
            "corrald container {}: cannot read its {what}: {e}",
            c.id
        ))
    };
    match c.labels.get(KIND_LABEL).map(String::as_str) {
        Some(KIND_SANDBOX) => {
            let ext = c
                .extensions
                .get(SANDBOX_EXT)
                .ok_or_else(|| damaged(SANDBOX_EXT, &"missing"))?;
            let r = any::unpack(ext, SANDBOX_TYPE).map_err(|e| damaged(SANDBOX_EXT, &e))?;
            Ok(Some(Record::Sandbox(r)))
        }
        Some(KIND_CONTAINER) => {
            let ext = c
                .extensions
                .get(CONTAINER_EXT)
                .ok_or_else(|| damaged(CONTAINER_EXT, &"missing"))?;
            let r = any::unpack(ext, CONTAINER_TYPE).map_err(|e| damaged(CONTAINER_EXT, &e))?;
            let status = match c.extensions.get(STATUS_EXT) {
                Some(s) => any::unpack(s, STATUS_TYPE).map_err(|e| damaged(STATUS_EXT, &e))?,
                None => ContainerStatusRecord::default(),
            };
            Ok(Some(Record::Container(r, status)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::grpc::runtime::v1::{PodSandboxConfig, PodSandboxMetadata};

    #[test]
    fn records_round_trip_through_a_corrald_container() {
        let rec = SandboxRecord {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 2,
                }),
                ..Default::default()
            }),
            ip: "10.88.0.5".into(),
            ..Default::default()
        };
        let mut c = Container {
            id: "p1".into(),
            ..Default::default()
        };
        c.labels.insert(KIND_LABEL.into(), KIND_SANDBOX.into());
        c.extensions.insert(SANDBOX_EXT.into(), pack_sandbox(&rec));
        match decode(&c).unwrap() {
            Some(Record::Sandbox(back)) => assert_eq!(back, rec),
            _ => panic!("not a sandbox"),
        }

        let mut c = Container {
            id: "c1".into(),
            ..Default::default()
        };
        assert!(decode(&c).unwrap().is_none(), "unlabelled is not ours");
        c.labels.insert(KIND_LABEL.into(), KIND_CONTAINER.into());
        let e = decode(&c).err().unwrap();
        assert!(
            e.message.contains("c1") && e.message.contains(CONTAINER_EXT),
            "{e}"
        );
        let rec = ContainerRecord {
            sandbox_id: "p1".into(),
            ..Default::default()
        };
        c.extensions
            .insert(CONTAINER_EXT.into(), pack_container(&rec));
        match decode(&c).unwrap() {
            Some(Record::Container(back, status)) => {
                assert_eq!(back, rec);
                assert!(!status.exited);
            }
            _ => panic!("not a container"),
        }
        c.extensions
            .insert(STATUS_EXT.into(), pack_sandbox(&SandboxRecord::default()));
        assert!(decode(&c).is_err(), "a status of the wrong type is damage");
    }
}
