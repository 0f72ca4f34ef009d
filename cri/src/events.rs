//! Container events for kubelet (GetContainerEvents, the evented PLEG) and what we learn from
//! corrald's events.
//!
//! Outgoing: every lifecycle change we make or observe is sent to the subscribers of
//! GetContainerEvents with the pod's status and its containers' statuses, as containerd does.
//! The channel is bounded; a subscriber that falls behind loses the oldest events and is told
//! so by the stream ending (kubelet then relists), instead of growing our memory.
//!
//! Incoming: corrald's `/tasks/exit` and `/tasks/oom` events drive [`crate::monitor`].

use std::collections::HashSet;
use std::sync::Mutex;

use protocol::grpc::runtime::v1::{ContainerEventResponse, ContainerEventType};
use tokio::sync::broadcast;

use crate::core::Cri;
use crate::corrald::now_nanos;

/// Events kept for a slow subscriber before it is cut off.
const BACKLOG: usize = 1024;

pub struct Events {
    tx: broadcast::Sender<ContainerEventResponse>,
    /// Containers the OOM killer hit whose exit we have not recorded yet.
    oom: Mutex<HashSet<String>>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            oom: Mutex::default(),
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEventResponse> {
        self.tx.subscribe()
    }

    pub fn send(&self, e: ContainerEventResponse) {
        // No subscriber is the normal case.
        let _ = self.tx.send(e);
    }

    pub fn mark_oom(&self, id: &str) {
        self.oom
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }

    /// Whether `id` was OOM-killed, forgetting it.
    pub fn take_oom(&self, id: &str) -> bool {
        self.oom
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

impl Cri {
    /// Sends an event about container `id` (in the view) with its pod's status.
    pub fn emit_container(&self, id: &str, kind: ContainerEventType) {
        let Some(c) = self.store.container(id) else {
            return;
        };
        let pod = self.store.sandbox(c.sandbox_id());
        self.events.send(ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: pod.map(|p| p.status()),
            containers_statuses: vec![c.status()],
        });
    }

    /// Sends an event about a pod's sandbox container, with the statuses of its containers.
    pub fn emit_sandbox(&self, id: &str, kind: ContainerEventType) {
        let Some(s) = self.store.sandbox(id) else {
            return;
        };
        self.events.send(ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: Some(s.status()),
            containers_statuses: self
                .store
                .containers_of(id)
                .iter()
                .map(|c| c.status())
                .collect(),
        });
    }
}
