//! RemovePodSandbox: stop it if it is not stopped, remove its containers, then its pause
//! container, snapshot and files. Unknown ids are success (kubelet retries removals).

use protocol::grpc::corral::cri::v1::SandboxRecord;
use protocol::grpc::runtime::v1::{
    ContainerEventType, RemovePodSandboxRequest, RemovePodSandboxResponse, StopPodSandboxRequest,
};

use crate::core::Cri;
use crate::error::Result;

impl Cri {
    pub async fn remove_pod_sandbox(
        &self,
        r: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse> {
        let s = match self.store.find_sandbox(&r.pod_sandbox_id) {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Ok(RemovePodSandboxResponse {}),
            Err(e) => return Err(e),
        };
        let _busy = self.store.claim(&s.id, "remove")?;
        self.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: s.id.clone(),
        })
        .await?;
        for c in self.store.containers_of(&s.id) {
            self.remove_container_by_id(&c.id).await?;
        }
        // Stopped just above: the task, network and /dev/shm are gone already.
        self.forget_sandbox(&s.id).await?;
        self.emit_sandbox(&s.id, ContainerEventType::ContainerDeletedEvent);
        self.store.remove_sandbox(&s.id);
        Ok(RemovePodSandboxResponse {})
    }

    /// Everything of a pod sandbox, gone: task, network, files, corrald record, snapshot.
    /// Idempotent; also the undo of a failed RunPodSandbox and start-up's cleanup.
    pub async fn release_sandbox(&self, id: &str, record: Option<&SandboxRecord>) -> Result<()> {
        self.stop_sandbox_parts(id, record).await?;
        self.forget_sandbox(id).await
    }

    /// The files, corrald record and snapshot of a stopped pod sandbox.
    async fn forget_sandbox(&self, id: &str) -> Result<()> {
        let dir = self.sandbox_dir(id);
        super::stop::blocking(move || super::files::remove(&dir)).await?;
        // The record goes before the snapshot: a record whose snapshot is gone cannot start,
        // a snapshot without its record is garbage corrald collects anyway.
        self.corrald.delete_container(id).await?;
        self.corrald.remove_snapshot(id).await?;
        Ok(())
    }
}
