//! StartContainer: the task (shim + runc create) and its start, with the container's output
//! going to its CRI log.
//!
//! With our shim the log is written by the shim itself (`file://<path>?format=cri`), so it goes
//! on while corral-cri and corrald are down and a container never blocks on a full pipe
//! because a daemon is away. A start that fails leaves the container EXITED with reason
//! StartError and the runtime's message, as containerd reports it to kubelet.

use protocol::grpc::containerd::services::tasks::v1::CreateTaskRequest;
use protocol::grpc::runtime::v1::{
    ContainerEventType, StartContainerRequest, StartContainerResponse,
};

use crate::core::Cri;
use crate::corrald::now_nanos;
use crate::error::{Error, Result};
use crate::records;
use crate::store::State;

/// The log URI our shim reads as "write a CRI log at this path". The shim percent-decodes the
/// path (and reads `+` as a space), so those characters and the URI's own delimiters are
/// encoded: the file is created at exactly `path`.
pub fn cri_log_uri(path: &str) -> String {
    let mut enc = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' | '?' | '#' | '+' | '&' | ' ' | '\0'..='\x1f' | '\x7f' => {
                enc.push_str(&format!("%{:02X}", c as u32))
            }
            _ => enc.push(c),
        }
    }
    format!("file://{enc}?format=cri")
}

impl Cri {
    pub async fn start_container(
        &self,
        r: StartContainerRequest,
    ) -> Result<StartContainerResponse> {
        let c = self.store.find_container(&r.container_id)?;
        let _busy = self.store.claim(&c.id, "start")?;
        let c = self
            .store
            .container(&c.id)
            .ok_or_else(|| Error::not_found(format!("container {:?} not found", c.id)))?;
        if c.state() != State::Created {
            return Err(Error::precondition(format!(
                "container {} is {:?}, only a created container can be started",
                c.id,
                c.state()
            )));
        }
        let sandbox = self
            .store
            .sandbox(c.sandbox_id())
            .filter(|s| s.ready)
            .ok_or_else(|| {
                Error::precondition(format!(
                    "pod sandbox {} of container {} is not ready",
                    c.sandbox_id(),
                    c.id
                ))
            })?;
        let runtime = self.cfg.runtime(&sandbox.record.runtime_handler).cloned();
        let shim_writes_logs = runtime.as_ref().is_some_and(|r| r.shim_writes_logs);
        let config = c.record.config.clone().unwrap_or_default();
        // FIFOs attach needs: stdin if asked for, and the output when there is no log.
        let (stdin, fifo_outputs) = self
            .prepare_stdio(
                &c.id,
                &config,
                !c.record.log_path.is_empty(),
                shim_writes_logs,
            )
            .await
            .map_err(|e| e.context(format!("start container {}", c.id)))?;
        let (stdout, stderr) = if let Some(outputs) = fifo_outputs {
            outputs
        } else if c.record.log_path.is_empty() {
            (String::new(), String::new())
        } else {
            let path = std::path::PathBuf::from(&c.record.log_path);
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    Error::internal(format!("create log directory {}: {e}", dir.display()))
                })?;
            }
            if shim_writes_logs {
                let uri = cri_log_uri(&c.record.log_path);
                (uri.clone(), uri)
            } else {
                // Runtimes whose shim cannot write CRI logs get none; see the note on
                // `shim_writes_logs` in the config.
                (String::new(), String::new())
            }
        };
        let started = async {
            self.corrald
                .create_task(CreateTaskRequest {
                    container_id: c.id.clone(),
                    stdin,
                    stdout,
                    stderr,
                    terminal: config.tty,
                    ..Default::default()
                })
                .await?;
            self.corrald.start(&c.id, "").await
        }
        .await;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                let e = e.context(format!("start container {}", c.id));
                if let Err(d) = self.kill_and_delete_task(&c.id).await {
                    log::warn!("container {}: delete task after failed start: {d}", c.id);
                }
                let mut status = c.status.clone();
                status.exited = true;
                status.finished_at = now_nanos();
                status.exit_code = 128;
                status.reason = "StartError".into();
                status.message = e.message.clone();
                self.save_status(&c.id, status).await;
                return Err(e);
            }
        };
        // Only the start time: an exit seen meanwhile (the process may be gone already) stays.
        let started_at = now_nanos();
        self.store.update_container(&c.id, |x| {
            if x.status.started_at == 0 {
                x.status.started_at = started_at;
            }
            if !x.status.exited {
                x.pid = pid;
            }
        });
        // Recorded in corrald after the answer: the task runs whether or not this write
        // lands, and if corral-cri dies first, start-up finds a running task with no start
        // time and takes the time then. The write reads the view when it goes, in turn with
        // the container's other status writes, so it cannot undo an exit recorded meanwhile.
        let (store, corrald, id) = (self.store.clone(), self.corrald.clone(), c.id.clone());
        tokio::spawn(async move { persist_status(&store, &corrald, &id).await });
        self.emit_container(&c.id, ContainerEventType::ContainerStartedEvent);
        Ok(StartContainerResponse {})
    }

    /// Puts a container's status in the view and in corrald (best effort: logged on failure, as
    /// the view is then still right and start-up reconciles the record from the task).
    pub async fn save_status(
        &self,
        id: &str,
        status: protocol::grpc::corral::cri::v1::ContainerStatusRecord,
    ) {
        self.store.update_container(id, |x| {
            x.status = status;
            if x.status.exited {
                x.pid = 0;
            }
        });
        persist_status(&self.store, &self.corrald, id).await;
    }
}

/// Writes container `id`'s status as the view has it now into its record in corrald, under
/// the container's status lock ([`crate::store::Store::status_lock`]). A container removed
/// meanwhile is not an error.
async fn persist_status(store: &crate::store::Store, corrald: &crate::corrald::Corrald, id: &str) {
    let Some(lock) = store.status_lock(id) else {
        return;
    };
    let _turn = lock.lock().await;
    let Some(status) = store.container(id).map(|c| c.status) else {
        return;
    };
    match corrald
        .set_extension(id, records::STATUS_EXT, records::pack_status(&status))
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => log::warn!("container {id}: record status: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_uris_keep_the_path_as_it_is() {
        assert_eq!(
            super::cri_log_uri("/var/log/pods/ns_web_1/app/0.log"),
            "file:///var/log/pods/ns_web_1/app/0.log?format=cri"
        );
        assert_eq!(
            super::cri_log_uri("/l/a b+c%d?e#f&g/é.log"),
            "file:///l/a%20b%2Bc%25d%3Fe%23f%26g/é.log?format=cri"
        );
    }
}
