//! ExecSync: run a command in a running container and return its exit code and output
//! (kubelet's exec probes). The process is an exec of the container's task through corrald,
//! with the container's user, environment and capabilities; its output comes back through two
//! FIFOs under `<root>/exec/<exec id>/`, read to the end. On timeout the process is killed and
//! removed before the error is returned, so nothing keeps running behind a failed probe. A
//! process that exited is removed (from its shim, and its FIFOs) after the answer: it runs no
//! more, and a probe's answer need not wait for the bookkeeping. Should corral-cri die first,
//! start-up removes what is left under `<root>/exec/`.

use std::time::Duration;

use protocol::grpc::any;
use protocol::grpc::containerd::services::tasks::v1::ExecProcessRequest;
use protocol::grpc::runtime::v1::{ExecSyncRequest, ExecSyncResponse};
use tokio::io::AsyncReadExt;

use crate::core::Cri;
use crate::error::{Error, Result};
use crate::spec;
use crate::store::State;

/// Output kept per stream; more is dropped (kubelet reads probes' first bytes only).
const MAX_OUTPUT: usize = 16 << 20;
const SIGKILL: u32 = 9;

impl Cri {
    pub async fn exec_sync(&self, r: ExecSyncRequest) -> Result<ExecSyncResponse> {
        let c = self.store.find_container(&r.container_id)?;
        if c.state() != State::Running {
            return Err(Error::precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        if r.cmd.is_empty() {
            return Err(Error::invalid("ExecSync: cmd is empty"));
        }
        let stored = self
            .corrald
            .get_container(&c.id)
            .await?
            .ok_or_else(|| Error::not_found(format!("container {} is gone", c.id)))?;
        let oci: serde_json::Value = stored
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| Error::internal(format!("container {}: unreadable spec", c.id)))?;
        let process = spec::exec_process(&oci, &r.cmd, false)?;

        let exec_id = crate::ids::new_id();
        let dir = self.exec_dir().join(&exec_id);
        let d = dir.clone();
        let owner = c.id.clone();
        crate::sandbox::stop::blocking(move || {
            std::fs::create_dir_all(&d)?;
            // Whose exec it is, for a start-up after a crash to kill it.
            std::fs::write(d.join(crate::streaming::exec::CONTAINER_FILE), owner)?;
            for f in ["stdout", "stderr"] {
                nix::unistd::mkfifo(&d.join(f), nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        })
        .await?;
        let result = self
            .run_exec(&c.id, &exec_id, &dir, process, r.timeout)
            .await;
        let (corrald, id) = (self.corrald.clone(), c.id.clone());
        let remove = async move {
            if let Err(e) = corrald.delete_process(&id, &exec_id).await
                && !e.is_not_found()
            {
                log::warn!("container {id}: delete exec {exec_id}: {e}");
            }
            let _ = tokio::fs::remove_dir_all(&dir).await;
        };
        match &result {
            // Exited: nothing runs any more; the answer goes first.
            Ok(_) => {
                tokio::spawn(remove);
            }
            Err(_) => remove.await,
        }
        result.map_err(|e| e.context(format!("exec in container {}", c.id)))
    }

    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        dir: &std::path::Path,
        process: serde_json::Value,
        timeout: i64,
    ) -> Result<ExecSyncResponse> {
        // Our read ends first, non-blocking: the shim's open for writing then never waits.
        let open = |name: &str| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(dir.join(name))
                .map_err(|e| Error::internal(format!("open exec FIFO {name}: {e}")))
        };
        let mut out_pipe = open("stdout")?;
        let mut err_pipe = open("stderr")?;
        self.corrald
            .exec(ExecProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdout: dir.join("stdout").to_string_lossy().into_owned(),
                stderr: dir.join("stderr").to_string_lossy().into_owned(),
                terminal: false,
                spec: Some(any::pack_raw(
                    any::OCI_PROCESS,
                    process.to_string().into_bytes(),
                )),
                ..Default::default()
            })
            .await?;
        let run = async {
            self.corrald.start(id, exec_id).await?;
            let (out, err) = tokio::join!(read_capped(&mut out_pipe), read_capped(&mut err_pipe));
            let exit = self
                .corrald
                .wait(id, exec_id, Duration::MAX)
                .await?
                .unwrap_or_default();
            Ok::<_, Error>(ExecSyncResponse {
                stdout: out,
                stderr: err,
                exit_code: exit.status as i32,
            })
        };
        if timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout as u64), run).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = self.corrald.kill(id, exec_id, SIGKILL, false).await;
                    let _ = self
                        .corrald
                        .wait(id, exec_id, Duration::from_secs(10))
                        .await;
                    Err(Error::new(
                        protocol::Code::DeadlineExceeded,
                        format!("command timed out after {timeout}s and was killed"),
                    ))
                }
            }
        } else {
            run.await
        }
    }
}

/// Reads a pipe to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_capped(p: &mut tokio::net::unix::pipe::Receiver) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match p.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let keep = n.min(MAX_OUTPUT.saturating_sub(out.len()));
                out.extend_from_slice(&buf[..keep]);
            }
        }
    }
}
