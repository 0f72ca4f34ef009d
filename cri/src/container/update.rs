//! UpdateContainerResources and ReopenContainerLog: changes to a container after it was made.

use std::collections::HashMap;

use protocol::grpc::any;
use protocol::grpc::containerd::services::containers::v1 as containers;
use protocol::grpc::prost_types::FieldMask;
use protocol::grpc::runtime::v1::{
    LinuxContainerConfig, ReopenContainerLogRequest, ReopenContainerLogResponse,
    UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};

use crate::core::Cri;
use crate::error::{Error, Result};
use crate::records;
use crate::spec;
use crate::store::State;

impl Cri {
    /// New cgroup limits: applied to the running task (all or nothing, by runc), and kept in
    /// the container's spec and record so a restart and ContainerStatus both see them.
    pub async fn update_container_resources(
        &self,
        r: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse> {
        let c = self.store.find_container(&r.container_id)?;
        let Some(new) = r.linux else {
            // Windows resources, or nothing: nothing a Linux runtime applies.
            return Ok(UpdateContainerResourcesResponse {});
        };
        let _busy = self.store.claim(&c.id, "update")?;
        if c.state() == State::Exited {
            return Err(Error::precondition(format!(
                "container {} has exited; its resources cannot change",
                c.id
            )));
        }
        let resources = spec::linux_resources(&new, &self.node);
        let stored =
            self.corrald.get_container(&c.id).await?.ok_or_else(|| {
                Error::not_found(format!("container {} is gone from corrald", c.id))
            })?;
        let mut oci: serde_json::Value = stored
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| Error::internal(format!("container {}: unreadable spec", c.id)))?;
        merge(&mut oci["linux"]["resources"], &resources);
        if c.state() == State::Running {
            self.corrald
                .update_task(
                    &c.id,
                    Some(any::pack_raw(
                        any::OCI_LINUX_RESOURCES,
                        resources.to_string().into_bytes(),
                    )),
                    HashMap::new(),
                )
                .await?;
        }
        let mut record = (*c.record).clone();
        let config = record.config.get_or_insert_with(Default::default);
        config
            .linux
            .get_or_insert_with(LinuxContainerConfig::default)
            .resources = Some(new);
        let mut extensions = HashMap::new();
        extensions.insert(
            records::CONTAINER_EXT.to_string(),
            records::pack_container(&record),
        );
        self.corrald
            .client()
            .containers()
            .update(
                self.corrald
                    .client()
                    .req(containers::UpdateContainerRequest {
                        container: Some(containers::Container {
                            id: c.id.clone(),
                            spec: Some(any::pack_raw(any::OCI_SPEC, oci.to_string().into_bytes())),
                            extensions,
                            ..Default::default()
                        }),
                        update_mask: Some(FieldMask {
                            paths: vec![
                                "spec".into(),
                                format!("extensions.{}", records::CONTAINER_EXT),
                            ],
                        }),
                    }),
            )
            .await
            .map_err(|e| Error::from(e).context(format!("store new resources of {}", c.id)))?;
        self.store
            .update_container(&c.id, |x| x.record = std::sync::Arc::new(record));
        Ok(UpdateContainerResourcesResponse {})
    }

    /// kubelet renamed the log file (rotation): the shim opens a new one at the same path.
    pub async fn reopen_container_log(
        &self,
        r: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse> {
        let c = self.store.find_container(&r.container_id)?;
        if c.state() != State::Running {
            return Err(Error::precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        if c.record.log_path.is_empty() {
            return Err(Error::precondition(format!(
                "container {} has no log",
                c.id
            )));
        }
        let mut annotations = HashMap::new();
        annotations.insert(
            protocol::annotations::LOG_REOPEN.to_string(),
            "1".to_string(),
        );
        self.corrald
            .update_task(&c.id, None, annotations)
            .await
            .map_err(|e| e.context(format!("reopen the log of {}", c.id)))?;
        Ok(ReopenContainerLogResponse {})
    }
}

/// Sets in `dst` every leaf `src` has.
fn merge(dst: &mut serde_json::Value, src: &serde_json::Value) {
    match (dst, src) {
        (serde_json::Value::Object(d), serde_json::Value::Object(s)) => {
            for (k, v) in s {
                merge(d.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (d, s) => *d = s.clone(),
    }
}
