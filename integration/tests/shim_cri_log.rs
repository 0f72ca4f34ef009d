//! `file:///path?format=cri`: our shim writes the container's output in the Kubernetes CRI log
//! format itself (what corral-cri asks for), under containerd 1.6 and under corrald
//! (`containerd::name`, `corrald::name`). containerd's own shim has no such format (it would
//! append raw bytes), so these run with our shim only.
//!
//! What is checked: records kubelet can parse, both streams in order, a 40 KiB line split at
//! 16 KiB, output left without a newline at exit as a partial record, a terminal's output as
//! `stdout`; kubelet's rotation (rename, then `Task.Update` with `io.corral.log.reopen`);
//! logging that goes on while the daemon is killed with SIGKILL; clear errors for bad URIs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration::{Containerd, Target, require_root, wait_until};
use protocol::annotations::LOG_REOPEN;
use protocol::grpc::client::Client;
use protocol::grpc::containerd::services::tasks::v1 as tasks;
use protocol::grpc::tonic;

const T: Duration = Duration::from_secs(30);
/// The longest content of a CRI record (the shim's `cri_log::MAX_LINE`).
const MAX_LINE: usize = 16 * 1024;

/// One test per daemon, always with our shim.
macro_rules! cri_log_tests {
    ($($name:ident),* $(,)?) => {
        mod containerd {
            $(#[test]
            fn $name() {
                super::$name(integration::Target {
                    daemon: integration::Daemon::Containerd,
                    runtime: integration::Runtime::Corral,
                })
            })*
        }
        mod corrald {
            $(#[test]
            fn $name() {
                super::$name(integration::Target::CORRAL)
            })*
        }
    };
}

/// One record of a CRI log.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    time: SystemTime,
    stream: String,
    tag: char,
    content: Vec<u8>,
}

/// Parses a UTC RFC3339Nano timestamp as Go writes it (`2006-01-02T15:04:05.999999999Z`),
/// insisting on the exact shape: `Z`, no trailing zeros in the fraction.
fn parse_time(s: &str) -> SystemTime {
    let b = s.as_bytes();
    let ok = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z');
    assert!(ok, "not an RFC3339 UTC timestamp: {s:?}");
    let num = |r: std::ops::Range<usize>| -> i64 {
        s[r].parse()
            .unwrap_or_else(|_| panic!("bad timestamp {s:?}"))
    };
    let days = protocol::logfmt::days_from_civil(num(0..4), num(5..7) as u32, num(8..10) as u32);
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    let mut nanos = 0u32;
    let frac = &s[19..s.len() - 1];
    if !frac.is_empty() {
        let digits = frac.strip_prefix('.').expect("fraction without a dot");
        assert!(
            (1..=9).contains(&digits.len()) && !digits.ends_with('0'),
            "fraction of {s:?} is not Go's RFC3339Nano"
        );
        nanos = format!("{digits:0<9}").parse().unwrap();
    }
    UNIX_EPOCH + Duration::new(secs as u64, nanos)
}

/// The complete records of a CRI log (a line still being written is left out). Panics on a
/// line kubelet could not parse.
fn records(path: &Path) -> Vec<Record> {
    let data = fs::read(path).unwrap_or_default();
    let complete = match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => &[][..],
    };
    complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.splitn(4, |b| *b == b' ');
            let mut field = || {
                String::from_utf8(f.next().expect("short record").to_vec())
                    .expect("header is not UTF-8")
            };
            let time = parse_time(&field());
            let stream = field();
            let tag = field();
            assert!(
                stream == "stdout" || stream == "stderr",
                "stream {stream:?} in {:?}",
                String::from_utf8_lossy(line)
            );
            assert!(tag == "F" || tag == "P", "tag {tag:?}");
            let content = f.next().expect("no content separator").to_vec();
            Record {
                time,
                stream,
                tag: tag.chars().next().unwrap(),
                content,
            }
        })
        .collect()
}

/// The contents of the full records of one stream, as text.
fn lines_of(recs: &[Record], stream: &str) -> Vec<String> {
    recs.iter()
        .filter(|r| r.stream == stream && r.tag == 'F')
        .map(|r| String::from_utf8_lossy(&r.content).into_owned())
        .collect()
}

fn has_line(path: &Path, stream: &str, line: &str) -> bool {
    lines_of(&records(path), stream).iter().any(|l| l == line)
}

fn wait_line(path: &Path, stream: &str, line: &str) {
    wait_until(
        &format!("{stream} line {line:?} in {}", path.display()),
        T,
        || has_line(path, stream, line).then_some(()),
    );
}

fn cri_uri(path: &Path) -> String {
    format!("file://{}?format=cri", path.display())
}

/// A directory for the logs, as kubelet makes `/var/log/pods/<pod>/<container>/`.
fn log_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    (dir, path)
}

/// A container that prints `usr1-out-<n>` and `usr1-err-<n>` (after a burst of `yes`
/// lines) each time it gets SIGUSR1. `wait` returns as soon as the trap runs.
const SIGNALLED: &str = "n=0; trap 'n=$((n+1)); yes burst-$n | head -n 2000; echo usr1-out-$n; \
                         echo usr1-err-$n >&2' USR1; echo ready; \
                         while :; do sleep 1 & wait $!; done";

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) of the container's init, whose pid the test just read.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "cannot signal pid {pid}");
}

/// A gRPC client of the daemon in the test's namespace, with a runtime to drive it.
struct Grpc {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Grpc {
    fn connect(d: &Containerd) -> Grpc {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(Client::connect(d.address(), d.namespace()))
            .expect("connect to the daemon");
        Grpc { rt, client }
    }

    fn update(&self, id: &str, annotations: &[(&str, &str)]) -> Result<(), tonic::Status> {
        let req = tasks::UpdateTaskRequest {
            container_id: id.into(),
            resources: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.rt
            .block_on(self.client.tasks().update(self.client.req(req)))
            .map(drop)
    }

    fn reopen(&self, id: &str) -> Result<(), tonic::Status> {
        self.update(id, &[(LOG_REOPEN, "1")])
    }

    fn start(&self, id: &str) -> Result<u32, tonic::Status> {
        let req = tasks::StartRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.rt
            .block_on(self.client.tasks().start(self.client.req(req)))
            .map(|r| r.into_inner().pid)
    }

    /// Task.Create of container `id` with these streams, on the container's snapshot
    /// (containerd 1.6 requires clients to send the rootfs mounts; ctr does the same).
    fn create(
        &self,
        id: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<u32, tonic::Status> {
        use protocol::grpc::containerd::services::containers::v1::GetContainerRequest;
        use protocol::grpc::containerd::services::snapshots::v1::MountsRequest;
        let c = &self.client;
        self.rt.block_on(async {
            let container = c
                .containers()
                .get(c.req(GetContainerRequest { id: id.into() }))
                .await
                .expect("get the container")
                .into_inner()
                .container
                .expect("a container");
            let mounts = c
                .snapshots()
                .mounts(c.req(MountsRequest {
                    snapshotter: container.snapshotter,
                    key: container.snapshot_key,
                }))
                .await
                .expect("the container's snapshot mounts")
                .into_inner()
                .mounts;
            let req = tasks::CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdout: stdout.into(),
                stderr: stderr.into(),
                terminal,
                ..Default::default()
            };
            c.tasks()
                .create(c.req(req))
                .await
                .map(|r| r.into_inner().pid)
        })
    }
}

/// Kills, waits for and deletes a running task, then removes every container of the test.
fn remove_all(d: &Containerd, running: &[&str]) {
    let ctr = d.ctr();
    for id in running {
        ctr.ok(&["tasks", "kill", "-s", "SIGKILL", id]);
        ctr.wait_task_status(id, "STOPPED", T);
        ctr.ok(&["tasks", "rm", id]);
    }
    for id in ctr.ok(&["containers", "ls", "-q"]).split_whitespace() {
        ctr.ok(&["containers", "rm", id]);
    }
}

/// Both streams, interleaved by the container, land in order per stream; output left without a
/// newline at exit is one partial record; timestamps are now, in UTC.
fn both_streams_in_order(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let (_dir, log) = log_dir();
    let id = d.new_id("cri");
    let before = SystemTime::now();
    let out = d.ctr_run(
        &["--rm", "--log-uri", &cri_uri(&log)],
        &id,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 300); do echo out-$i; echo err-$i >&2; done; echo; printf tail",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    let after = SystemTime::now();
    let recs = records(&log);
    let mut want_out: Vec<String> = (1..=300).map(|i| format!("out-{i}")).collect();
    want_out.push(String::new());
    let want_err: Vec<String> = (1..=300).map(|i| format!("err-{i}")).collect();
    assert_eq!(lines_of(&recs, "stdout"), want_out);
    assert_eq!(lines_of(&recs, "stderr"), want_err);
    let last_out = recs.iter().rfind(|r| r.stream == "stdout").unwrap();
    assert_eq!((last_out.tag, &last_out.content[..]), ('P', &b"tail"[..]));
    assert_eq!(recs.len(), 602, "unexpected records: {recs:?}");
    let slack = Duration::from_secs(2);
    for r in &recs {
        assert!(
            r.time + slack >= before && r.time <= after + slack,
            "timestamp {:?} outside the run ({before:?}..{after:?}): not now, or not UTC",
            r.time
        );
    }
    d.assert_no_leaks();
}

/// A 40 KiB line is two 16 KiB partial records and a full one with the rest; a line of exactly
/// 16 KiB is one full record.
fn long_line_is_split(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let (_dir, log) = log_dir();
    let id = d.new_id("crilong");
    let script = "head -c 40960 /dev/zero | tr '\\0' x >&2; echo >&2; \
                  head -c 16384 /dev/zero | tr '\\0' y; echo; echo short";
    let out = d.ctr_run(
        &["--rm", "--log-uri", &cri_uri(&log)],
        &id,
        &["sh", "-c", script],
    );
    assert!(out.success(), "{}", out.describe());
    let recs = records(&log);
    let err: Vec<(char, usize)> = recs
        .iter()
        .filter(|r| r.stream == "stderr")
        .map(|r| (r.tag, r.content.len()))
        .collect();
    assert_eq!(
        err,
        [
            ('P', MAX_LINE),
            ('P', MAX_LINE),
            ('F', 40960 - 2 * MAX_LINE)
        ]
    );
    let joined: Vec<u8> = recs
        .iter()
        .filter(|r| r.stream == "stderr")
        .flat_map(|r| r.content.iter().copied())
        .collect();
    assert_eq!(joined, vec![b'x'; 40960]);
    let out: Vec<(char, Vec<u8>)> = recs
        .iter()
        .filter(|r| r.stream == "stdout")
        .map(|r| (r.tag, r.content.clone()))
        .collect();
    assert_eq!(out, [('F', vec![b'y'; MAX_LINE]), ('F', b"short".to_vec())]);
    d.assert_no_leaks();
}

/// kubelet's rotation: the file is renamed (output keeps going to it), then the reopen
/// annotation makes the shim create a new file at the original path, which gets what follows.
/// An Update with nothing to do, or a reopen of a task without a CRI log, is refused.
fn reopen_after_rename(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let ctr = d.ctr();
    let (dir, log) = log_dir();
    let rotated = dir.path().join("0.log.20261201-100000");
    let id = d.new_id("crirot");
    let out = d.ctr_run(
        &["-d", "--log-uri", &cri_uri(&log)],
        &id,
        &["sh", "-c", SIGNALLED],
    );
    assert!(out.success(), "{}", out.describe());
    wait_line(&log, "stdout", "ready");
    let usr1 = |n: u32, path: &Path| {
        ctr.ok(&["tasks", "kill", "-s", "SIGUSR1", &id]);
        wait_line(path, "stdout", &format!("usr1-out-{n}"));
        wait_line(path, "stderr", &format!("usr1-err-{n}"));
    };
    usr1(1, &log);

    fs::rename(&log, &rotated).unwrap();
    // Until the reopen the shim still writes to the renamed file, as kubelet expects.
    usr1(2, &rotated);
    assert!(!log.exists());

    let grpc = Grpc::connect(&d);
    grpc.reopen(&id).expect("reopen the log");
    assert!(log.exists(), "the reopen did not create the file");
    usr1(3, &log);
    let new = records(&log);
    assert!(
        !lines_of(&new, "stdout").iter().any(|l| l.ends_with("-2")),
        "output from before the reopen in the new file"
    );
    assert_eq!(lines_of(&new, "stdout").len(), 2001, "{new:?}");
    let old = records(&rotated);
    assert!(!lines_of(&old, "stdout").iter().any(|l| l.ends_with("-3")));
    for n in 1..=2 {
        assert!(has_line(&rotated, "stderr", &format!("usr1-err-{n}")));
    }

    let e = grpc.update(&id, &[]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(LOG_REOPEN), "{e:?}");

    let plain = d.new_id("fifo");
    let out = d.ctr_run(&["-d"], &plain, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());
    let e = grpc.reopen(&plain).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no CRI log"), "{e:?}");

    remove_all(&d, &[&id, &plain]);
    d.assert_no_leaks();
}

/// The daemon is killed with SIGKILL: the container's output (a burst and two marker lines,
/// on a signal sent from the host) still reaches the log while it is down. After a restart the
/// log goes on and a reopen still works.
fn logging_goes_on_while_the_daemon_is_killed(t: Target) {
    if !require_root() {
        return;
    }
    let mut d = Containerd::start(t);
    let ctr = d.ctr().clone();
    let (dir, log) = log_dir();
    let id = d.new_id("crikill");
    let out = d.ctr_run(
        &["-d", "--log-uri", &cri_uri(&log)],
        &id,
        &["sh", "-c", SIGNALLED],
    );
    assert!(out.success(), "{}", out.describe());
    wait_line(&log, "stdout", "ready");
    let pid = ctr.task(&id).expect("task listed").pid;

    d.kill_9();
    signal(pid, libc::SIGUSR1);
    wait_line(&log, "stdout", "usr1-out-1");
    wait_line(&log, "stderr", "usr1-err-1");
    let recs = records(&log);
    let bursts = lines_of(&recs, "stdout")
        .iter()
        .filter(|l| *l == "burst-1")
        .count();
    assert_eq!(bursts, 2000, "burst lost while the daemon was down");

    d.restart();
    ctr.wait_task_status(&id, "RUNNING", T);
    ctr.ok(&["tasks", "kill", "-s", "SIGUSR1", &id]);
    wait_line(&log, "stderr", "usr1-err-2");
    let rotated = dir.path().join("0.log.1");
    fs::rename(&log, &rotated).unwrap();
    Grpc::connect(&d)
        .reopen(&id)
        .expect("reopen after a daemon restart");
    signal(pid, libc::SIGUSR1);
    wait_line(&log, "stdout", "usr1-out-3");
    assert!(!has_line(&rotated, "stdout", "usr1-out-3"));

    remove_all(&d, &[&id]);
    d.assert_no_leaks();
}

/// With a terminal there is one output: everything is `stdout`, and the terminal's `\r\n`
/// ends a line like `\n` (ctr ignores --log-uri with -t, so the task is created over gRPC).
fn terminal_output_is_stdout(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let ctr = d.ctr();
    let (_dir, log) = log_dir();
    let id = d.new_id("critty");
    ctr.ok(&[
        "containers",
        "create",
        "--runtime",
        t.runtime.name(),
        // ctr's flag parser would take the next word as the value of a bare `--tty`.
        "--tty=true",
        integration::IMAGE_REF,
        &id,
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; printf end",
    ]);
    let grpc = Grpc::connect(&d);
    let uri = cri_uri(&log);
    grpc.create(&id, &uri, &uri, true)
        .expect("create a task with a terminal and a CRI log");
    // Over gRPC too: `ctr tasks start` wants a console of its own for a tty container.
    grpc.start(&id).expect("start");
    wait_until("the terminal's output in the log", T, || {
        let recs = records(&log);
        recs.iter().any(|r| r.content == b"end").then_some(recs)
    });
    ctr.wait_task_status(&id, "STOPPED", T);
    let recs = records(&log);
    let got: Vec<(&str, char, &[u8])> = recs
        .iter()
        .map(|r| (r.stream.as_str(), r.tag, &r.content[..]))
        .collect();
    assert_eq!(
        got,
        [
            ("stdout", 'F', &b"to-out"[..]),
            ("stdout", 'F', &b"to-err"[..]),
            ("stdout", 'P', &b"end"[..]),
        ]
    );
    ctr.ok(&["tasks", "rm", &id]);
    ctr.ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

/// Bad CRI log URIs fail Create with InvalidArgument naming the problem, and leave nothing
/// behind: a missing directory (not created for the client), `max-size` with `format=cri`,
/// an unknown format, different URIs for the two streams.
fn bad_uris_are_refused(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    let ctr = d.ctr();
    let (dir, log) = log_dir();
    let id = d.new_id("cribad");
    ctr.ok(&[
        "containers",
        "create",
        "--runtime",
        t.runtime.name(),
        integration::IMAGE_REF,
        &id,
        "--",
        "true",
    ]);
    let grpc = Grpc::connect(&d);
    let missing = dir.path().join("nodir/0.log");
    let other = cri_uri(&dir.path().join("1.log"));
    let cases = [
        (cri_uri(&missing), cri_uri(&missing), "does not exist"),
        (
            format!("{}&max-size=1024", cri_uri(&log)),
            format!("{}&max-size=1024", cri_uri(&log)),
            "max-size",
        ),
        (
            format!("file://{}?format=json", log.display()),
            String::new(),
            "json",
        ),
        (cri_uri(&log), other, "1.log"),
    ];
    for (stdout, stderr, why) in cases {
        let e = grpc.create(&id, &stdout, &stderr, false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{stdout}: {e:?}");
        assert!(e.message().contains(why), "{stdout}: {e:?}");
        assert!(!missing.parent().unwrap().exists());
    }
    assert!(ctr.task(&id).is_none(), "a task was left behind");
    ctr.ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

cri_log_tests!(
    both_streams_in_order,
    long_line_is_split,
    reopen_after_rename,
    logging_goes_on_while_the_daemon_is_killed,
    terminal_output_is_stdout,
    bad_uris_are_refused,
);

#[test]
fn timestamps_parse_as_go_writes_them() {
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), UNIX_EPOCH);
    assert_eq!(
        parse_time("2016-10-06T00:17:09.669794202Z"),
        UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202)
    );
    assert_eq!(
        parse_time("2000-02-29T23:59:59.5Z"),
        UNIX_EPOCH + Duration::new(951_868_799, 500_000_000)
    );
    for bad in [
        "2016-10-06T00:17:09.6697942Z0",
        "2016-10-06T00:17:09.10Z",
        "2016-10-06T00:17:09+02:00",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_time(bad)).is_err(),
            "{bad}"
        );
    }
}
