//! Exits of container processes: matching reaped pids to processes, holding an exit until
//! the process's output is out and its start event is published.

use super::*;

impl Service {
    /// Dispatches exits that no runc call awaited to container processes.
    ///
    /// A process's exit is recorded (and Wait answered, /tasks/exit published) only after its
    /// output has been copied to the client, for at most [`OUTPUT_DRAIN`]: ctr stops reading
    /// when it sees the exit, so an exit reported early cuts off the end of the output.
    pub async fn run_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            let kill_rest = {
                let st = self.state.lock().unwrap();
                Self::host_pid_init(&st, exit)
            };
            if let Some((id, runc)) = kill_rest {
                // Without its own pid namespace nothing kills the container's other processes
                // when the init dies. As containerd's shim, kill them before the exit is
                // recorded: whoever sees the init gone (Wait, /tasks/exit) must not find its
                // children still running. Exits wait meanwhile, so they stay in order.
                let kill = runc.kill(&self.reaper, &id, 9, true);
                match tokio::time::timeout(KILL_ALL_DEADLINE, kill).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!("kill the rest of {id} after its init exited: {e}"),
                    Err(_) => log::warn!(
                        "kill the rest of {id} after its init exited: no answer from runc in \
                         {KILL_ALL_DEADLINE:?}"
                    ),
                }
            }
            let drained = {
                let mut st = self.state.lock().unwrap();
                self.find_process(&mut st, exit)
                    .and_then(|p| p.io.as_mut())
                    .and_then(|io| io.drained())
            };
            let svc = self.clone();
            let record = move || {
                let mut st = svc.state.lock().unwrap();
                if !svc.apply_exit(&mut st, exit) {
                    if st.unclaimed.len() >= UNCLAIMED_EXITS {
                        st.unclaimed.pop_front();
                    }
                    st.unclaimed.push_back(exit);
                }
            };
            match drained {
                Some(d) => {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(OUTPUT_DRAIN, d).await;
                        record();
                    });
                }
                None => record(),
            }
        }
    }

    /// The container and runc of `exit`'s process when it is the init of a container that
    /// shares the host's (or another) pid namespace.
    fn host_pid_init(st: &State, exit: Exit) -> Option<(String, Arc<Runc>)> {
        let (id, exec_id) = Self::owner_of(st, exit)?;
        let c = st.containers.get(&id)?;
        (exec_id.is_empty() && !c.private_pid_ns && c.init.exit().is_none())
            .then(|| (id, c.runc.clone()))
    }

    /// The container id and exec id (empty for the init) of the process `exit` belongs to.
    /// Only a process spawned before the exit was seen can own it: an older one with the
    /// same pid is a reused pid.
    fn owner_of(st: &State, exit: Exit) -> Option<(String, String)> {
        let theirs = |p: &Process| p.pid == exit.pid && p.pid != 0 && exit.seq > p.spawn_seq;
        st.containers.iter().find_map(|(id, c)| {
            std::iter::once(&c.init)
                .chain(c.execs.values())
                .find(|p| theirs(p))
                .map(|p| (id.clone(), p.exec_id.clone()))
        })
    }

    pub(super) fn find_process<'a>(
        &self,
        st: &'a mut State,
        exit: Exit,
    ) -> Option<&'a mut Process> {
        let (id, exec_id) = Self::owner_of(st, exit)?;
        st.containers.get_mut(&id)?.process_mut(&exec_id).ok()
    }

    /// Records `exit` on the process with its pid, if any. Publishes /tasks/exit unless a
    /// Start is in flight (then Start publishes it after /tasks/start).
    pub(super) fn apply_exit(&self, st: &mut State, exit: Exit) -> bool {
        let Some((id, exec_id)) = Self::owner_of(st, exit) else {
            return false;
        };
        let Some(c) = st.containers.get_mut(&id) else {
            return false;
        };
        let Ok(p) = c.process_mut(&exec_id) else {
            return false;
        };
        if !p.set_exited(exit.status, util::now()) {
            return true;
        }
        if p.starting {
            p.exit_deferred = true;
        } else {
            self.publish_exit(&id, p);
        }
        true
    }

    /// Takes an exit for `pid` that arrived before the pid was known. Only exits seen after
    /// `since` (taken before the process was spawned) can be its: an older one is a reused pid.
    pub(super) fn claim_exit(unclaimed: &mut VecDeque<Exit>, pid: u32, since: u64) -> Option<Exit> {
        let i = unclaimed
            .iter()
            .position(|e| e.pid == pid && e.seq > since)?;
        unclaimed.remove(i)
    }

    pub(super) fn publish_exit(&self, container_id: &str, p: &Process) {
        let Some(exit) = p.exit() else { return };
        let mut ev = TaskExit::new();
        ev.container_id = container_id.to_string();
        ev.id = if p.exec_id.is_empty() {
            container_id.to_string()
        } else {
            p.exec_id.clone()
        };
        ev.pid = p.pid;
        ev.exit_status = exit.status;
        ev.exited_at = MessageField::some(exit.at);
        self.events.publish(&ev);
    }
}
