//! A daemon run by systemd under `Type=notify` has `NOTIFY_SOCKET` in its environment, and
//! containerd passes its environment on to its shims. runc, given `NOTIFY_SOCKET`, hands the
//! socket to the container and makes `runc start` wait until the container reports ready,
//! which an ordinary container never does: starts hang. containerd's Go shim filters it out
//! (go-runc); ours must too, and corrald must not pass it on in the first place.
//!
//! The daemons inherit the variable from this test process, so this binary holds this one test
//! (it sets its own environment before starting any thread or process).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use integration::{Containerd, Daemon, Runtime, Target, leaks, require_root};

#[test]
fn containers_start_under_a_daemon_that_has_notify_socket() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    // What systemd would listen on (containerd tells it READY=1 there; harmless).
    let _systemd = UnixDatagram::bind(&path).unwrap();
    // SAFETY: the only test of this binary, before it starts any thread or process.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &path);
        // A start that hangs fails after 10 s instead of the shim's default minute.
        std::env::set_var("CORRAL_RUNC_TIMEOUT", "10s");
    }
    for daemon in [Daemon::Containerd, Daemon::Corrald] {
        for runtime in [Runtime::Runc, Runtime::Corral] {
            let d = Containerd::start(Target { daemon, runtime });
            let id = d.new_id("notify");
            let out = d.ctr_run(&["-d"], &id, &["sleep", "1000"]);
            assert!(
                out.success(),
                "{daemon:?} with {runtime:?}: {}",
                out.describe()
            );
            d.ctr()
                .wait_task_status(&id, "RUNNING", Duration::from_secs(30));
            if daemon == Daemon::Corrald {
                let shim = leaks::serving_shim(d.namespace(), &id).expect("the task's shim");
                let environ = std::fs::read(format!("/proc/{}/environ", shim.pid)).unwrap();
                assert!(
                    !environ
                        .split(|b| *b == 0)
                        .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
                    "corrald passed NOTIFY_SOCKET to the shim of {id} ({runtime:?})"
                );
            }
            d.ctr().ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
            d.ctr()
                .wait_task_status(&id, "STOPPED", Duration::from_secs(30));
            d.ctr().ok(&["tasks", "rm", &id]);
            d.ctr().ok(&["containers", "rm", &id]);
            d.assert_no_leaks();
        }
    }
}
