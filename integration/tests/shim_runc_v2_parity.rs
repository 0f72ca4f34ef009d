//! Where a shim must behave as containerd's runc-v2 shim, as containerd 1.6's own client tests
//! check (issue 13, cause 6): the shim joins the cgroup given as runc options' `shim_cgroup`
//! (TestShimInCgroup), and killing a container's init kills its other processes, with or
//! without a pid namespace of its own (TestContainerKillInitPidHost,
//! TestContainerKillInitKillsChildWhenNotHostPid). Each runs against containerd 1.6 and
//! corrald, with runc-v2 (the reference) and with our shim.
//!
//! Tasks are created through the gRPC API ([`integration::Api`]): `ctr` can neither pass
//! `shim_cgroup` nor drop the pid namespace from a spec.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use integration::cgroups::{self, TestCgroup};
use integration::{Containerd, IMAGE_REF, Runtime, Target, api, leaks, require_root};
use integration::{runtime_tests, unique_namespace, wait_until};
use protocol::grpc::prost_types;
use protocol::options::Options;

const T: Duration = Duration::from_secs(30);

/// `ctr containers create` of `command` with the target's runtime (ctr takes a command without
/// `--` before it for a spec file).
fn create_container(d: &Containerd, id: &str, command: &[&str]) {
    let mut args = vec![
        "containers",
        "create",
        "--runtime",
        d.runtime().name(),
        IMAGE_REF,
        id,
        "--",
    ];
    args.extend(command);
    d.ctr().ok(&args);
}

/// SIGKILL, Wait (137), Delete, and the container removed.
fn kill_and_remove(d: &Containerd, api: &integration::Api, id: &str) {
    api.kill(id, libc::SIGKILL as u32);
    assert_eq!(api.wait(id), 137);
    api.delete_task(id);
    d.ctr().ok(&["containers", "rm", id]);
}

/// A cgroup path of our own for a shim: `/corral-it-<unique>/shim`.
fn shim_cgroup() -> TestCgroup {
    TestCgroup::create(&format!("/corral-it-{}/shim", unique_namespace()))
}

/// `containerd.linux.runc.CreateOptions` with `shim_cgroup` (field 9): what containerd 1.6's Go
/// client (`WithShimCgroup`) sends to a runtime not named `io.containerd.runc.*`.
fn legacy_create_options(shim_cgroup: &str) -> prost_types::Any {
    let mut value = Vec::new();
    {
        let mut os = protobuf::CodedOutputStream::vec(&mut value);
        os.write_string(9, shim_cgroup).unwrap();
        os.flush().unwrap();
    }
    prost_types::Any {
        type_url: "containerd.linux.runc.CreateOptions".into(),
        value,
    }
}

/// Creates a task of a new `sleep` container with `options`, and checks that its shim is in
/// `cg` in every hierarchy and that the container's own process is not.
fn shim_lands_in(d: &Containerd, cg: &TestCgroup, options: prost_types::Any, what: &str) {
    let id = d.new_id("shimcg");
    create_container(d, &id, &["sleep", "1000"]);
    let api = d.api();
    let init = api
        .create_task(&id, Some(options))
        .unwrap_or_else(|e| panic!("create with {what}: {e}"));
    let shim = leaks::serving_shim(d.namespace(), &id).expect("the task's serving shim");
    let outside = cg.dirs_without(shim.pid);
    assert!(
        outside.is_empty(),
        "{what}: shim {} is not in {outside:?}; its cgroups:\n{}",
        shim.pid,
        fs::read_to_string(format!("/proc/{}/cgroup", shim.pid)).unwrap_or_default()
    );
    for dir in cg.dirs() {
        assert!(
            !cgroups::procs(dir).contains(&init),
            "{what}: the container's init {init} is in the shim's cgroup {}",
            dir.display()
        );
    }
    api.start_task(&id);
    kill_and_remove(d, &api, &id);
}

/// TestShimInCgroup: the shim serves from the cgroup named in the runc options, whichever of
/// the two option types containerd's client sends.
fn shim_cgroup_holds_the_shim(t: Target) {
    if !require_root() {
        return;
    }
    // Made before the daemon, so it is removed after the daemon's guard killed any shim.
    let cg = shim_cgroup();
    let d = Containerd::start(t);
    let opts = Options {
        shim_cgroup: cg.path().to_string(),
        ..Default::default()
    };
    shim_lands_in(
        &d,
        &cg,
        api::runc_options(&opts),
        "containerd.runc.v1.Options",
    );
    if t.runtime == Runtime::Corral {
        // runc-v2 accepts only containerd.runc.v1.Options (any other type makes its Create
        // fail), and containerd's client never sends it another: for a runc runtime it sends
        // those. For ours it sends the legacy type.
        shim_lands_in(
            &d,
            &cg,
            legacy_create_options(cg.path()),
            "containerd.linux.runc.CreateOptions",
        );
    }
    d.assert_no_leaks();
}

/// A shim cgroup that exists nowhere fails the task's creation with an error naming it, and
/// leaves nothing behind; the container can still get a task afterwards.
fn missing_shim_cgroup_fails_create(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let id = d.new_id("nocg");
    create_container(&d, &id, &["sleep", "1000"]);
    let missing = format!("/corral-it-{}/absent", unique_namespace());
    let opts = Options {
        shim_cgroup: missing.clone(),
        ..Default::default()
    };
    let api = d.api();
    let err = api
        .create_task(&id, Some(api::runc_options(&opts)))
        .expect_err("a task whose shim cgroup does not exist");
    assert!(
        err.message().contains(&missing),
        "the error does not name the cgroup {missing}: {err:?}"
    );
    wait_until("the failed shim to be gone", T, || {
        leaks::shim_processes(d.namespace(), Some(&id))
            .is_empty()
            .then_some(())
    });
    api.create_task(&id, None).expect("a task without options");
    api.start_task(&id);
    kill_and_remove(&d, &api, &id);
    d.assert_no_leaks();
}

/// True when `pid` is gone, a zombie, or has SIGKILL pending: killed, whether or not the kernel
/// has finished taking it down.
fn killed(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    if field("State:").starts_with(['Z', 'X']) {
        return true;
    }
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    ["SigPnd:", "ShdPnd:"]
        .iter()
        .any(|f| u64::from_str_radix(&field(f), 16).is_ok_and(|mask| mask & sigkill != 0))
}

/// Writes a runc stand-in into the daemon's directory that delays `runc kill --all` by a
/// second, then runs the real runc. A fault injected on purpose, not a synchronisation: a shim
/// that reports the init's exit before it has killed the children is then caught every time,
/// not only when the test happens to look before `runc kill --all` got there.
fn runc_with_slow_kill_all(d: &Containerd) -> String {
    let runc = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("runc"))
        .find(|p| p.is_file())
        .expect("runc on PATH");
    let script = format!(
        "#!/bin/sh\n\
         for a in \"$@\"; do [ \"$a\" = --all ] && sleep 1; done\n\
         exec {} \"$@\"\n",
        runc.display()
    );
    let path = d.dir().join("runc-slow-kill-all");
    fs::write(&path, script).expect("write the runc stand-in");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

/// initContainerAndCheckChildrenDieOnKill: the init (`sh`) has two `sleep 1000` children; it
/// is SIGKILLed. When Wait reports its exit, the children are killed too, with or without a
/// pid namespace of the container's own (without one, only the shim can kill them, with
/// `runc kill --all`, which is made slow here: see [`runc_with_slow_kill_all`]).
fn kill_init_kills_children(t: Target, host_pid: bool) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let id = d.new_id(if host_pid { "pidhost" } else { "pidns" });
    let options = api::runc_options(&Options {
        binary_name: runc_with_slow_kill_all(&d),
        ..Default::default()
    });
    create_container(&d, &id, &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    let api = d.api();
    if host_pid {
        // oci.WithHostNamespace(specs.PIDNamespace): no pid namespace in the spec at all.
        api.edit_spec(&id, |spec| {
            let namespaces = spec["linux"]["namespaces"]
                .as_array_mut()
                .expect("the spec lists namespaces");
            let before = namespaces.len();
            namespaces.retain(|n| n["type"] != "pid");
            assert_eq!(namespaces.len(), before - 1, "the spec had a pid namespace");
        });
    }
    let init = api.create_task(&id, Some(options)).expect("create");
    api.start_task(&id);
    let ns = d.namespace().to_string();
    let children = wait_until("the init's two sleeps", T, || {
        let sleeps: Vec<u32> = leaks::container_processes(&ns, &id)
            .into_iter()
            .filter(|&p| p != init)
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x001000\x00")
            })
            .collect();
        (sleeps.len() == 2).then_some(sleeps)
    });

    api.kill(&id, libc::SIGKILL as u32);
    assert_eq!(api.wait(&id), 137);
    let alive: Vec<u32> = children.iter().copied().filter(|&p| !killed(p)).collect();
    assert!(
        alive.is_empty(),
        "Wait reported the init's exit while its children {alive:?} were still running"
    );
    wait_until("the children to be reaped", T, || {
        children
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    api.delete_task(&id);
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// TestContainerKillInitPidHost.
fn kill_init_kills_children_host_pid(t: Target) {
    kill_init_kills_children(t, true);
}

/// TestContainerKillInitKillsChildWhenNotHostPid.
fn kill_init_kills_children_private_pid(t: Target) {
    kill_init_kills_children(t, false);
}

runtime_tests!(
    shim_cgroup_holds_the_shim,
    missing_shim_cgroup_fails_create,
    kill_init_kills_children_host_pid,
    kill_init_kills_children_private_pid,
);
