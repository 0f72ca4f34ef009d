//! Issue 16: our shim starts a created container itself, through runc's exec fifo, instead of
//! running `runc start`; a runtime that leaves no fifo is still started with `<runtime> start`;
//! an init that dies between create and start gets a clear error, not a hang. It also deletes
//! a stopped container without `runc delete` when that is only its cgroups and runc's
//! directory, and leaves a container sharing a PID namespace to `runc delete`.
//!
//! A `runc` stand-in (the runc options' `BinaryName`) records every subcommand it is called
//! with and runs the real runc; per case it can also hide the exec fifo after `create` (a
//! runtime without one; put back by its `start`, which real runc needs), or stop the init
//! after `create` and kill it once the test is about to call Start.
//!
//! Through corrald and through containerd 1.6, both driving our shim.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::leaks::runc_state_dir;
use integration::{Containerd, EventStream, IMAGE_REF, Target, api, require_root, wait_until};
use protocol::grpc::prost_types;
use protocol::options::Options;

const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Records and runs the real runc.
    Record,
    /// Hides the exec fifo after create; puts it back for `start`.
    NoFifo,
    /// Stops the init after create; kills it a second after the `go` file appears.
    InitDies,
}

struct Stand {
    script: PathBuf,
    calls: PathBuf,
    go: PathBuf,
}

impl Stand {
    fn new(dir: &Path, tag: &str, mode: Mode) -> Stand {
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("runc installed");
        let me = Stand {
            script: dir.join(format!("runc-{tag}")),
            calls: dir.join(format!("calls-{tag}")),
            go: dir.join(format!("go-{tag}")),
        };
        let after_create = match mode {
            Mode::Record => String::new(),
            Mode::NoFifo => {
                r#"mv "$root/$id/exec.fifo" "$root/$id/exec.fifo.hidden" || exit 1"#.into()
            }
            // Detached from runc's pipes, which the shim reads to their end.
            Mode::InitDies => format!(
                r#"pid=$(cat "$pidfile"); kill -STOP "$pid" || exit 1
( n=0; while [ ! -e {go} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; sleep 1; kill -KILL "$pid" ) </dev/null >/dev/null 2>&1 &"#,
                go = me.go.display()
            ),
        };
        let before_start = match mode {
            Mode::NoFifo => r#"mv "$root/$id/exec.fifo.hidden" "$root/$id/exec.fifo" || exit 1"#,
            _ => "",
        };
        // The subcommand is the first argument that is neither a global flag nor the value
        // of one; the container id is the last argument of create and start.
        let script = format!(
            r#"#!/bin/sh
root= sub= skip= pidfile= prev= id=
for a in "$@"; do
    if [ -n "$skip" ]; then [ "$skip" = --root ] && root=$a; skip=; continue; fi
    case "$a" in
        --root|--log|--log-format|--criu|--rootless) skip=$a ;;
        -*) ;;
        *) sub=$a; break ;;
    esac
done
for a in "$@"; do [ "$prev" = --pid-file ] && pidfile=$a; prev=$a; id=$a; done
echo "$sub" >>{calls}
case "$sub" in
    create)
        {runc} "$@" || exit $?
        {after_create}
        exit 0 ;;
    start)
        {before_start} ;;
esac
exec {runc} "$@"
"#,
            calls = me.calls.display(),
            runc = runc.display(),
        );
        fs::write(&me.script, script).expect("write the runc stand-in");
        fs::set_permissions(&me.script, fs::Permissions::from_mode(0o755)).expect("chmod");
        me
    }

    fn options(&self) -> Option<prost_types::Any> {
        Some(api::runc_options(&Options {
            binary_name: self.script.display().to_string(),
            ..Default::default()
        }))
    }

    /// Creates task `id` with this stand-in as its runc; the init's pid.
    fn create(&self, api: &integration::Api, id: &str) -> u32 {
        api.create_task(id, self.options())
            .unwrap_or_else(|e| panic!("create {id}: {e}"))
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A container of `d` running `sh -c <script>` with the host directory `out` at /out.
fn container(d: &Containerd, prefix: &str, out: &Path, script: &str) -> String {
    fs::create_dir_all(out).expect("mkdir out");
    let mount = format!("type=bind,src={},dst=/out,options=rbind:rw", out.display());
    container_with(d, prefix, &["--mount", &mount], script)
}

/// A container of `d` running `sh -c <script>`, made by `ctr containers create` with `flags`.
fn container_with(d: &Containerd, prefix: &str, flags: &[&str], script: &str) -> String {
    let id = d.new_id(prefix);
    let mut args = vec!["containers", "create", "--runtime", d.runtime().name()];
    args.extend_from_slice(flags);
    args.extend([IMAGE_REF, &id, "--", "sh", "-c", script]);
    d.ctr().ok(&args);
    id
}

/// Without `runc start`: the container runs (its output and exit code are seen) and the shim
/// never called `start`. The fifo is gone afterwards, so runc sees the container running.
fn starts_without_runc_start(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let stand = Stand::new(d.dir(), "record", Mode::Record);
    let out = d.dir().join("out-record");
    let id = container(&d, "fifo", &out, "echo ran >/out/said; exec sleep 1000");
    let api = d.api();
    let pid = stand.create(&api, &id);
    assert_eq!(api.start_task(&id), pid, "Start answers the init's pid");
    wait_until("the container's output", T, || {
        fs::read_to_string(out.join("said"))
            .ok()
            .filter(|s| s.trim() == "ran")
    });
    let calls = stand.calls();
    assert!(calls.iter().any(|c| c == "create"), "calls: {calls:?}");
    assert!(
        !calls.iter().any(|c| c == "start"),
        "the shim ran `runc start`: {calls:?}"
    );
    let state = std::process::Command::new(&stand.script)
        .args([
            "--root",
            &runc_state_dir(d.runtime(), d.namespace())
                .display()
                .to_string(),
            "state",
            &id,
        ])
        .output()
        .expect("runc state");
    let state = String::from_utf8_lossy(&state.stdout);
    assert!(
        state.contains(r#""status": "running""#),
        "runc does not see {id} running: {state}"
    );
    api.kill(&id, libc::SIGKILL as u32);
    assert_eq!(api.wait(&id), 137);
    api.delete_task(&id);
    d.ctr().ok(&["containers", "rm", &id]);

    // A short container: the exit code of a process that ends at once is seen too.
    let id = container(&d, "short", &out, "exit 7");
    stand.create(&api, &id);
    api.start_task(&id);
    assert_eq!(api.wait(&id), 7);
    assert_eq!(api.delete_task(&id), 7);
    assert!(!stand.calls().iter().any(|c| c == "start"));
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// A runtime that leaves no exec fifo is started with its own `start`.
fn no_fifo_falls_back_to_runtime_start(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let stand = Stand::new(d.dir(), "nofifo", Mode::NoFifo);
    let out = d.dir().join("out-nofifo");
    let id = container(&d, "nofifo", &out, "echo ran >/out/said; exit 3");
    let api = d.api();
    stand.create(&api, &id);
    api.start_task(&id);
    assert_eq!(api.wait(&id), 3);
    assert_eq!(
        fs::read_to_string(out.join("said"))
            .unwrap_or_default()
            .trim(),
        "ran"
    );
    let calls = stand.calls();
    assert!(
        calls.iter().any(|c| c == "start"),
        "no `start` call without a fifo: {calls:?}"
    );
    api.delete_task(&id);
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// An init that dies between create and start: Start fails with a clear error in time (it
/// does not hang until a deadline), and the task can be deleted.
fn dead_init_is_an_error(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let stand = Stand::new(d.dir(), "dies", Mode::InitDies);
    let out = d.dir().join("out-dies");
    let id = container(&d, "dies", &out, "echo ran >/out/said");
    let api = d.api();
    let events = EventStream::start(&d);
    stand.create(&api, &id);
    fs::write(&stand.go, b"").expect("go");
    let t0 = Instant::now();
    let err = api
        .try_start(&id, "")
        .expect_err("Start of a container whose init died succeeded");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "the error took {took:?}");
    assert!(
        err.message().contains("container process is already dead"),
        "unclear error: {err:?}"
    );
    assert!(!out.join("said").exists(), "the container ran after all");
    assert!(!stand.calls().iter().any(|c| c == "start"));
    // Subscribers learn that the task is gone, as from containerd's runc shim; it never
    // started, so no /tasks/start.
    events.wait_for_task_event("/tasks/exit", &id, Duration::from_secs(10));
    assert!(
        !events
            .events()
            .iter()
            .any(|e| e.topic == "/tasks/start" && e.container_id() == Some(id.as_str())),
        "a /tasks/start for a task that never started"
    );
    api.try_delete_task(&id)
        .unwrap_or_else(|e| panic!("delete {id} after the failed start: {e}"));
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// A stopped container with a PID namespace of its own is deleted without `runc delete`: its
/// exit code is answered, and runc's directory for it and its cgroups are gone (the leak check
/// looks in every hierarchy), as after `runc delete`.
fn deletes_without_runc_delete(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let stand = Stand::new(d.dir(), "del", Mode::Record);
    let out = d.dir().join("out-del");
    let id = container(&d, "del", &out, "exit 5");
    let api = d.api();
    stand.create(&api, &id);
    api.start_task(&id);
    assert_eq!(api.wait(&id), 5);
    let state = runc_state_dir(d.runtime(), d.namespace()).join(&id);
    assert!(state.is_dir(), "no runc state for {id} before the delete");
    assert!(
        !integration::leaks::container_cgroups(d.namespace(), &id).is_empty(),
        "no cgroup for {id} before the delete"
    );
    assert_eq!(api.delete_task(&id), 5);
    let calls = stand.calls();
    assert!(
        !calls.iter().any(|c| c == "delete"),
        "the shim ran `runc delete`: {calls:?}"
    );
    assert!(!state.exists(), "runc's directory for {id} is left");
    assert_eq!(
        integration::leaks::container_cgroups(d.namespace(), &id),
        Vec::<PathBuf>::new(),
        "cgroups of {id} are left"
    );
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// Containers in another container's PID namespace are deleted by `runc delete`, which kills
/// what they leave behind there (here a background `sleep`, orphaned when its init exited).
fn shared_pid_namespace_is_deleted_by_runc(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let stand = Stand::new(d.dir(), "shared", Mode::Record);
    let out = d.dir().join("out-shared");
    let holder = container(&d, "holder", &out, "exec sleep 1000");
    let api = d.api();
    let holder_pid = stand.create(&api, &holder);
    api.start_task(&holder);
    let ns = format!("pid:/proc/{holder_pid}/ns/pid");
    let joiner = |prefix: &str, script: &str| {
        let id = container_with(&d, prefix, &["--with-ns", &ns], script);
        stand.create(&api, &id);
        api.start_task(&id);
        assert_eq!(api.wait(&id), 4);
        id
    };
    // Nothing left behind: only the shared namespace sends it to runc.
    let id = joiner("joiner", "exit 4");
    assert_eq!(api.delete_task(&id), 4);
    let calls = stand.calls();
    assert!(
        calls.iter().any(|c| c == "delete"),
        "the shim did not leave the shared PID namespace to `runc delete`: {calls:?}"
    );
    d.ctr().ok(&["containers", "rm", &id]);

    let id = joiner("orphan", "sleep 1000 & exit 4");
    assert!(
        !integration::leaks::container_processes(d.namespace(), &id).is_empty(),
        "the background sleep of {id} is not running"
    );
    assert_eq!(api.delete_task(&id), 4);
    assert_eq!(
        integration::leaks::container_processes(d.namespace(), &id),
        Vec::<u32>::new(),
        "the background sleep of {id} survived its delete"
    );
    d.ctr().ok(&["containers", "rm", &id]);
    api.kill(&holder, libc::SIGKILL as u32);
    assert_eq!(api.wait(&holder), 137);
    api.delete_task(&holder);
    d.ctr().ok(&["containers", "rm", &holder]);
    d.assert_no_leaks();
}

integration::runtime_tests!(
    @mod containerd_corral, Containerd, Corral,
    starts_without_runc_start, no_fifo_falls_back_to_runtime_start, dead_init_is_an_error,
    deletes_without_runc_delete, shared_pid_namespace_is_deleted_by_runc
);
integration::runtime_tests!(
    @mod corrald_corral, Corrald, Corral,
    starts_without_runc_start, no_fifo_falls_back_to_runtime_start, dead_init_is_an_error,
    deletes_without_runc_delete, shared_pid_namespace_is_deleted_by_runc
);
