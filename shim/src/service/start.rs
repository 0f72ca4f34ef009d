//! Task.Start of the init (released through runc's exec fifo, or `<runtime> start` when the
//! runtime left none) and of exec processes (`runc exec --detach`), with the start event always
//! ahead of the exit event.

use super::*;

impl Service {
    pub(super) async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let (runc, bundle, stdio, spec, pid, exited) = {
            let mut st = self.state.lock().unwrap();
            let c = container_mut(&mut st, &req.id)?;
            let (runc, bundle) = (c.runc.clone(), c.bundle.clone());
            if !req.exec_id.is_empty() && c.init.status != Status::RUNNING {
                return Err(Error::precondition(format!(
                    "cannot start exec {} in a {} container",
                    req.exec_id,
                    status_word(c.init.status)
                )));
            }
            let p = c.process_mut(&req.exec_id)?;
            if p.status != Status::CREATED || p.starting {
                return Err(Error::precondition(format!(
                    "cannot start a {} process",
                    status_word(p.status)
                )));
            }
            p.starting = true;
            let (pid, exited) = (p.pid, p.exited.subscribe());
            (
                runc,
                bundle,
                p.stdio.clone(),
                std::mem::take(&mut p.spec),
                pid,
                exited,
            )
        };
        let started = if req.exec_id.is_empty() {
            runc.start(&self.reaper, &req.id, pid, exited)
                .await
                .map(|()| None)
        } else {
            self.start_exec(&runc, &bundle, &req, &stdio, spec)
                .await
                .map(Some)
        };
        let mut st = self.state.lock().unwrap();
        let pid = self.finish_start(&mut st, &req.id, &req.exec_id, started)?;
        drop(st);
        if req.exec_id.is_empty() {
            self.watch_oom(&req.id, pid);
            // The container is up and the shim goes idle: drop the start-up code it ran.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                crate::trim::trim_text();
            });
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Records a start and publishes /tasks/start or /tasks/exec-started, then any exit seen
    /// while the start was in flight: an exit never overtakes its start on the wire.
    /// `exec` carries an exec's pid, IO and the reaper sequence number taken before it ran.
    pub(super) fn finish_start(
        &self,
        st: &mut State,
        id: &str,
        exec_id: &str,
        started: Result<Option<ExecStarted>>,
    ) -> Result<u32> {
        let p = container_mut(st, id)?.process_mut(exec_id)?;
        p.starting = false;
        let deferred = std::mem::take(&mut p.exit_deferred);
        let exec = match started {
            Ok(e) => e,
            Err(e) => {
                // The process died before Start could release it (an init gone between
                // create and start): no TaskStart, but its exit is still an event, as
                // containerd's runc shim publishes it, or subscribers never learn of it.
                if deferred
                    && let Ok(p) = container_mut(st, id).and_then(|c| c.process_mut(exec_id))
                {
                    self.publish_exit(id, p);
                }
                return Err(e);
            }
        };
        if let Some(e) = exec {
            p.pid = e.pid;
            p.spawn_seq = e.spawn_seq;
            p.io = Some(e.io);
        }
        if p.exit().is_none() {
            p.status = Status::RUNNING;
        }
        let (pid, spawn_seq) = (p.pid, p.spawn_seq);
        if exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = id.to_string();
            ev.pid = pid;
            self.events.publish(&ev);
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.to_string();
            ev.exec_id = exec_id.to_string();
            ev.pid = pid;
            self.events.publish(&ev);
        }
        // An exec's pid is only known now: its exit may have been reaped already.
        let early = if exec_id.is_empty() {
            None
        } else {
            Self::claim_exit(&mut st.unclaimed, pid, spawn_seq)
        };
        if let Some(exit) = early {
            // Dispatched again now that the pid is known, so it waits for the output like
            // any other exit; it is published after the exec-started above.
            self.reaper.redeliver(exit);
        } else if deferred {
            let p = container_mut(st, id)?.process_mut(exec_id)?;
            self.publish_exit(id, p);
        }
        Ok(pid)
    }

    /// Runs an exec process: its stdio, then `runc exec --detach`.
    pub(super) async fn start_exec(
        &self,
        runc: &Runc,
        bundle: &Path,
        req: &StartRequest,
        stdio: &StdioPaths,
        spec: Vec<u8>,
    ) -> Result<ExecStarted> {
        let process_json = bundle.join(format!(".{}.process.json", req.exec_id));
        util::atomic_write(&process_json, &spec, 0o600)
            .map_err(|e| Error::new(Code::Internal, format!("write exec spec: {e}")))?;
        let setup = IoSetup {
            paths: stdio,
            container_id: &req.id,
            namespace: &self.namespace,
            io_uid: 0,
            io_gid: 0,
        };
        let (child_stdio, mut pio) = ProcessIo::open(&setup).await.map_err(|e| {
            Error::new(crate::io::error_code(&e), format!("set up exec stdio: {e}"))
        })?;
        let console = stdio
            .terminal
            .then(ConsoleSocket::new)
            .transpose()
            .map_err(|e| Error::new(Code::Internal, format!("console socket: {e}")))?;
        let pid_file = bundle.join(format!("{}.pid", req.exec_id));
        let copts = CreateOpts {
            pid_file: &pid_file,
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: false,
            no_new_keyring: false,
        };
        let spawn_seq = self.reaper.seq();
        let exec = runc.exec(&self.reaper, &req.id, &process_json, &copts, child_stdio);
        let (res, master) = with_console(exec, console.as_ref()).await;
        let _ = std::fs::remove_file(&process_json);
        res?;
        if let Some(master) = master {
            master
                .and_then(|m| pio.attach_console(m, stdio))
                .map_err(|e| Error::new(Code::Internal, format!("exec console: {e}")))?;
        }
        let pid = util::read_pid_file(&pid_file)
            .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
        Ok(ExecStarted {
            pid,
            io: pio,
            spawn_seq,
        })
    }

    /// Publishes /tasks/oom for each OOM kill in the container's v1 memory cgroup.
    pub(super) fn watch_oom(&self, id: &str, pid: u32) {
        let Some(cg) = cgroup::Cgroup::of_pid(pid) else {
            return;
        };
        let Some(dir) = cg.memory_dir().map(Path::to_path_buf) else {
            return;
        };
        let watch = match cgroup::OomWatch::new(&dir) {
            Ok(w) => w,
            Err(e) => {
                log::debug!("no OOM notification for {id}: {e}");
                return;
            }
        };
        let (events, id) = (self.events.clone(), id.to_string());
        tokio::spawn(async move {
            while watch.next(&dir).await.is_ok() {
                let mut ev = TaskOOM::new();
                ev.container_id = id.clone();
                events.publish(&ev);
            }
        });
    }
}
