//! Task.Pids, Pause/Resume, Update and Stats of a running container.

use super::*;

impl Service {
    pub(super) async fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let (runc, execs) = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            let execs: HashMap<u32, String> = c
                .execs
                .values()
                .filter(|p| p.pid != 0)
                .map(|p| (p.pid, p.exec_id.clone()))
                .collect();
            (c.runc.clone(), execs)
        };
        let pids = runc.ps(&self.reaper, &req.id).await?;
        let mut resp = PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            if let Some(exec_id) = execs.get(&pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    pub(super) async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let runc = {
            let mut st = self.state.lock().unwrap();
            let c = container_mut(&mut st, id)?;
            let want = if pause {
                Status::RUNNING
            } else {
                Status::PAUSED
            };
            if c.init.status != want {
                return Err(Error::precondition(format!(
                    "cannot {} a {} container",
                    if pause { "pause" } else { "resume" },
                    status_word(c.init.status)
                )));
            }
            if pause {
                c.init.status = Status::PAUSING;
            }
            c.runc.clone()
        };
        let res = if pause {
            runc.pause(&self.reaper, id).await
        } else {
            runc.resume(&self.reaper, id).await
        };
        let mut st = self.state.lock().unwrap();
        let c = container_mut(&mut st, id)?;
        if c.init.exit().is_some() {
            return res;
        }
        match (&res, pause) {
            (Ok(()), true) => c.init.status = Status::PAUSED,
            (Ok(()), false) => c.init.status = Status::RUNNING,
            (Err(_), true) => c.init.status = Status::RUNNING,
            (Err(_), false) => {}
        }
        res?;
        if pause {
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.events.publish(&ev);
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.events.publish(&ev);
        }
        Ok(())
    }

    pub(super) async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let runc = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            if c.init.exit().is_some() {
                return Err(Error::precondition(format!(
                    "cannot update a stopped container {}",
                    req.id
                )));
            }
            c.runc.clone()
        };
        runc.update(&self.reaper, &req.id, req.resources.value.clone())
            .await
    }

    pub(super) async fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let pid = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            if c.init.exit().is_some() || c.init.pid == 0 {
                return Err(Error::not_found(format!(
                    "container {} is not running",
                    req.id
                )));
            }
            c.init.pid
        };
        let cg = cgroup::Cgroup::of_pid(pid)
            .ok_or_else(|| Error::not_found(format!("no cgroup for container {}", req.id)))?;
        Ok(StatsResponse {
            stats: MessageField::some(cg.metrics()),
            ..Default::default()
        })
    }
}
