//! Where runc keeps its state (issue 14, 1b). Our shim's default runc root is its own,
//! `/run/corral/runc/<ns>`, so corrald with our shim runs beside a containerd with runc-v2
//! (`/run/containerd/runc/<ns>`) on one host, as while a node migrates, with the same
//! namespace and container ids on both. The runtime options' `root` still overrides the default,
//! with either shim.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::cgroups;
use integration::{
    Containerd, Daemon, IMAGE_REF, Runtime, Target, api, leaks, require_root, runtime_tests,
    unique_namespace, wait_until,
};
use protocol::options::Options;

const T: Duration = Duration::from_secs(30);

/// The pid runc recorded for container `id` in its state under `dir` (`<root>/<ns>`).
fn runc_init_pid(dir: &Path, id: &str) -> u64 {
    let path = dir.join(id).join("state.json");
    let text =
        fs::read(&path).unwrap_or_else(|e| panic!("no runc state at {}: {e}", path.display()));
    let state: serde_json::Value = serde_json::from_slice(&text).expect("runc state is JSON");
    state["init_process_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no init_process_pid in {}", path.display()))
}

/// SIGKILL, STOPPED, task and container removed, through ctr.
fn stop_and_remove(d: &Containerd, id: &str) {
    let ctr = d.ctr();
    ctr.ok(&["tasks", "kill", "-s", "SIGKILL", id]);
    ctr.wait_task_status(id, "STOPPED", T);
    ctr.ok(&["tasks", "rm", id]);
    ctr.ok(&["containers", "rm", id]);
}

/// Container `web` in one namespace under containerd 1.6 with runc-v2 and under corrald with
/// our shim, at once: both run (the second `runc create` used to find the first's state and
/// fail with "container with given ID already exists"), each runc root holds its own, both
/// exec, and both clean up without touching the other.
#[test]
fn same_namespace_and_id_beside_containerd() {
    if !require_root() {
        return;
    }
    let ns = unique_namespace();
    let id = "web";
    let ctrd = Containerd::start_in_namespace(
        Target {
            daemon: Daemon::Containerd,
            runtime: Runtime::Runc,
        },
        &ns,
    );
    let corrald = Containerd::start_in_namespace(Target::CORRAL, &ns);
    let out = ctrd.ctr_run(&["-d"], id, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());
    // ctr puts both in cgroup /<ns>/web; two containers in one cgroup would kill and remove
    // each other's processes. That is the client's choice, not runc state: keep them apart.
    let corrald_cgroup = format!("/corral-it-{ns}-{id}");
    let out = corrald.ctr_run(&["-d", "--cgroup", &corrald_cgroup], id, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());

    let a = ctrd.ctr().task(id).expect("containerd's web");
    let b = corrald.ctr().task(id).expect("corrald's web");
    assert_eq!(
        (a.status.as_str(), b.status.as_str()),
        ("RUNNING", "RUNNING")
    );
    assert_ne!(a.pid, b.pid);
    let v2_dir = leaks::runc_state_dir(Runtime::Runc, &ns);
    let ours_dir = leaks::runc_state_dir(Runtime::Corral, &ns);
    assert_eq!(v2_dir, PathBuf::from(format!("/run/containerd/runc/{ns}")));
    assert_eq!(ours_dir, PathBuf::from(format!("/run/corral/runc/{ns}")));
    assert_eq!(runc_init_pid(&v2_dir, id), u64::from(a.pid));
    assert_eq!(runc_init_pid(&ours_dir, id), u64::from(b.pid));

    for (d, code) in [(&ctrd, "4"), (&corrald, "5")] {
        let out = d.ctr_exec(&[], id, "probe", &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.code(), code.parse().ok(), "{}", out.describe());
    }

    // corrald's goes first: containerd's must not notice. (The full leak checks wait until
    // both are gone: they look for cgroup /<ns>/web, which is containerd's.)
    stop_and_remove(&corrald, id);
    assert!(!ours_dir.join(id).exists());
    wait_until("corrald's shim to exit", T, || {
        leaks::daemon_shim_processes(&corrald.address(), &ns)
            .is_empty()
            .then_some(())
    });
    let a2 = ctrd
        .ctr()
        .task(id)
        .expect("containerd's web after corrald's went");
    assert_eq!((a2.status.as_str(), a2.pid), ("RUNNING", a.pid));
    assert_eq!(runc_init_pid(&v2_dir, id), u64::from(a.pid));

    stop_and_remove(&ctrd, id);
    ctrd.assert_no_leaks();
    corrald.assert_no_leaks();
    let rel = corrald_cgroup.trim_start_matches('/');
    let left: Vec<PathBuf> = cgroups::hierarchies()
        .into_iter()
        .map(|h| h.mount.join(rel))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// runc options' `root` overrides the default: the state goes to `<root>/<ns>`, nothing to
/// the default root, and Delete cleans it there.
fn runc_root_option_overrides_the_default(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let id = d.new_id("root");
    d.ctr().ok(&[
        "containers",
        "create",
        "--runtime",
        t.runtime.name(),
        IMAGE_REF,
        &id,
        "--",
        "sleep",
        "1000",
    ]);
    let root = d.dir().join("runc-root");
    let options = api::runc_options(&Options {
        root: root.display().to_string(),
        ..Default::default()
    });
    let api = d.api();
    let pid = api.create_task(&id, Some(options)).expect("create");
    let dir = root.join(d.namespace());
    assert_eq!(runc_init_pid(&dir, &id), u64::from(pid));
    let default = leaks::runc_state_dir(t.runtime, d.namespace()).join(&id);
    assert!(!default.exists(), "state also at {}", default.display());
    api.start_task(&id);
    api.kill(&id, libc::SIGKILL as u32);
    assert_eq!(api.wait(&id), 137);
    api.delete_task(&id);
    assert!(
        !dir.join(&id).exists(),
        "runc state left in {}",
        dir.display()
    );
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

runtime_tests!(runc_root_option_overrides_the_default);
