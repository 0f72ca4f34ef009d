//! StopPodSandbox: every container of the pod killed, the pause process killed and its task
//! deleted, the network torn down (CNI DEL, namespace unmounted) and /dev/shm unmounted. The
//! records stay (the pod is NOTREADY) until RemovePodSandbox. Idempotent: an unknown pod and a
//! stopped pod are success, and each step tolerates being done already, so a stop cut short
//! by a crash is finished by the next one.

use protocol::grpc::corral::cri::v1::SandboxRecord;
use protocol::grpc::runtime::v1::{
    ContainerEventType, StopPodSandboxRequest, StopPodSandboxResponse,
};

use crate::core::Cri;
use crate::error::{Error, Result};
use crate::network::NetNs;

const SIGKILL: u32 = 9;

impl Cri {
    pub async fn stop_pod_sandbox(
        &self,
        r: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse> {
        let s = match self.store.find_sandbox(&r.pod_sandbox_id) {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Ok(StopPodSandboxResponse {}),
            Err(e) => return Err(e),
        };
        if s.stopped {
            // Finished before (in this process's life: a restart forgets it, and the next
            // stop redoes each step, which tolerates being done): no second CNI DEL.
            return Ok(StopPodSandboxResponse {});
        }
        for c in self.store.containers_of(&s.id) {
            self.stop_container_with_timeout(&c.id, 0)
                .await
                .map_err(|e| e.context(format!("stop pod sandbox {}", s.id)))?;
        }
        self.stop_sandbox_parts(&s.id, Some(&s.record))
            .await
            .map_err(|e| e.context(format!("stop pod sandbox {}", s.id)))?;
        let changed = self.store.update_sandbox(&s.id, |s| {
            let was = s.ready;
            s.ready = false;
            s.pid = 0;
            s.stopped = true;
            was
        });
        if changed == Some(true) {
            self.emit_sandbox(&s.id, ContainerEventType::ContainerStoppedEvent);
        }
        Ok(StopPodSandboxResponse {})
    }

    /// Kills and deletes the pause task, tears down the network and unmounts /dev/shm. With no
    /// record (a RunPodSandbox that failed early, or start-up finding a namespace nobody
    /// accounts for), CNI gets the cached result. Idempotent.
    pub async fn stop_sandbox_parts(&self, id: &str, record: Option<&SandboxRecord>) -> Result<()> {
        self.kill_and_delete_task(id).await?;
        let netns = self.netns_dir().join(id);
        let has_netns = tokio::fs::symlink_metadata(&netns).await.is_ok();
        if has_netns || record.is_some_and(|r| !r.netns_path.is_empty()) {
            let config = record.and_then(|r| r.config.clone()).unwrap_or_default();
            let pod = super::run::pod_network(id, &netns, &config);
            let prev = record
                .map(|r| r.cni_result.as_str())
                .filter(|s| !s.is_empty());
            self.cni
                .teardown(&pod, prev)
                .await
                .map_err(|e| Error::new(e.code(), format!("tear down the pod network: {e}")))?;
            blocking(move || NetNs::remove(&netns)).await?;
        }
        let shm = self.sandbox_dir(id).join("shm");
        blocking(move || super::files::unmount(&shm)).await?;
        Ok(())
    }

    /// SIGKILL to a task's processes, wait for the exit, delete the task. No task is fine.
    pub async fn kill_and_delete_task(&self, id: &str) -> Result<()> {
        if self.corrald.kill(id, "", SIGKILL, true).await? {
            // The exit follows a SIGKILL at once; the deadline only guards a wedged shim.
            self.corrald
                .wait(id, "", std::time::Duration::from_secs(30))
                .await
                .or_else(|e| if e.is_not_found() { Ok(None) } else { Err(e) })?;
        }
        self.corrald.delete_task(id).await?;
        Ok(())
    }
}

/// Runs blocking file-system work off the runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(Error::from)
}
