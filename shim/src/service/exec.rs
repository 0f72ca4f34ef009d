//! Task.Exec: registers an exec process; nothing runs until its Start.

use super::*;

impl Service {
    pub(super) async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        if !util::valid_identifier(&req.exec_id) {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("invalid exec id {:?}", req.exec_id),
            ));
        }
        let mut spec: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("exec spec: {e}")))?;
        let Some(obj) = spec.as_object_mut() else {
            return Err(Error::new(
                Code::InvalidArgument,
                "exec spec is not a JSON object",
            ));
        };
        obj.insert("terminal".into(), serde_json::Value::Bool(req.terminal));
        let spec = serde_json::to_vec(&spec).expect("value serialises");
        let mut st = self.state.lock().unwrap();
        let c = container_mut(&mut st, &req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::new(
                Code::AlreadyExists,
                format!("id {}: already exists", req.exec_id),
            ));
        }
        if !c.init.is_running() {
            return Err(Error::precondition(format!(
                "cannot exec in a {} container",
                status_word(c.init.status)
            )));
        }
        let mut p = Process::new(
            &req.exec_id,
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.events.publish(&ev);
        Ok(())
    }
}
