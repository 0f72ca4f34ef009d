//! Start-up: the view rebuilt from corrald, and what a crash left behind removed.
//!
//! 1. Every corrald container of ours (by kind label) and every task, in two calls.
//! 2. Pods: READY when the pause task runs. Containers: their recorded status, corrected by
//!    their task — running (a start whose time was not recorded gets it now), stopped while we
//!    were away (the exit is recorded and the task deleted), created but never started (a
//!    StartContainer cut short: the task is deleted, the container stays CREATED), or gone
//!    (exited, status unknown).
//! 3. On disk: network namespaces and pod directories that no pod record accounts for (a
//!    RunPodSandbox cut short before its record existed) are torn down — CNI DEL from the
//!    cached result, namespace unmounted, /dev/shm unmounted — exec processes of calls that
//!    died with us are killed and their FIFOs removed, and stdio FIFOs of containers that no
//!    longer exist are removed.
//!
//! Nothing is served before this completes: an empty view would tell kubelet its pods are gone.

use std::collections::HashSet;
use std::sync::Arc;

use crate::core::Cri;
use crate::corrald::{Exit, now_nanos};
use crate::error::Result;
use crate::monitor::{self, TASK_CREATED, TASK_PAUSED, TASK_RUNNING, TASK_STOPPED, UNKNOWN_EXIT};
use crate::records::{self, Record};
use crate::store::{Container, Sandbox};

impl Cri {
    pub async fn recover(&self) -> Result<()> {
        let list = self
            .corrald
            .list_containers(&[records::LIST_FILTER])
            .await?;
        let tasks = self.corrald.list_tasks().await?;
        let task = |id: &str| tasks.iter().find(|t| t.container_id == id);
        let mut exits = Vec::new();
        let mut unstarted = Vec::new();
        let mut start_times = Vec::new();
        let mut decoded = Vec::new();
        for c in &list {
            match records::decode(c) {
                Ok(Some(r)) => decoded.push((c, r)),
                Ok(None) => {}
                Err(e) => log::error!("{e}; leaving it alone"),
            }
        }
        // Pods first: a container's name is made of its pod's metadata.
        decoded.sort_by_key(|(_, r)| matches!(r, Record::Container(..)));
        for (c, record) in decoded {
            match record {
                Record::Sandbox(r) => {
                    let t = task(&c.id);
                    // A namespace without CNI's result: RunPodSandbox ended between starting
                    // the pause task and recording the network, so the pod never had one.
                    let network_up = r.netns_path.is_empty() || !r.cni_result.is_empty();
                    let ready = network_up
                        && t.is_some_and(|t| t.status == TASK_RUNNING || t.status == TASK_PAUSED);
                    let name = r
                        .config
                        .as_ref()
                        .and_then(|c| c.metadata.as_ref())
                        .map(crate::ids::sandbox_name)
                        .unwrap_or_default();
                    if t.is_some() && !ready {
                        unstarted.push(c.id.clone());
                    }
                    self.store.put_sandbox(Sandbox {
                        id: c.id.clone(),
                        name,
                        ready,
                        pid: if ready {
                            t.map(|t| t.pid).unwrap_or(0)
                        } else {
                            0
                        },
                        stopped: false,
                        record: Arc::new(r),
                    });
                }
                Record::Container(r, mut status) => {
                    let mut pid = 0;
                    if !status.exited {
                        match task(&c.id) {
                            Some(t) if t.status == TASK_STOPPED => exits.push((
                                c.id.clone(),
                                Exit {
                                    status: t.exit_status,
                                    at: crate::corrald::nanos(t.exited_at.as_ref()),
                                },
                            )),
                            Some(t) if t.status == TASK_CREATED => unstarted.push(c.id.clone()),
                            Some(t) => {
                                pid = t.pid;
                                if status.started_at == 0 {
                                    status.started_at = now_nanos();
                                    start_times.push(c.id.clone());
                                }
                            }
                            None if status.started_at != 0 => exits.push((
                                c.id.clone(),
                                Exit {
                                    status: UNKNOWN_EXIT,
                                    at: now_nanos(),
                                },
                            )),
                            None => {}
                        }
                    } else if task(&c.id).is_some() {
                        unstarted.push(c.id.clone());
                    }
                    let pod_meta = self
                        .store
                        .sandbox(&r.sandbox_id)
                        .and_then(|s| s.record.config.clone())
                        .and_then(|c| c.metadata);
                    let name = match (
                        r.config.as_ref().and_then(|c| c.metadata.as_ref()),
                        pod_meta,
                    ) {
                        (Some(m), Some(p)) => crate::ids::container_name(m, &p),
                        _ => format!("{}_orphan", c.id),
                    };
                    self.store.put_container(Container {
                        id: c.id.clone(),
                        name,
                        record: Arc::new(r),
                        status,
                        pid,
                    });
                }
            }
        }
        for id in start_times {
            if let Some(c) = self.store.container(&id) {
                self.save_status(&id, c.status).await;
            }
        }
        for id in unstarted {
            self.kill_and_delete_task(&id).await?;
        }
        for (id, exit) in exits {
            self.record_exit(&id, exit).await?;
        }
        self.remove_orphans().await?;
        monitor::reconcile(self).await?;
        log::info!(
            "recovered {} pods and {} containers from corrald",
            self.store.sandboxes().len(),
            self.store.containers().len()
        );
        Ok(())
    }

    /// Network namespaces, pod directories and exec FIFOs nothing accounts for.
    async fn remove_orphans(&self) -> Result<()> {
        let known: HashSet<String> = self.store.sandboxes().into_iter().map(|s| s.id).collect();
        let netns_dir = self.netns_dir();
        let leaked =
            crate::sandbox::stop::blocking(move || crate::network::netns::list(&netns_dir)).await?;
        for path in leaked {
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !known.contains(&id) {
                log::info!("pod {id}: network namespace without a record; tearing it down");
                // One that cannot be torn down now (its plugin failing, the network config
                // broken) stays for the next start; it must not keep this one from serving.
                if let Err(e) = self.release_sandbox(&id, None).await {
                    log::warn!("pod {id}: leaving the orphaned namespace for now: {e}");
                }
            }
        }
        if let Ok(mut dirs) = tokio::fs::read_dir(self.sandboxes_dir()).await {
            while let Ok(Some(e)) = dirs.next_entry().await {
                let id = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    log::info!("pod {id}: files without a record; removing them");
                    let dir = e.path();
                    crate::sandbox::stop::blocking(move || crate::sandbox::files::remove(&dir))
                        .await?;
                }
            }
        }
        // Execs whose client went with the corral-cri that ran them: nobody sees their output
        // or can end them any more.
        if let Ok(mut dirs) = tokio::fs::read_dir(self.exec_dir()).await {
            while let Ok(Some(e)) = dirs.next_entry().await {
                let exec_id = e.file_name().to_string_lossy().into_owned();
                let file = e.path().join(crate::streaming::exec::CONTAINER_FILE);
                if let Ok(id) = tokio::fs::read_to_string(&file).await {
                    self.kill_orphaned_exec(&id, &exec_id).await;
                }
            }
        }
        match tokio::fs::remove_dir_all(self.exec_dir()).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                log::warn!("remove {}: {e}", self.exec_dir().display())
            }
            _ => {}
        }
        let known: HashSet<String> = self.store.containers().into_iter().map(|c| c.id).collect();
        if let Ok(mut dirs) = tokio::fs::read_dir(self.cfg.root.join("io")).await {
            while let Ok(Some(e)) = dirs.next_entry().await {
                let id = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    log::info!("container {id}: stdio FIFOs without a record; removing them");
                    self.remove_io_dir(&id).await;
                }
            }
        }
        Ok(())
    }

    async fn kill_orphaned_exec(&self, id: &str, exec_id: &str) {
        const SIGKILL: u32 = 9;
        match self.corrald.kill(id, exec_id, SIGKILL, false).await {
            Ok(true) => {
                log::info!("container {id}: killing exec {exec_id}, whose client is gone");
                let _ = self
                    .corrald
                    .wait(id, exec_id, std::time::Duration::from_secs(10))
                    .await;
            }
            Ok(false) => {}
            Err(e) => log::warn!("container {id}: kill orphaned exec {exec_id}: {e}"),
        }
        if let Err(e) = self.corrald.delete_process(id, exec_id).await {
            log::warn!("container {id}: delete orphaned exec {exec_id}: {e}");
        }
    }
}
