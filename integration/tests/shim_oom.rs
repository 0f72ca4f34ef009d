//! A container that outgrows its memory limit is OOM-killed; the shim publishes /tasks/oom
//! (CRI subscribes to it) and the exit reports SIGKILL.

use std::time::Duration;

use integration::{Containerd, EventStream, Target, require_root, runtime_tests};

fn oom_kill_publishes_oom_event(rt: Target) {
    if !require_root() {
        return;
    }
    let ctrd = Containerd::start(rt);
    let events = EventStream::start(&ctrd);
    let id = ctrd.new_id("oom");
    // Doubling a shell variable reaches the 32 MiB limit within a second.
    let out = ctrd.ctr_run(
        &["--rm", "--memory-limit", &(32u64 << 20).to_string()],
        &id,
        &[
            "sh",
            "-c",
            "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
        ],
    );
    assert_eq!(out.code(), Some(137), "{}", out.describe());
    events.wait_for_task_event("/tasks/oom", &id, Duration::from_secs(30));
    drop(events);
    ctrd.assert_no_leaks();
}

runtime_tests!(oom_kill_publishes_oom_event);
