//! Crash recovery through real containerd 1.6, for each shim (runc-v2 and corral): containerd
//! killed with SIGKILL and restarted while containers run (and one exits), and a shim killed with
//! SIGKILL under a running containerd.

use std::path::Path;
use std::time::Duration;

use integration::{
    Containerd, Daemon, EventStream, Runtime, Target, leaks, require_root, runtime_tests,
    wait_until,
};

const T: Duration = Duration::from_secs(30);

fn setup(rt: Target) -> Option<Containerd> {
    if !require_root() {
        return None;
    }
    Some(Containerd::start(rt))
}

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// containerd dies (SIGKILL) with 3 running containers and one that exits while it is down.
/// After a restart on the same paths the 3 are still RUNNING and accept exec; the exited one is
/// STOPPED and its delete reports exit code 7.
fn containerd_kill9_and_restart(rt: Target) {
    let Some(mut ctrd) = setup(rt) else { return };
    let sleepers: Vec<String> = (0..3).map(|_| ctrd.new_id("live")).collect();
    for id in &sleepers {
        let out = ctrd.ctr_run(&["-d"], id, &["sleep", "1000"]);
        assert!(out.success(), "{}", out.describe());
    }
    // Exits 7 on SIGTERM. A pid-namespace init only gets signals it handles, so wait until the
    // trap is installed (the marker file) before relying on it.
    let exiter = ctrd.new_id("exit");
    let script = "trap 'exit 7' TERM; touch /tmp/trap-set; sleep 1000 & wait";
    let out = ctrd.ctr_run(&["-d"], &exiter, &["sh", "-c", script]);
    assert!(out.success(), "{}", out.describe());

    let ctr = ctrd.ctr().clone();
    let before = ctr.tasks();
    let pid_of = |id: &str| before.iter().find(|t| t.id == id).map(|t| t.pid).unwrap();
    let exiter_pid = pid_of(&exiter);
    wait_until("the exiter's trap", T, || {
        Path::new(&format!("/proc/{exiter_pid}/root/tmp/trap-set"))
            .exists()
            .then_some(())
    });

    ctrd.kill_9();
    // SAFETY: kill(2) of the container's init (a host pid read from `tasks ls`).
    let rc = unsafe { libc::kill(exiter_pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "cannot signal pid {exiter_pid}");
    // Gone from /proc once its shim (the subreaper) has reaped it.
    wait_until("the exiter to exit and be reaped", T, || {
        process_gone(exiter_pid).then_some(())
    });
    for id in sleepers.iter().chain([&exiter]) {
        assert!(
            leaks::serving_shim(ctrd.namespace(), id).is_some(),
            "shim of {id} did not survive containerd's death"
        );
    }

    ctrd.restart();
    let after = ctr.tasks();
    for id in &sleepers {
        let t = after.iter().find(|t| &t.id == id);
        assert!(
            t.is_some_and(|t| t.status == "RUNNING" && t.pid == pid_of(id)),
            "{id} after restart: {t:?} (before: pid {})",
            pid_of(id)
        );
    }
    let t = after.iter().find(|t| t.id == exiter);
    assert!(
        t.is_some_and(|t| t.status == "STOPPED"),
        "{exiter} after restart: {t:?}"
    );

    // The exec blocks on stdin until its output arrived (ctr 1.6 may drop output still in flight
    // at exit; see `integration::ctr`).
    let args = ctrd.exec_args(
        &[],
        &sleepers[0],
        "after-restart",
        &["sh", "-c", "echo alive; read x"],
    );
    let mut session = ctr.spawn(&args);
    session.wait_output("the exec's output", T, |o, _| o == b"alive\n");
    session.send_line("go");
    let out = session.finish();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout_str(), "alive\n");

    let out = ctr.run(&["tasks", "rm", &exiter]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("exit code 7"),
        "tasks rm did not report 7: {}",
        out.describe()
    );

    for id in &sleepers {
        ctr.ok(&["tasks", "kill", "-s", "SIGKILL", id]);
        ctr.wait_task_status(id, "STOPPED", T);
        ctr.ok(&["tasks", "rm", id]);
    }
    for id in sleepers.iter().chain([&exiter]) {
        ctr.ok(&["containers", "rm", id]);
    }
    ctrd.assert_no_leaks();
}

/// A shim dies (SIGKILL) under a running containerd: containerd notices the closed connection,
/// runs the shim's `delete` (which kills the container) and publishes exit 137; the task ends up
/// gone or STOPPED, can be removed, and nothing leaks.
fn shim_kill9_is_cleaned_up(rt: Target) {
    let Some(ctrd) = setup(rt) else { return };
    let ctr = ctrd.ctr();
    let events = EventStream::start(&ctrd);
    let id = ctrd.new_id("victim");
    let out = ctrd.ctr_run(&["-d"], &id, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());
    let init_pid = ctr.task(&id).expect("task listed").pid;

    let shim = leaks::serving_shim(ctrd.namespace(), &id)
        .unwrap_or_else(|| panic!("no serving shim process for {id} in /proc"));
    // SAFETY: kill(2) of the shim pid just read from /proc.
    let rc = unsafe { libc::kill(shim.pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "cannot kill shim {}", shim.pid);

    let exit = events.wait_for("/tasks/exit after the shim died", T, |evs| {
        evs.iter()
            .find(|e| e.topic == "/tasks/exit" && e.container_id() == Some(&id))
            .cloned()
    });
    assert_eq!(
        exit.u64_field("exit_status"),
        137,
        "exit event after shim death: {}",
        exit.payload
    );
    wait_until("the container's init to be gone", T, || {
        process_gone(init_pid).then_some(())
    });
    let status = wait_until("the task to leave RUNNING", T, || match ctr.task(&id) {
        None => Some(None),
        Some(t) if t.status != "RUNNING" => Some(Some(t.status)),
        Some(_) => None,
    });
    if ctrd.daemon() == Daemon::Corrald {
        // corrald keeps the task, stopped, until it is deleted (containerd forgets it).
        assert_eq!(
            status.as_deref(),
            Some("STOPPED"),
            "task after its shim died"
        );
        let delete = events.wait_for("/tasks/delete after the shim died", T, |evs| {
            evs.iter()
                .find(|e| e.topic == "/tasks/delete" && e.container_id() == Some(&id))
                .cloned()
        });
        assert_eq!(delete.u64_field("exit_status"), 137, "{}", delete.payload);
        let out = ctr.run(&["tasks", "rm", &id]);
        assert!(out.success(), "{}", out.describe());
        assert!(out.stderr.contains("exit code 137"), "{}", out.describe());
    } else if let Some(status) = status {
        assert_eq!(status, "STOPPED");
        let out = ctr.run(&["tasks", "rm", &id]);
        assert!(
            out.success() || out.stderr.contains("not found"),
            "{}",
            out.describe()
        );
    }
    assert!(ctr.task(&id).is_none(), "task still listed");
    ctr.ok(&["containers", "rm", &id]);
    drop(events);
    if rt == Target::from(Runtime::Runc) {
        // runc-v2 (1.6) removes its socket only when its server exits normally, and its
        // `delete` action does not remove it, so a SIGKILLed runc-v2 shim leaves
        // /run/containerd/s/<hash> behind. Ours must not.
        ctrd.assert_no_leaks_except(&[leaks::LeakKind::ShimSocket]);
    } else {
        ctrd.assert_no_leaks();
    }
}

runtime_tests!(containerd_kill9_and_restart, shim_kill9_is_cleaned_up);
