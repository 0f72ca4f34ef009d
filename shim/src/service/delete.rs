//! Task.Delete of the init (runc delete, unmount, /tasks/delete) and of exec processes.

use super::*;

impl Service {
    pub(super) async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            let (p, bundle) = {
                let mut st = self.state.lock().unwrap();
                let c = container_mut(&mut st, &req.id)?;
                let p = c.process(&req.exec_id)?;
                if p.is_running() || p.starting {
                    return Err(Error::precondition(format!(
                        "cannot delete a {} process",
                        status_word(p.status)
                    )));
                }
                let p = c.execs.remove(&req.exec_id).expect("checked above");
                (p, c.bundle.clone())
            };
            let _ = std::fs::remove_file(bundle.join(format!("{}.pid", req.exec_id)));
            return Ok(self.finish_delete(p).await);
        }
        let (runc, created, bundle, mounted) = {
            let mut st = self.state.lock().unwrap();
            let c = container_mut(&mut st, &req.id)?;
            if c.deleting {
                return Err(Error::precondition(format!(
                    "container {} is being deleted",
                    req.id
                )));
            }
            if c.init.is_running() || c.init.starting {
                return Err(Error::precondition(format!(
                    "cannot delete a {} process",
                    status_word(c.init.status)
                )));
            }
            c.deleting = true;
            (
                c.runc.clone(),
                c.init.status == Status::CREATED,
                c.bundle.clone(),
                c.rootfs_mounted,
            )
        };
        if let Err(e) = runc.delete(&self.reaper, &req.id, created).await
            && !e.is_gone()
        {
            let mut st = self.state.lock().unwrap();
            if let Some(c) = st.containers.get_mut(&req.id) {
                c.deleting = false;
            }
            return Err(e);
        }
        if mounted && let Err(e) = mount::unmount_all(&bundle.join("rootfs")) {
            log::warn!("unmount rootfs of {}: {e}", req.id);
        }
        let c = {
            let mut st = self.state.lock().unwrap();
            st.containers.remove(&req.id).expect("marked deleting")
        };
        let mut init = c.init;
        if init.exit().is_none() {
            // Deleted before it ran: runc delete --force killed it.
            init.set_exited(128 + 9, util::now());
        }
        let resp = self.finish_delete(init).await;
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = resp.pid;
        ev.exit_status = resp.exit_status;
        ev.exited_at = resp.exited_at.clone();
        self.events.publish(&ev);
        Ok(resp)
    }

    /// Drains and closes a removed process's IO; builds the DeleteResponse.
    pub(super) async fn finish_delete(&self, mut p: Process) -> DeleteResponse {
        if let Some(io) = p.io.take() {
            io.close(IO_DRAIN).await;
        }
        let exit = p.exit().unwrap_or(Exited {
            status: 0,
            at: util::zero_time(),
        });
        DeleteResponse {
            pid: p.pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        }
    }
}
