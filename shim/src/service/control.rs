//! Task.Pids, Pause/Resume, Update and Stats of a running container.

use protocol::annotations::LOG_REOPEN;

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

    /// Task.Update: new resources (`runc update`), and/or a reopen of the init process's CRI
    /// log when the [`LOG_REOPEN`] annotation is "1" (kubelet's ReopenContainerLog, sent by
    /// corral-cri with empty resources).
    pub(super) async fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let reopen = match req.annotations.get(LOG_REOPEN).map(String::as_str) {
            None => false,
            Some("1") => true,
            Some(v) => {
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!(
                        "annotation {LOG_REOPEN}={v:?} on update of {}: want \"1\"",
                        req.id
                    ),
                ));
            }
        };
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty());
        if resources.is_none() && !reopen {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "update of {} has no resources and no {LOG_REOPEN} annotation: nothing to do",
                    req.id
                ),
            ));
        }
        let (runc, log) = {
            let st = self.state.lock().unwrap();
            let c = container(&st, &req.id)?;
            if c.init.exit().is_some() {
                return Err(Error::precondition(format!(
                    "cannot update a stopped container {}",
                    req.id
                )));
            }
            let log =
                match reopen {
                    false => None,
                    true => Some(c.init.io.as_ref().and_then(|io| io.cri_log()).ok_or_else(
                        || {
                            Error::precondition(format!(
                                "container {} has no CRI log to reopen (its stdout is {:?}, not \
                         file:///path?format=cri)",
                                req.id, c.init.stdio.stdout
                            ))
                        },
                    )?),
                };
            (c.runc.clone(), log)
        };
        if let Some(resources) = resources {
            runc.update(&self.reaper, &req.id, resources).await?;
        }
        if let Some(log) = log {
            log.reopen().map_err(|e| {
                // The request was fine; the log's directory is not (any more).
                let code = match e.kind() {
                    std::io::ErrorKind::InvalidInput => Code::FailedPrecondition,
                    _ => Code::Internal,
                };
                Error::new(code, format!("reopen the CRI log of {}: {e}", req.id))
            })?;
            log::info!("reopened CRI log {} of {}", log.path().display(), req.id);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Publisher;

    fn service_with(id: &str, io: Option<ProcessIo>, stdio: StdioPaths) -> Arc<Service> {
        let (reaper, _exits) = Reaper::new();
        let svc = Service::new("ns", reaper, Publisher::new("ns"), Arc::new(Notify::new()));
        let mut init = Process::new("", stdio);
        init.pid = 100;
        init.status = Status::RUNNING;
        init.io = io;
        let c = Container {
            bundle: "/bundle".into(),
            runc: Arc::new(Runc {
                binary: "/nonexistent/runc".into(),
                root: "/run/runc".into(),
                log: "/bundle/log.json".into(),
                systemd_cgroup: false,
            }),
            private_pid_ns: true,
            rootfs_mounted: false,
            deleting: false,
            init,
            execs: HashMap::new(),
        };
        svc.state.lock().unwrap().containers.insert(id.into(), c);
        svc
    }

    fn update(annotations: &[(&str, &str)]) -> UpdateTaskRequest {
        UpdateTaskRequest {
            id: "c1".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn update_without_resources_or_reopen_is_refused() {
        block_on(async {
            let svc = service_with("c1", None, StdioPaths::default());
            let e = svc.do_update(update(&[])).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.msg.contains(LOG_REOPEN) && e.msg.contains("c1"), "{e}");
            // Empty resources are no resources.
            let mut req = update(&[]);
            req.resources = MessageField::some(Any::new());
            let e = svc.do_update(req).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            let e = svc
                .do_update(update(&[(LOG_REOPEN, "yes")]))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.msg.contains("yes"), "{e}");
            // A task whose output is not a CRI log has nothing to reopen.
            let e = svc
                .do_update(update(&[(LOG_REOPEN, "1")]))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(e.msg.contains("no CRI log"), "{e}");
            let e = svc.do_update(UpdateTaskRequest {
                id: "nope".into(),
                ..update(&[(LOG_REOPEN, "1")])
            });
            assert_eq!(e.await.unwrap_err().code(), Code::NotFound);
        });
    }

    #[test]
    fn reopen_annotation_recreates_the_cri_log() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("0.log");
            let uri = format!("file://{}?format=cri", path.display());
            let stdio = StdioPaths {
                stdout: uri.clone(),
                stderr: uri,
                ..Default::default()
            };
            let setup = crate::io::IoSetup {
                paths: &stdio,
                container_id: "c1",
                namespace: "ns",
                io_uid: 0,
                io_gid: 0,
            };
            let (_child, pio) = ProcessIo::open(&setup).await.unwrap();
            let svc = service_with("c1", Some(pio), stdio.clone());
            std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
            svc.do_update(update(&[(LOG_REOPEN, "1")])).await.unwrap();
            assert!(path.exists(), "the log was not created again");
            // A reopen whose directory went away fails, naming it.
            std::fs::remove_file(&path).unwrap();
            std::fs::remove_file(dir.path().join("0.log.1")).unwrap();
            let gone = dir.path().to_path_buf();
            std::fs::remove_dir(&gone).unwrap();
            let e = svc
                .do_update(update(&[(LOG_REOPEN, "1")]))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(e.msg.contains(&gone.display().to_string()), "{e}");
        });
    }
}
