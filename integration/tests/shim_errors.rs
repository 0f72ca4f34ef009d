//! Errors a client sees through containerd, for each shim: runc's own message when a process
//! cannot start, AlreadyExists for a duplicate exec id, "already finished" (NotFound) for a
//! kill of a stopped task. Nothing leaks after any of them.

use std::time::Duration;

use integration::{Containerd, Target, require_root, runtime_tests};

const T: Duration = Duration::from_secs(30);

/// A command that does not exist: ctr fails with runc's message, not a generic one.
fn missing_executable_reports_runcs_message(rt: Target) {
    if !require_root() {
        return;
    }
    let ctrd = Containerd::start(rt);
    let id = ctrd.new_id("nox");
    let out = ctrd.ctr_run(&["--rm"], &id, &["/no/such/binary"]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("no such file or directory")
            || out.stderr.contains("executable file not found"),
        "runc's reason missing: {}",
        out.describe()
    );
    // ctr leaves the container record behind on a failed start; remove it as a user would.
    ctrd.ctr().run(&["tasks", "rm", "-f", &id]);
    ctrd.ctr().run(&["containers", "rm", &id]);
    ctrd.assert_no_leaks();
}

/// Exec ids are unique per task while the exec exists; a stopped task cannot be killed.
fn duplicate_exec_and_kill_after_exit(rt: Target) {
    if !require_root() {
        return;
    }
    let ctrd = Containerd::start(rt);
    let ctr = ctrd.ctr();
    let id = ctrd.new_id("dup");
    let out = ctrd.ctr_run(&["-d"], &id, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());
    ctr.wait_task_status(&id, "RUNNING", T);

    let out = ctrd.ctr_exec(&["--detach"], &id, "e1", &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());
    let out = ctrd.ctr_exec(&["--detach"], &id, "e1", &["true"]);
    assert!(
        !out.success(),
        "duplicate exec id accepted: {}",
        out.describe()
    );
    assert!(out.stderr.contains("already exists"), "{}", out.describe());

    ctr.ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
    ctr.wait_task_status(&id, "STOPPED", T);
    let out = ctr.run(&["tasks", "kill", "-s", "SIGKILL", &id]);
    assert!(!out.success(), "kill of a stopped task succeeded");
    assert!(
        out.stderr.contains("not found") || out.stderr.contains("already finished"),
        "{}",
        out.describe()
    );
    ctr.ok(&["tasks", "rm", &id]);
    ctr.ok(&["containers", "rm", &id]);
    ctrd.assert_no_leaks();
}

runtime_tests!(
    missing_executable_reports_runcs_message,
    duplicate_exec_and_kill_after_exit
);
