//! corrald's own recovery guarantees, with both shims (`corrald_runc::`, `corrald_corral::`):
//! after a kill -9 of corrald every task is found again by asking its shim — running ones
//! keep running, ones that ended while corrald was down (exited, killed from the host, or whose
//! shim died) are STOPPED with their exit status — and a corrald killed over and over while
//! containers are being created leaves no shim without a task and nothing behind.
//!
//! The plain lifecycle (run, exec, tty, ps, pause, metrics, kill, events, shim kill -9) runs
//! against corrald through the `shim_*` suites, which cover both daemons.

use std::path::Path;
use std::time::Duration;

use integration::{
    Containerd, EventStream, Target, corrald_runtime_tests, leaks, require_root, wait_until,
};

const T: Duration = Duration::from_secs(30);

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) of a pid the test just read (a container init or a shim).
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "cannot signal pid {pid}");
}

/// kill -9 corrald with 10 running containers; while it is down one container exits (7), one
/// is SIGKILLed from the host (137) and one loses its shim (SIGKILL). After the restart the 10
/// are RUNNING with the same pids and accept exec; the other three are STOPPED and `ctr tasks
/// rm` reports their exit status.
fn kill9_with_running_exited_and_dead(t: Target) {
    if !require_root() {
        return;
    }
    let mut d = Containerd::start(t);
    let sleepers: Vec<String> = (0..10).map(|_| d.new_id("live")).collect();
    for id in &sleepers {
        let out = d.ctr_run(&["-d"], id, &["sleep", "1000"]);
        assert!(out.success(), "{}", out.describe());
    }
    let exiter = d.new_id("exit7");
    let script = "trap 'exit 7' TERM; touch /tmp/trap-set; sleep 1000 & wait";
    assert!(d.ctr_run(&["-d"], &exiter, &["sh", "-c", script]).success());
    let host_killed = d.new_id("hostkill");
    assert!(
        d.ctr_run(&["-d"], &host_killed, &["sleep", "1000"])
            .success()
    );
    let orphaned = d.new_id("shimkill");
    assert!(d.ctr_run(&["-d"], &orphaned, &["sleep", "1000"]).success());

    let ctr = d.ctr().clone();
    let before = ctr.tasks();
    let pid_of = |id: &str| before.iter().find(|t| t.id == id).map(|t| t.pid).unwrap();
    wait_until("the exiter's trap", T, || {
        let p = pid_of(&exiter);
        Path::new(&format!("/proc/{p}/root/tmp/trap-set"))
            .exists()
            .then_some(())
    });
    let shim = leaks::serving_shim(d.namespace(), &orphaned).expect("shim of the orphan");

    d.kill_9();
    kill(pid_of(&exiter), libc::SIGTERM);
    kill(pid_of(&host_killed), libc::SIGKILL);
    kill(shim.pid, libc::SIGKILL);
    for id in [&exiter, &host_killed] {
        let p = pid_of(id);
        wait_until("the process to exit and be reaped", T, || {
            process_gone(p).then_some(())
        });
    }
    wait_until("the killed shim to be gone", T, || {
        process_gone(shim.pid).then_some(())
    });

    d.restart();
    let after = ctr.tasks();
    for id in &sleepers {
        let t = after.iter().find(|t| &t.id == id);
        assert!(
            t.is_some_and(|t| t.status == "RUNNING" && t.pid == pid_of(id)),
            "{id} after restart: {t:?}"
        );
    }
    for id in [&exiter, &host_killed, &orphaned] {
        let t = after.iter().find(|t| &t.id == id);
        assert!(
            t.is_some_and(|t| t.status == "STOPPED"),
            "{id} after restart: {t:?}"
        );
    }
    // The orphan's container process went with its shim's delete action.
    wait_until("the orphan's container to be gone", T, || {
        process_gone(pid_of(&orphaned)).then_some(())
    });

    let out = d.ctr_exec(&[], &sleepers[3], "after", &["sh", "-c", "exit 5"]);
    assert_eq!(out.code(), Some(5), "{}", out.describe());

    for (id, code) in [(&exiter, 7), (&host_killed, 137), (&orphaned, 137)] {
        let out = ctr.run(&["tasks", "rm", id]);
        assert!(out.success(), "{}", out.describe());
        assert!(
            out.stderr.contains(&format!("exit code {code}")),
            "tasks rm {id} did not report {code}: {}",
            out.describe()
        );
    }
    for id in &sleepers {
        ctr.ok(&["tasks", "kill", "-s", "SIGKILL", id]);
        ctr.wait_task_status(id, "STOPPED", T);
        ctr.ok(&["tasks", "rm", id]);
    }
    for id in d.ids() {
        ctr.ok(&["containers", "rm", &id]);
    }
    d.assert_no_leaks();
}

/// corrald is killed (SIGKILL) at different points while four containers are being created,
/// five times over. Afterwards every listed task answers `tasks ps`, every shim serves a listed
/// task, and once everything is removed no shim, mount, bundle or runc state is left.
fn kill9_while_creating(t: Target) {
    if !require_root() {
        return;
    }
    let mut d = Containerd::start(t);
    let ns = d.namespace().to_string();
    let ctr = d.ctr().with_timeout(Duration::from_secs(60));
    for round in 0..5u32 {
        let ids: Vec<String> = (0..4).map(|_| d.new_id(&format!("r{round}"))).collect();
        let sessions: Vec<_> = ids
            .iter()
            .map(|id| ctr.spawn(&d.run_args(&["-d"], id, &["sleep", "1000"])))
            .collect();
        // Each round kills at a different stage: as soon as a shim is being started, once a
        // shim serves, or after a delay that lands in Create/Start.
        let shims = |serving: bool| {
            leaks::shim_processes(&ns, None)
                .into_iter()
                .filter(|p| !serving || p.action().is_none())
                .filter(|p| {
                    leaks::flag_value(&p.args, "id").is_some_and(|id| ids.iter().any(|x| x == id))
                })
                .count()
        };
        match round {
            0 => wait_until("a shim being started", T, || {
                (shims(false) > 0).then_some(())
            }),
            1 => wait_until("a serving shim", T, || (shims(true) > 0).then_some(())),
            2 => wait_until("two serving shims", T, || (shims(true) > 1).then_some(())),
            _ => std::thread::sleep(Duration::from_millis(60 * u64::from(round))),
        }
        d.kill_9();
        drop(sessions);
        d.restart();

        // Every task answers, and every shim of ours serves a listed task.
        let tasks = ctr.tasks();
        for task in &tasks {
            let out = ctr.run(&["tasks", "ps", &task.id]);
            assert!(
                out.success() || task.status == "STOPPED",
                "task {} ({}) does not answer: {}",
                task.id,
                task.status,
                out.describe()
            );
        }
        let listed: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        wait_until("every shim to serve a listed task", T, || {
            let strays: Vec<String> = leaks::shim_processes(&ns, None)
                .into_iter()
                .filter_map(|p| leaks::flag_value(&p.args, "id").map(str::to_string))
                .filter(|id| !listed.contains(&id.as_str()))
                .collect();
            strays.is_empty().then_some(())
        });
    }

    for task in ctr.tasks() {
        if task.status != "STOPPED" {
            ctr.ok(&["tasks", "kill", "-s", "SIGKILL", &task.id]);
            ctr.wait_task_status(&task.id, "STOPPED", T);
        }
        ctr.ok(&["tasks", "rm", &task.id]);
    }
    for id in ctr.ok(&["containers", "ls", "-q"]).split_whitespace() {
        ctr.ok(&["containers", "rm", id]);
    }
    d.assert_no_leaks();
}

fn with_namespace<T>(ns: &str, m: T) -> protocol::grpc::tonic::Request<T> {
    let mut r = protocol::grpc::tonic::Request::new(m);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

/// Over the raw gRPC API: a task created without rootfs mounts gets its container's snapshot
/// (containerd requires clients to send them); the error codes clients rely on.
fn grpc_create_without_rootfs_and_error_codes(t: Target) {
    use protocol::grpc::containerd::services::tasks::v1 as tasks;
    use protocol::grpc::tonic;
    use tasks::tasks_client::TasksClient;

    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let ctr = d.ctr();
    let id = d.new_id("raw");
    ctr.ok(&[
        "containers",
        "create",
        "--runtime",
        t.runtime.name(),
        integration::IMAGE_REF,
        &id,
        "--",
        "sh",
        "-c",
        "test -x /bin/busybox && exit 3",
    ]);
    let ns = d.namespace().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = protocol::grpc::unix::connect(&d.address())
            .await
            .expect("connect to corrald");
        let mut client = TasksClient::new(channel);
        let created = client
            .create(with_namespace(
                &ns,
                tasks::CreateTaskRequest {
                    container_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("create without rootfs")
            .into_inner();
        assert!(created.pid > 0);
        let again = client
            .create(with_namespace(
                &ns,
                tasks::CreateTaskRequest {
                    container_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        client
            .start(with_namespace(
                &ns,
                tasks::StartRequest {
                    container_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("start");
        let waited = client
            .wait(with_namespace(
                &ns,
                tasks::WaitRequest {
                    container_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("wait")
            .into_inner();
        assert_eq!(waited.exit_status, 3, "the rootfs was the image's");
        let deleted = client
            .delete(with_namespace(
                &ns,
                tasks::DeleteTaskRequest {
                    container_id: id.clone(),
                },
            ))
            .await
            .expect("delete")
            .into_inner();
        assert_eq!(deleted.exit_status, 3);
        for (what, e) in [
            (
                "get of a deleted task",
                client
                    .get(with_namespace(
                        &ns,
                        tasks::GetRequest {
                            container_id: id.clone(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err(),
            ),
            (
                "kill of a deleted task",
                client
                    .kill(with_namespace(
                        &ns,
                        tasks::KillRequest {
                            container_id: id.clone(),
                            signal: 9,
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err(),
            ),
            (
                "create for a missing container",
                client
                    .create(with_namespace(
                        &ns,
                        tasks::CreateTaskRequest {
                            container_id: "nosuch".into(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err(),
            ),
        ] {
            assert_eq!(e.code(), tonic::Code::NotFound, "{what}: {e:?}");
        }
        let e = client
            .checkpoint(with_namespace(
                &ns,
                tasks::CheckpointTaskRequest {
                    container_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        let e = client
            .create(with_namespace(
                &ns,
                tasks::CreateTaskRequest {
                    container_id: "../x".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    ctr.ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// A container that exits while corrald is down: its shim delivers the exit once corrald is
/// back, before any client has subscribed again. corrald replays the task events of the
/// outage to every subscriber that comes within a minute of its restart, so a client that
/// resubscribes after its reconnect backoff (dockerd does, about a second later) still learns
/// that the container stopped.
fn outage_exit_reaches_a_late_subscriber(t: Target) {
    if !require_root() {
        return;
    }
    let mut d = Containerd::start(t);
    let victim = d.new_id("victim");
    assert!(d.ctr_run(&["-d"], &victim, &["sleep", "1000"]).success());
    let pid = d.ctr().task(&victim).expect("task listed").pid;

    d.kill_9();
    kill(pid, libc::SIGKILL);
    wait_until("the container to exit and be reaped", T, || {
        process_gone(pid).then_some(())
    });
    d.restart();
    // The shim's retry delivers the exit; only then does the subscriber come.
    let received = format!("event {} /tasks/exit", d.namespace());
    wait_until("corrald to receive the exit", T, || {
        d.log_tail(500).contains(&received).then_some(())
    });
    let filter = format!("namespace=={}", d.namespace());
    let events = EventStream::spawn(d.ctr(), &[&filter]);
    let exit = events.wait_for("the held /tasks/exit", T, |evs| {
        evs.iter()
            .find(|e| e.topic == "/tasks/exit" && e.container_id() == Some(victim.as_str()))
            .cloned()
    });
    assert_eq!(exit.u64_field("exit_status"), 137, "{}", exit.payload);
    drop(events);

    let ctr = d.ctr();
    ctr.ok(&["tasks", "rm", &victim]);
    ctr.ok(&["containers", "rm", &victim]);
    d.assert_no_leaks();
}

/// A process that outgrows its memory limit within milliseconds of `runc start` is killed
/// before its shim arms the OOM eventfd, so the shim reports no OOM; corrald, reading the
/// cgroup's OOM-kill counter when the exit comes, publishes /tasks/oom ahead of /tasks/exit
/// (dockerd sets OOMKilled only from an OOM that precedes the exit). Three runs: the shims
/// miss one in three or so by themselves.
fn immediate_oom_is_reported_before_the_exit(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let events = EventStream::start(&d);
    let limit = (8u64 << 20).to_string();
    let hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
    for _ in 0..3 {
        let id = d.new_id("oom");
        let out = d.ctr_run(&["--rm", "--memory-limit", &limit], &id, &hog);
        assert_eq!(out.code(), Some(137), "{}", out.describe());
        let topics = events.wait_for("the container's exit", T, |evs| {
            let mine: Vec<&str> = evs
                .iter()
                .filter(|e| e.container_id() == Some(id.as_str()))
                .map(|e| e.topic.as_str())
                .collect();
            mine.contains(&"/tasks/exit")
                .then(|| mine.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        });
        let oom = topics.iter().position(|t| t == "/tasks/oom");
        let exit = topics.iter().position(|t| t == "/tasks/exit");
        assert!(
            oom.is_some() && oom < exit,
            "{id}: no /tasks/oom before /tasks/exit: {topics:?}"
        );
    }
    drop(events);
    d.assert_no_leaks();
}

corrald_runtime_tests!(
    immediate_oom_is_reported_before_the_exit,
    outage_exit_reaches_a_late_subscriber,
    kill9_with_running_exited_and_dead,
    kill9_while_creating,
    grpc_create_without_rootfs_and_error_codes,
);
