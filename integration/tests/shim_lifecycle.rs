//! Task lifecycle through real containerd 1.6 and ctr, for each shim (runc-v2 and corral):
//! run/exit codes/output, detached tasks with exec, ps, pause/resume, metrics, kill and delete,
//! terminals, and 50 containers in parallel with the event stream checked for ordering.

use std::collections::HashMap;
use std::time::Duration;

use integration::pty::PtySession;
use integration::{Containerd, EventStream, Target, require_root, runtime_tests};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(30);

fn setup(rt: Target) -> Option<Containerd> {
    if !require_root() {
        return None;
    }
    Some(Containerd::start(rt))
}

/// Runs ctr with `args` whose process prints, then blocks on `read`: waits until `done` holds
/// for the output, lets the process go on, and returns ctr's result. (ctr 1.6 may lose output
/// still in flight when it sees the exit; see `integration::ctr`.)
fn dialogue(
    ctrd: &Containerd,
    args: &[String],
    what: &str,
    done: impl FnMut(&[u8], &[u8]) -> bool,
) -> integration::CtrOutput {
    let mut session = ctrd.ctr().spawn(args);
    session.wait_output(what, T, done);
    session.send_line("go");
    session.finish()
}

/// `ctr run --rm` relays stdout and stderr separately and exits with the container's code; the
/// container is gone afterwards.
fn run_rm_output_and_exit_code(rt: Target) {
    let Some(ctrd) = setup(rt) else { return };
    let id = ctrd.new_id("run");
    let script = "echo hi; echo oops >&2; read x; exit 3";
    let args = ctrd.run_args(&["--rm"], &id, &["sh", "-c", script]);
    let out = dialogue(&ctrd, &args, "hi and oops", |o, e| {
        o == b"hi\n" && String::from_utf8_lossy(e).contains("oops")
    });
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert_eq!(out.stdout_str(), "hi\n", "{}", out.describe());
    assert!(out.stderr.contains("oops"), "{}", out.describe());

    let out = ctrd.ctr_run(&["--rm"], &ctrd.new_id("run"), &["true"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());

    assert!(ctrd.ctr().tasks().is_empty());
    let containers = ctrd.ctr().ok(&["containers", "ls", "-q"]);
    assert!(
        containers.trim().is_empty(),
        "containers left: {containers}"
    );
    ctrd.assert_no_leaks();
}

/// ~10.9 MB of distinct lines (`seq`) arrive complete and in order.
fn large_output_arrives_intact(rt: Target) {
    let Some(ctrd) = setup(rt) else { return };
    const N: u32 = 1_500_000;
    let expected: String = (1..=N).map(|i| format!("{i}\n")).collect();
    let id = ctrd.new_id("big");
    let script = format!("seq 1 {N}; read x");
    let args = ctrd.run_args(&["--rm"], &id, &["sh", "-c", &script]);
    let out = dialogue(&ctrd, &args, "all of seq's output", |o, _| {
        o.len() >= expected.len()
    });
    assert_eq!(out.code(), Some(0), "ctr failed: {}", out.stderr);
    if out.stdout != expected.as_bytes() {
        let first_diff = out
            .stdout
            .iter()
            .zip(expected.as_bytes())
            .position(|(a, b)| a != b);
        let tail = &out.stdout[out.stdout.len().saturating_sub(64)..];
        panic!(
            "output differs: {} bytes, expected {}; first differing byte: {first_diff:?}; \
             last bytes: {:?}; sha256 {} vs {}; stderr: {}",
            out.stdout.len(),
            expected.len(),
            String::from_utf8_lossy(tail),
            hex::encode(Sha256::digest(&out.stdout)),
            hex::encode(Sha256::digest(expected.as_bytes())),
            out.stderr
        );
    }
    ctrd.assert_no_leaks();
}

/// Detached task: ls, exec with and without a terminal, ps, pause/resume, metrics, SIGKILL, and
/// delete reporting 137.
fn detached_task_lifecycle(rt: Target) {
    let Some(ctrd) = setup(rt) else { return };
    let ctr = ctrd.ctr();
    let id = ctrd.new_id("det");
    let out = ctrd.ctr_run(&["-d"], &id, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());

    let task = ctr.task(&id).expect("task listed after run -d");
    assert_eq!(task.status, "RUNNING");
    assert!(task.pid > 0);
    // Start may return before the init has exec'd the command (it is `runc init` until then):
    // `runc start` does; our shim, which releases the init itself, waits for the exec.
    let init_cmdline = format!("/proc/{}/cmdline", task.pid);
    let mut seen = Vec::new();
    let became_sleep = integration::try_wait_until(T, || {
        seen = std::fs::read(&init_cmdline).unwrap_or_default();
        (seen == b"sleep\x001000\x00").then_some(())
    });
    assert!(
        became_sleep.is_some(),
        "pid {} is not the container's init: cmdline {:?}",
        task.pid,
        String::from_utf8_lossy(&seen)
    );

    // exec without a terminal: separate streams, exit code.
    let script = "echo out; echo err >&2; read x; exit 5";
    let args = ctrd.exec_args(&[], &id, "e1", &["sh", "-c", script]);
    let out = dialogue(&ctrd, &args, "out and err", |o, e| {
        o == b"out\n" && String::from_utf8_lossy(e).contains("err")
    });
    assert_eq!(out.code(), Some(5), "{}", out.describe());
    assert_eq!(out.stdout_str(), "out\n", "{}", out.describe());
    assert!(out.stderr.contains("err"), "{}", out.describe());
    // The exec id is free again once ctr deleted the finished exec; the exec shares the init's
    // pid namespace.
    let args = ctrd.exec_args(&[], &id, "e1", &["sh", "-c", "cat /proc/1/cmdline; read x"]);
    let out = dialogue(&ctrd, &args, "pid 1's cmdline", |o, _| {
        o.len() >= b"sleep\x001000\x00".len()
    });
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout, b"sleep\x001000\x00");

    // exec with a terminal. The process waits for typed input before exiting: the reference
    // shim can lose the last output of a terminal process that exits at once (seen ~1 in 200
    // under load), and a typed line also checks stdin through the terminal.
    let cmd = ctr.command(&ctrd.exec_args(&["-t"], &id, "e2", &["sh", "-c", TTY_SCRIPT]));
    let out = terminal_session(cmd, 6);
    assert!(out.contains("/dev/pts/"), "no tty in: {out:?}");

    // ps lists the init pid.
    let ps = ctr.ok(&["tasks", "ps", &id]);
    assert!(
        ps.lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&task.pid.to_string())),
        "init pid {} not in `tasks ps`:\n{ps}",
        task.pid
    );

    // pause / resume.
    ctr.ok(&["tasks", "pause", &id]);
    assert_eq!(ctr.task(&id).unwrap().status, "PAUSED");
    ctr.ok(&["tasks", "resume", &id]);
    assert_eq!(ctr.task(&id).unwrap().status, "RUNNING");

    // metrics: a memory usage line with a non-zero value and some cpu line.
    let metrics = ctr.ok(&["tasks", "metrics", &id]);
    let value_of = |prefix: &str| {
        metrics.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            let name = cols.next()?;
            name.starts_with(prefix)
                .then(|| cols.next().unwrap_or("").to_string())
        })
    };
    let mem: u64 = value_of("memory.usage")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memory.usage line in metrics:\n{metrics}"));
    assert!(mem > 0, "memory usage 0 in metrics:\n{metrics}");
    assert!(
        value_of("cpu").is_some(),
        "no cpu line in metrics:\n{metrics}"
    );

    // SIGKILL → STOPPED → delete reports 137.
    ctr.ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
    ctr.wait_task_status(&id, "STOPPED", T);
    let out = ctr.run(&["tasks", "rm", &id]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("exit code 137"),
        "tasks rm did not report 137: {}",
        out.describe()
    );
    assert!(ctr.task(&id).is_none(), "task still listed after rm");
    ctr.ok(&["containers", "rm", &id]);
    ctrd.assert_no_leaks();
}

/// `ctr run -t` under a terminal: the container gets a /dev/pts terminal of ctr's size (24×80,
/// relayed by ResizePty), typed input arrives, and the exit code passes.
fn run_with_terminal(rt: Target) {
    let Some(ctrd) = setup(rt) else { return };
    let id = ctrd.new_id("tty");
    let cmd = ctrd
        .ctr()
        .command(&ctrd.run_args(&["-t", "--rm"], &id, &["sh", "-c", TTY_SCRIPT]));
    let out = terminal_session(cmd, 6);
    assert!(out.contains("/dev/pts/"), "no tty in: {out:?}");
    ctrd.assert_no_leaks();
}

/// Prints its tty, waits until the terminal has the size of ours (ctr sends ResizePty right
/// after Start, asynchronously to the process), then reads a line and exits 6 if it was "hello".
const TTY_SCRIPT: &str = "tty; while [ \"$(stty size)\" != '24 80' ]; do sleep 0.05; done; \
                          echo size-ok; read x; [ \"$x\" = hello ] && exit 6; exit 1";

/// Runs `cmd` (a ctr with `-t`) on a pty with [`TTY_SCRIPT`] inside; returns the terminal output.
fn terminal_session(cmd: std::process::Command, expected_code: i32) -> String {
    let mut s = PtySession::spawn(cmd).expect("run ctr under a pty");
    assert!(
        s.expect("size-ok", T),
        "container terminal never reported size 24x80 (ResizePty): {:?}",
        s.text()
    );
    s.send(b"hello\r").expect("type into the terminal");
    let out = s.finish(T).expect("wait for ctr");
    let text = out.text();
    assert!(!out.timed_out, "ctr -t timed out: {text:?}");
    assert_eq!(out.status.code(), Some(expected_code), "{text:?}");
    text
}

/// 50 `ctr run --rm … true` at once; for each container the event stream shows
/// create < start < exit < delete, each exactly once, with consistent pids and status 0.
fn parallel_short_containers_with_events(rt: Target) {
    let Some(ctrd) = setup(rt) else { return };
    const N: usize = 50;
    let events = EventStream::start(&ctrd);
    let ids: Vec<String> = (0..N).map(|_| ctrd.new_id("par")).collect();
    let ctrd_ref = &ctrd;
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(move || ctrd_ref.ctr_run(&["--rm"], id, &["true"])))
            .collect();
        for h in handles {
            let out = h.join().expect("runner thread panicked");
            assert_eq!(out.code(), Some(0), "{}", out.describe());
        }
    });

    const TOPICS: [&str; 4] = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let evs = events.wait_for("a /tasks/delete event per container", T, |evs| {
        let deleted = evs
            .iter()
            .filter(|e| e.topic == "/tasks/delete")
            .filter(|e| e.container_id().is_some_and(|c| ids.iter().any(|i| i == c)))
            .count();
        (deleted >= N).then(|| evs.to_vec())
    });
    let mut per_id: HashMap<&str, Vec<&integration::Event>> = HashMap::new();
    for e in evs.iter().filter(|e| TOPICS.contains(&e.topic.as_str())) {
        if let Some(c) = e.container_id() {
            per_id.entry(c).or_default().push(e);
        }
    }
    for id in &ids {
        let seq = per_id.get(id.as_str()).cloned().unwrap_or_default();
        let topics: Vec<&str> = seq.iter().map(|e| e.topic.as_str()).collect();
        assert_eq!(topics, TOPICS, "event order for {id}");
        let pid = seq[0].u64_field("pid");
        assert!(pid > 0, "create event without pid for {id}");
        for e in &seq {
            assert_eq!(
                e.u64_field("pid"),
                pid,
                "pid differs in {} for {id}",
                e.topic
            );
            assert_eq!(
                e.u64_field("exit_status"),
                0,
                "{} of {id}: {}",
                e.topic,
                e.payload
            );
        }
        assert_eq!(
            seq[2].payload["id"],
            id.as_str(),
            "exit event names the init process"
        );
    }
    drop(events);
    ctrd.assert_no_leaks();
}

runtime_tests!(
    run_rm_output_and_exit_code,
    large_output_arrives_intact,
    detached_task_lifecycle,
    run_with_terminal,
    parallel_short_containers_with_events,
);
