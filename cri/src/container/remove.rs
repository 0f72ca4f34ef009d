//! RemoveContainer: a running container is killed first (as containerd 1.6 does), then its
//! task, record and snapshot go. The log file stays: it is kubelet's. Unknown ids are success.

use protocol::grpc::runtime::v1::{
    ContainerEventType, RemoveContainerRequest, RemoveContainerResponse,
};

use crate::core::Cri;
use crate::error::Result;

impl Cri {
    pub async fn remove_container(
        &self,
        r: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse> {
        let c = match self.store.find_container(&r.container_id) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(RemoveContainerResponse {}),
            Err(e) => return Err(e),
        };
        self.remove_container_by_id(&c.id).await?;
        Ok(RemoveContainerResponse {})
    }

    pub async fn remove_container_by_id(&self, id: &str) -> Result<()> {
        let _busy = self.store.claim(id, "remove")?;
        let fail = |e: crate::error::Error| e.context(format!("remove container {id}"));
        self.stop_container_with_timeout(id, 0)
            .await
            .map_err(fail)?;
        self.corrald.delete_task(id).await.map_err(fail)?;
        self.corrald.delete_container(id).await.map_err(fail)?;
        self.corrald.remove_snapshot(id).await.map_err(fail)?;
        self.remove_io_dir(id).await;
        self.emit_container(id, ContainerEventType::ContainerDeletedEvent);
        self.store.remove_container(id);
        Ok(())
    }
}
