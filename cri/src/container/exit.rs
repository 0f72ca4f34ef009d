//! A container's exit, however we learn of it (corrald's `/tasks/exit` event, StopContainer's
//! wait, start-up finding a stopped task): the exit goes into the status record, then the task
//! is deleted, so an exited container holds no shim. Whoever sees the exit first records it;
//! the others find it recorded and do nothing.
//!
//! The reason is containerd's: OOMKilled when the kernel's OOM killer hit the container's
//! cgroup, Completed for status 0, Error otherwise.

use protocol::grpc::runtime::v1::ContainerEventType;

use crate::core::Cri;
use crate::corrald::{Exit, now_nanos};
use crate::error::Result;

impl Cri {
    /// Records the exit of container `id`'s init process and deletes its task. Returns whether
    /// this call recorded it.
    pub async fn record_exit(&self, id: &str, exit: Exit) -> Result<bool> {
        let oom = self.oom_killed(id).await;
        let status = self.store.update_container(id, |c| {
            if c.status.exited {
                return None;
            }
            let mut s = c.status.clone();
            s.exited = true;
            s.finished_at = if exit.at > 0 { exit.at } else { now_nanos() };
            s.exit_code = exit.status as i32;
            s.reason = if oom {
                "OOMKilled"
            } else if exit.status == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into();
            if s.started_at == 0 {
                s.started_at = s.finished_at;
            }
            c.status = s.clone();
            c.pid = 0;
            Some(s)
        });
        let status = match status {
            None => return Ok(false),
            Some(None) => {
                // Recorded already (by another caller, or before a restart); the task may
                // still need deleting.
                self.corrald.delete_task(id).await?;
                return Ok(false);
            }
            Some(Some(s)) => s,
        };
        self.save_status(id, status).await;
        self.corrald.delete_task(id).await?;
        self.emit_container(id, ContainerEventType::ContainerStoppedEvent);
        Ok(true)
    }

    /// Whether the kernel's OOM killer killed a process of the container: corrald's
    /// `/tasks/oom` event, or (if that was missed, e.g. during an outage) the counter of the
    /// container's memory cgroup, which exists until the task is deleted.
    async fn oom_killed(&self, id: &str) -> bool {
        if self.events.take_oom(id) {
            return true;
        }
        let Some(cgroup) = self.cgroup_of(id).await else {
            return false;
        };
        let path = format!(
            "/sys/fs/cgroup/memory/{}/memory.oom_control",
            cgroup.trim_start_matches('/')
        );
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().unwrap_or(0) > 0),
            Err(_) => false,
        }
    }

    /// The cgroups path of a container, from its spec in corrald.
    pub async fn cgroup_of(&self, id: &str) -> Option<String> {
        let c = self.corrald.get_container(id).await.ok()??;
        let spec: serde_json::Value = serde_json::from_slice(&c.spec?.value).ok()?;
        spec["linux"]["cgroupsPath"].as_str().map(str::to_string)
    }
}
