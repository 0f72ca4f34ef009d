//! ContainerStatus and ListContainers, answered from the view.
//!
//! Image identity follows critest's consistency rules: PullImage's image_ref, ImageStatus's id,
//! ContainerStatus's image_id and image_ref and Container.image_id are all the image id
//! (its config digest).

use std::collections::HashMap;

use protocol::grpc::runtime::v1::{
    Container as CriContainer, ContainerResources, ContainerState, ContainerStatus,
    ContainerStatusRequest, ContainerStatusResponse, ImageSpec, ListContainersRequest,
    ListContainersResponse,
};
use serde_json::json;

use crate::core::Cri;
use crate::error::Result;
use crate::sandbox::status::labels_match;
use crate::store::{Container, State};

impl State {
    pub fn cri(self) -> ContainerState {
        match self {
            State::Created => ContainerState::ContainerCreated,
            State::Running => ContainerState::ContainerRunning,
            State::Exited => ContainerState::ContainerExited,
        }
    }
}

impl Container {
    fn image_spec(&self) -> ImageSpec {
        let asked = self
            .record
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        ImageSpec {
            image: if asked.user_specified_image.is_empty() {
                self.record.image_ref.clone()
            } else {
                asked.user_specified_image.clone()
            },
            annotations: asked.annotations,
            user_specified_image: asked.user_specified_image,
            ..Default::default()
        }
    }

    pub fn status(&self) -> ContainerStatus {
        let config = self.record.config.clone().unwrap_or_default();
        let s = &self.status;
        ContainerStatus {
            id: self.id.clone(),
            metadata: config.metadata.clone(),
            state: self.state().cri() as i32,
            created_at: self.record.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            image: Some(self.image_spec()),
            image_ref: self.record.image_id.clone(),
            reason: s.reason.clone(),
            message: s.message.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            mounts: config.mounts.clone(),
            log_path: self.record.log_path.clone(),
            resources: config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: self.record.image_id.clone(),
            user: self.record.user.clone(),
            stop_signal: config.stop_signal,
        }
    }

    fn listed(&self) -> CriContainer {
        let config = self.record.config.clone().unwrap_or_default();
        CriContainer {
            id: self.id.clone(),
            pod_sandbox_id: self.record.sandbox_id.clone(),
            metadata: config.metadata,
            image: Some(self.image_spec()),
            image_ref: self.record.image_id.clone(),
            state: self.state().cri() as i32,
            created_at: self.record.created_at,
            labels: config.labels,
            annotations: config.annotations,
            image_id: self.record.image_id.clone(),
        }
    }
}

impl Cri {
    pub async fn container_status(
        &self,
        r: ContainerStatusRequest,
    ) -> Result<ContainerStatusResponse> {
        let c = self.store.find_container(&r.container_id)?;
        let mut info = HashMap::new();
        if r.verbose {
            let v = json!({
                "sandboxID": c.record.sandbox_id,
                "pid": c.pid,
                "imageName": c.record.image_name,
                "snapshotKey": c.id,
                "snapshotter": self.cfg.snapshotter,
                "logPath": c.record.log_path,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(ContainerStatusResponse {
            status: Some(c.status()),
            info,
        })
    }

    pub async fn list_containers(
        &self,
        r: ListContainersRequest,
    ) -> Result<ListContainersResponse> {
        let f = r.filter.unwrap_or_default();
        let containers = self
            .store
            .containers_matching(&f.id, &f.pod_sandbox_id)
            .into_iter()
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|v| v.state == c.state().cri() as i32)
            })
            .map(|c| c.listed())
            .filter(|c| labels_match(&c.labels, &f.label_selector))
            .collect();
        Ok(ListContainersResponse { containers })
    }
}
