//! Docker Engine on corrald: Debian's dockerd 20.10 (`--containerd <corrald socket>
//! --live-restore`) drives containers through corrald as through containerd 1.6, and the tests
//! drive dockerd only through the `docker` CLI. Two things containerd 1.6 gets right only most
//! of the time are checked against corrald alone: an exit while the daemon is down, and an OOM
//! kill within milliseconds of the start. Each test has its own corrald (or, for the
//! comparisons, containerd) and dockerd on private paths (see `integration::docker`).
//!
//! Containers that must stop quickly or be told when to exit run [`LONG`]-style commands: a
//! shell that traps SIGTERM and says `ready` once the trap is set (a signal before that would be
//! ignored by the container's pid 1).

use std::time::{Duration, SystemTime};

use integration::docker::{IMAGE, wait_process_gone};
use integration::pty::{PtySession, run_in_pty};
use integration::{Daemon, Docker, DockerOutput, Runtime, require_root, wait_until};

/// Exits 0 on SIGTERM, prints `ready` once it would.
const LONG: &str = "trap 'exit 0' TERM; echo ready; sleep 1000 & wait";
const T: Duration = Duration::from_secs(30);

/// `docker run --network none <flags…> IMAGE <command…>`.
fn run(d: &Docker, flags: &[&str], command: &[&str]) -> DockerOutput {
    d.run(&run_args(flags, command))
}

fn run_args<'a>(flags: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--network", "none"];
    args.extend_from_slice(flags);
    args.push(IMAGE);
    args.extend_from_slice(command);
    args
}

/// `docker run -d --name <name> <flags…> IMAGE sh -c <script>`, then waits until its log says
/// `ready`.
fn run_ready(d: &Docker, name: &str, flags: &[&str], script: &str) -> String {
    let mut f = vec!["-d", "--name", name];
    f.extend_from_slice(flags);
    let out = run(d, &f, &["sh", "-c", script]);
    assert!(out.success(), "{}", out.describe());
    wait_logs(d, name, "ready");
    out.stdout.trim().to_string()
}

fn wait_logs(d: &Docker, name: &str, needle: &str) {
    wait_until(&format!("{needle:?} in the log of {name}"), T, || {
        let out = d.run(&["logs", name]);
        out.stdout.contains(needle).then_some(())
    });
}

fn sigterm(pid: u32) {
    assert!(pid > 0);
    // SAFETY: plain kill(2) of a container process whose pid dockerd just reported.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// run (exit codes, stdout/stderr, a missing executable), run -t, run -i, run -d, ps, logs, top,
/// exec (-t, -i, exit codes), pause/unpause, update --memory, stats, restart, stop, events, rm.
#[test]
fn container_lifecycle() {
    if !require_root() {
        return;
    }
    let d = Docker::start(Daemon::Corrald);
    let t0 = SystemTime::now();

    let out = run(
        &d,
        &["--rm"],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "out\n", "{}", out.describe());
    assert!(out.stderr.contains("err"), "{}", out.describe());

    // runc's "no such file" in Create becomes 127, as on containerd.
    let out = run(&d, &["--rm"], &["/nonexistent"]);
    assert_eq!(out.code(), Some(127), "{}", out.describe());
    assert!(
        out.stderr.contains("no such file or directory"),
        "{}",
        out.describe()
    );

    let tty = run_in_pty(
        d.command(&run_args(
            &["-t", "--rm"],
            &["sh", "-c", "tty; test -t 0 && echo interactive; exit 4"],
        )),
        T,
    )
    .expect("run docker in a pty");
    assert!(!tty.timed_out, "{}", tty.text());
    assert_eq!(tty.status.code(), Some(4), "{}", tty.text());
    assert!(tty.text().contains("/dev/pts/"), "{}", tty.text());
    assert!(tty.text().contains("interactive"), "{}", tty.text());

    let out = d.run_with_input(
        &run_args(&["-i", "--rm"], &["sh", "-c", "wc -c; exit 5"]),
        b"hello docker\n",
    );
    assert_eq!(out.code(), Some(5), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "13", "{}", out.describe());

    let id = run_ready(&d, "life", &[], LONG);
    let ps = d.ok(&[
        "ps",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Names}} {{.Status}}",
    ]);
    assert!(ps.contains(&format!("{id} life Up")), "{ps}");
    let top = d.ok(&["top", "life"]);
    assert!(top.contains("sleep 1000"), "{top}");

    assert_eq!(d.ok(&["exec", "life", "echo", "in exec"]), "in exec");
    let out = d.run(&["exec", "life", "sh", "-c", "exit 6"]);
    assert_eq!(out.code(), Some(6), "{}", out.describe());
    let out = d.run_with_input(&["exec", "-i", "life", "cat"], b"through exec\n");
    assert_eq!(out.stdout, "through exec\n", "{}", out.describe());
    let tty = run_in_pty(
        d.command(&["exec", "-t", "life", "sh", "-c", "tty; exit 8"]),
        T,
    )
    .expect("run docker in a pty");
    assert_eq!(tty.status.code(), Some(8), "{}", tty.text());
    assert!(tty.text().contains("/dev/pts/"), "{}", tty.text());

    d.ok(&["pause", "life"]);
    assert_eq!(d.inspect("life", "{{.State.Status}}"), "paused");
    let freezer = format!(
        "/sys/fs/cgroup/freezer/{}/{id}/freezer.state",
        d.cgroup_parent()
    );
    assert_eq!(
        std::fs::read_to_string(&freezer).unwrap_or_default().trim(),
        "FROZEN"
    );
    let out = d.run(&["exec", "life", "true"]);
    assert!(
        !out.success() && out.stderr.contains("paused"),
        "{}",
        out.describe()
    );
    d.ok(&["unpause", "life"]);
    assert_eq!(d.inspect("life", "{{.State.Status}}"), "running");
    d.ok(&["exec", "life", "true"]);

    d.ok(&["update", "--memory", "64m", "--memory-swap", "128m", "life"]);
    assert_eq!(d.inspect("life", "{{.HostConfig.Memory}}"), "67108864");
    let limit = d.memory_cgroup(&id).join("memory.limit_in_bytes");
    assert_eq!(
        std::fs::read_to_string(&limit).unwrap_or_default().trim(),
        "67108864"
    );
    let stats = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}|{{.PIDs}}",
        "life",
    ]);
    let (mem, pids) = stats.split_once('|').expect("two fields");
    assert!(mem.ends_with("/ 64MiB"), "{stats}");
    assert!(pids.parse::<u32>().unwrap_or(0) >= 2, "{stats}");

    let pid = d.pid("life");
    d.ok(&["restart", "life"]);
    wait_logs(&d, "life", "ready\nready");
    let pid2 = d.pid("life");
    assert!(pid2 != 0 && pid2 != pid, "pid {pid} → {pid2}");

    d.ok(&["stop", "life"]);
    assert_eq!(
        d.inspect("life", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );

    let events = d.events_since("life", t0);
    for want in [
        "create",
        "start",
        "exec_start: echo in exec",
        "pause",
        "unpause",
        "update",
        "restart",
        "die",
        "stop",
    ] {
        assert!(
            events.iter().any(|e| e == want),
            "no {want:?} in {events:?}"
        );
    }

    d.ok(&["rm", "life"]);
    assert!(!d.run(&["inspect", "life"]).success());
    d.assert_no_leaks();
}

/// docker attach with stdin, and a health check that goes unhealthy → healthy → unhealthy
/// (each check is an exec through corrald).
#[test]
fn attach_and_health_check() {
    if !require_root() {
        return;
    }
    let d = Docker::start(Daemon::Corrald);

    run_ready(
        &d,
        "att",
        &["-i"],
        "echo ready; read line; echo got $line; exit 9",
    );
    // On a terminal, so that attach's stdin stays open until the answer came (docker attach
    // ends its output stream as soon as its stdin ends, with containerd as with corrald).
    let mut att = PtySession::spawn(d.command(&["attach", "att"])).expect("spawn docker attach");
    att.send(b"ping\n").expect("type into docker attach");
    assert!(att.expect("got ping", T), "{}", att.text());
    let out = att.finish(T).expect("docker attach ends");
    assert_eq!(out.status.code(), Some(9), "{}", out.text());
    assert_eq!(
        d.inspect("att", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 9"
    );

    run_ready(
        &d,
        "hc",
        &[
            "--health-cmd",
            "test -e /tmp/healthy",
            "--health-interval",
            "200ms",
            "--health-retries",
            "1",
        ],
        LONG,
    );
    let health = "{{.State.Health.Status}}";
    d.wait_inspect("hc", health, "unhealthy", T);
    d.ok(&["exec", "hc", "touch", "/tmp/healthy"]);
    d.wait_inspect("hc", health, "healthy", T);
    d.ok(&["exec", "hc", "rm", "/tmp/healthy"]);
    d.wait_inspect("hc", health, "unhealthy", T);

    d.ok(&["rm", "-f", "att", "hc"]);
    d.assert_no_leaks();
}

/// With --live-restore, the backend daemon is killed with SIGKILL while containers run, one
/// container exits during the outage, and the daemon comes back: dockerd sees that exit with its
/// code, exec, run --rm and stop work, and `--restart always` still restarts a container.
///
/// The exit during the outage reaches dockerd through the shim, which delivers it as soon as
/// the daemon answers, while dockerd subscribes again only after its reconnect backoff (about a
/// second). corrald replays the task events of the outage to every client that subscribes
/// within a minute of its restart; containerd 1.6 does
/// not and loses the exit now and then (dockerd then shows the container running forever), so
/// against containerd that one check is left out.
fn live_restore_across_backend_kill9(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let mut d = Docker::start(daemon);
    run_ready(&d, "long", &[], LONG);
    run_ready(
        &d,
        "exiter",
        &[],
        "trap 'exit 7' TERM; echo ready; sleep 1000 & wait",
    );
    run_ready(
        &d,
        "always",
        &["--restart", "always"],
        "trap 'exit 3' TERM; echo ready; sleep 1000 & wait",
    );
    let exiter = d.pid("exiter");
    let always = d.pid("always");

    d.kill_9_backend();
    sigterm(exiter);
    // Reaped by its shim, which holds the exit until the daemon is back.
    wait_process_gone(exiter, T);
    d.restart_backend();
    // dockerd reconnects after its backoff; until then its calls fail with "unavailable" (on
    // containerd as on corrald).
    wait_until("dockerd to reach the daemon again", T, || {
        d.run(&["exec", "long", "true"]).success().then_some(())
    });

    if daemon == Daemon::Corrald {
        d.wait_inspect(
            "exiter",
            "{{.State.Status}} {{.State.ExitCode}}",
            "exited 7",
            T,
        );
    }
    assert_eq!(d.ok(&["exec", "long", "echo", "after"]), "after");
    let out = run(&d, &["--rm"], &["sh", "-c", "echo fresh; exit 4"]);
    assert_eq!(out.code(), Some(4), "{}", out.describe());
    assert_eq!(out.stdout, "fresh\n", "{}", out.describe());

    sigterm(always);
    d.wait_inspect("always", "{{.RestartCount}}", "1", T);
    d.wait_inspect("always", "{{.State.Status}}", "running", T);
    assert_ne!(d.pid("always"), always);

    d.ok(&["stop", "long"]);
    assert_eq!(
        d.inspect("long", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );
    d.ok(&["rm", "-f", "long", "exiter", "always"]);
    d.assert_no_leaks();
}

#[test]
fn corrald_kill9_with_live_restore() {
    live_restore_across_backend_kill9(Daemon::Corrald);
}

#[test]
fn containerd_kill9_with_live_restore() {
    live_restore_across_backend_kill9(Daemon::Containerd);
}

/// dockerd restarted (SIGTERM, --live-restore) with running containers: they keep running and
/// serve exec and logs; one that exits while dockerd is down is seen as exited with its code;
/// stop still works afterwards.
#[test]
fn dockerd_restart_keeps_containers() {
    if !require_root() {
        return;
    }
    let mut d = Docker::start(Daemon::Corrald);
    run_ready(&d, "keep", &[], LONG);
    run_ready(
        &d,
        "gone",
        &[],
        "trap 'exit 5' TERM; echo ready; sleep 1000 & wait",
    );
    let keep = d.pid("keep");
    let gone = d.pid("gone");

    d.stop_dockerd();
    sigterm(gone);
    wait_process_gone(gone, T);
    d.restart_dockerd();

    assert_eq!(d.pid("keep"), keep);
    assert_eq!(d.inspect("keep", "{{.State.Status}}"), "running");
    assert_eq!(d.ok(&["exec", "keep", "echo", "still here"]), "still here");
    d.wait_inspect(
        "gone",
        "{{.State.Status}} {{.State.ExitCode}}",
        "exited 5",
        T,
    );
    d.ok(&["stop", "keep"]);
    assert_eq!(
        d.inspect("keep", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );
    d.ok(&["rm", "keep", "gone"]);
    d.assert_no_leaks();
}

/// A container that outgrows its memory limit after it started is reported OOMKilled, with an
/// `oom` event, on both daemons. One that hits the limit within milliseconds of `runc start`
/// is killed before containerd's runc shim arms its OOM eventfd, and the shim reports no OOM:
/// on containerd 1.6 dockerd then says OOMKilled=false now and then (2 to 4 runs in 10 here);
/// corrald reads the cgroup's OOM-kill counter when the exit comes and reports the OOM first,
/// so that case is checked against corrald only.
fn oom_killed_is_reported(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = Docker::start(daemon);
    let t0 = SystemTime::now();
    run_ready(
        &d,
        "oom",
        &["-m", "8m", "--memory-swap", "8m"],
        "trap 'x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done' USR1; echo ready; \
         sleep 1000 & wait",
    );
    d.ok(&["kill", "-s", "USR1", "oom"]);
    d.wait_inspect("oom", "{{.State.Status}}", "exited", T);
    assert_eq!(
        d.inspect("oom", "{{.State.OOMKilled}} {{.State.ExitCode}}"),
        "true 137"
    );
    let events = d.events_since("oom", t0);
    assert!(events.iter().any(|e| e == "oom"), "{events:?}");
    d.ok(&["rm", "oom"]);

    if daemon == Daemon::Corrald {
        // Three times: the shim alone misses this one in three or so.
        for i in 0..3 {
            let name = format!("quick{i}");
            let t1 = SystemTime::now();
            let out = run(
                &d,
                &["--name", &name, "-m", "8m", "--memory-swap", "8m"],
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            );
            assert_eq!(out.code(), Some(137), "{}", out.describe());
            assert_eq!(
                d.inspect(&name, "{{.State.OOMKilled}} {{.State.ExitCode}}"),
                "true 137"
            );
            let events = d.events_since(&name, t1);
            assert!(events.iter().any(|e| e == "oom"), "{events:?}");
            d.ok(&["rm", &name]);
        }
    }
    d.assert_no_leaks();
}

#[test]
fn corrald_reports_oom_kill() {
    oom_killed_is_reported(Daemon::Corrald);
}

#[test]
fn containerd_reports_oom_kill() {
    oom_killed_is_reported(Daemon::Containerd);
}

/// corrald's runtime mapping of `io.containerd.runc.v2` (which dockerd 20.10 always asks for)
/// gives dockerd's containers our shim: run, exec -t, pause, an OOM at once, kill -9 of corrald
/// with an exit during the outage, stop.
#[test]
fn dockerd_on_our_shim() {
    if !require_root() {
        return;
    }
    let mut d = Docker::start_with(Daemon::Corrald, Runtime::Corral);
    let out = run(&d, &["--rm"], &["sh", "-c", "echo out; exit 3"]);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "out\n", "{}", out.describe());

    run_ready(&d, "ours", &[], LONG);
    let shims = d.shims();
    assert!(
        !shims.is_empty()
            && shims
                .iter()
                .all(|p| p.args[0].ends_with(Runtime::Corral.binary_name())),
        "{:?}",
        shims.iter().map(|p| &p.args).collect::<Vec<_>>()
    );
    let tty = run_in_pty(
        d.command(&["exec", "-t", "ours", "sh", "-c", "tty; exit 8"]),
        T,
    )
    .expect("run docker in a pty");
    assert_eq!(tty.status.code(), Some(8), "{}", tty.text());
    assert!(tty.text().contains("/dev/pts/"), "{}", tty.text());
    d.ok(&["pause", "ours"]);
    assert_eq!(d.inspect("ours", "{{.State.Status}}"), "paused");
    d.ok(&["unpause", "ours"]);
    assert_eq!(d.ok(&["exec", "ours", "echo", "back"]), "back");

    let out = run(
        &d,
        &["--name", "quick", "-m", "8m", "--memory-swap", "8m"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert_eq!(out.code(), Some(137), "{}", out.describe());
    assert_eq!(
        d.inspect("quick", "{{.State.OOMKilled}} {{.State.ExitCode}}"),
        "true 137"
    );

    run_ready(
        &d,
        "exiter",
        &[],
        "trap 'exit 7' TERM; echo ready; sleep 1000 & wait",
    );
    let exiter = d.pid("exiter");
    d.kill_9_backend();
    sigterm(exiter);
    wait_process_gone(exiter, T);
    d.restart_backend();
    wait_until("dockerd to reach corrald again", T, || {
        d.run(&["exec", "ours", "true"]).success().then_some(())
    });
    d.wait_inspect(
        "exiter",
        "{{.State.Status}} {{.State.ExitCode}}",
        "exited 7",
        T,
    );

    d.ok(&["stop", "ours"]);
    assert_eq!(
        d.inspect("ours", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );
    d.ok(&["rm", "ours", "quick", "exiter"]);
    d.assert_no_leaks();
}
