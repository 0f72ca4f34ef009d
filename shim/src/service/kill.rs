//! Task.Kill: signals to the init through runc, to execs directly; NotFound once finished.

use super::*;

impl Service {
    pub(super) async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let finished =
            || Error::not_found(format!("process {} already finished", req.exec_id.clone()));
        if req.exec_id.is_empty() {
            let runc = {
                let st = self.state.lock().unwrap();
                let c = container(&st, &req.id)?;
                if c.init.exit().is_some() && !req.all {
                    return Err(Error::not_found(format!(
                        "process {} already finished",
                        req.id
                    )));
                }
                c.runc.clone()
            };
            return runc
                .kill(&self.reaper, &req.id, req.signal, req.all)
                .await
                .map_err(|e| {
                    if e.is_gone() {
                        Error::not_found(format!("process {} already finished: {e}", req.id))
                    } else {
                        e
                    }
                });
        }
        let pid = {
            let st = self.state.lock().unwrap();
            let p = container(&st, &req.id)?.process(&req.exec_id)?;
            if p.exit().is_some() {
                return Err(finished());
            }
            if p.status == Status::CREATED {
                return Err(Error::precondition(format!(
                    "process {} has not been started",
                    req.exec_id
                )));
            }
            p.pid
        };
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| Error::new(Code::InvalidArgument, format!("bad signal {}", req.signal)))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
            Ok(()) => Ok(()),
            Err(nix::Error::ESRCH) => Err(finished()),
            Err(e) => Err(Error::new(Code::Unknown, format!("kill {pid}: {e}"))),
        }
    }
}
