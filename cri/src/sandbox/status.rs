//! PodSandboxStatus and ListPodSandbox, answered from the view (kubelet asks every second).

use std::collections::HashMap;

use protocol::grpc::runtime::v1::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, PodIp,
    PodSandbox, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, PodSandboxStatusResponse,
};
use serde_json::json;

use crate::core::Cri;
use crate::corrald::now_nanos;
use crate::error::Result;
use crate::store::Sandbox;

/// Labels match when every selector pair is present with the same value.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Sandbox {
    pub fn state(&self) -> PodSandboxState {
        if self.ready {
            PodSandboxState::SandboxReady
        } else {
            PodSandboxState::SandboxNotready
        }
    }

    pub fn status(&self) -> PodSandboxStatus {
        let config = self.record.config.clone().unwrap_or_default();
        let namespace_options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        PodSandboxStatus {
            id: self.id.clone(),
            metadata: config.metadata,
            state: self.state() as i32,
            created_at: self.record.created_at,
            // A pod on the host's network has no IP of its own to report (kubelet uses the
            // node's).
            network: Some(PodSandboxNetworkStatus {
                ip: self.record.ip.clone(),
                additional_ips: self
                    .record
                    .additional_ips
                    .iter()
                    .map(|ip| PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace {
                    options: namespace_options,
                }),
            }),
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: self.record.runtime_handler.clone(),
        }
    }
}

impl Cri {
    pub async fn pod_sandbox_status(
        &self,
        r: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse> {
        let s = self.store.find_sandbox(&r.pod_sandbox_id)?;
        let mut info = HashMap::new();
        if r.verbose {
            let v = json!({
                "pid": s.pid,
                "processStatus": if s.ready { "running" } else { "stopped" },
                "netNamespacePath": s.record.netns_path,
                "image": s.record.image,
                "runtimeHandler": s.record.runtime_handler,
                "runtimeType": self.cfg.runtime(&s.record.runtime_handler)
                    .map(|r| r.runtime_type.clone()).unwrap_or_default(),
                "cniResult": serde_json::from_str::<serde_json::Value>(&s.record.cni_result)
                    .unwrap_or(serde_json::Value::Null),
                "cniConfigName": s.record.cni_config_name,
                "sandboxDir": self.sandbox_dir(&s.id),
            });
            info.insert("info".to_string(), v.to_string());
        }
        let containers_statuses = self
            .store
            .containers_of(&s.id)
            .iter()
            .map(|c| c.status())
            .collect();
        Ok(PodSandboxStatusResponse {
            status: Some(s.status()),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        })
    }

    pub async fn list_pod_sandbox(
        &self,
        r: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse> {
        let f = r.filter.unwrap_or_default();
        let items = self
            .store
            .sandboxes()
            .into_iter()
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| f.state.as_ref().is_none_or(|v| v.state == s.state() as i32))
            .map(|s| {
                let config = s.record.config.clone().unwrap_or_default();
                PodSandbox {
                    id: s.id.clone(),
                    metadata: config.metadata,
                    state: s.state() as i32,
                    created_at: s.record.created_at,
                    labels: config.labels,
                    annotations: config.annotations,
                    runtime_handler: s.record.runtime_handler.clone(),
                }
            })
            .filter(|p| labels_match(&p.labels, &f.label_selector))
            .collect();
        Ok(ListPodSandboxResponse { items })
    }
}
