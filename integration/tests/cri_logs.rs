//! CRI container logs written by our shim: they keep being written while corral-cri and
//! corrald are both down (the container never blocks on a pipe nobody reads, which is what
//! containerd issues #9342, #11511 and #11805 are about), no line is lost, and kubelet's
//! rotation (rename + ReopenContainerLog) gives a new file at the same path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::{CriNode, require_root, wait_until};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
/// How long both daemons stay down: the issue asks for a minute.
const OUTAGE: Duration = Duration::from_secs(60);
/// The longest the log may go without a new line while the daemons are down. The container
/// prints one every ~5 ms; this only allows for a loaded two-core machine.
const MAX_STALL: Duration = Duration::from_secs(3);

/// The complete lines of a CRI log (`<time> <stream> <P|F> <text>`; P fragments joined to the F
/// that ends them) of `stream`.
fn cri_lines(text: &str, stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(_time), Some(s), Some(tag)) = (f.next(), f.next(), f.next()) else {
            panic!("not a CRI log line: {line:?}");
        };
        let body = f.next().unwrap_or("");
        if s != stream {
            continue;
        }
        partial.push_str(body);
        match tag {
            "F" => out.push(std::mem::take(&mut partial)),
            "P" => {}
            _ => panic!("bad tag in CRI log line {line:?}"),
        }
    }
    out
}

/// The numbers the container printed, in file order, from the complete lines of `path`.
fn numbers(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The last line may be half written while we read: only newline-terminated ones count.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    cri_lines(complete, "stdout")
        .iter()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected log line {l:?}"))
        })
        .collect()
}

/// Asserts that `nums` is `from, from+1, ...` and returns the last.
fn assert_consecutive(nums: &[u64], from: u64, what: &str) -> u64 {
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(
            *n,
            from + i as u64,
            "{what}: line {i} is {n}, expected {} (lost or reordered lines)",
            from + i as u64
        );
    }
    from + nums.len() as u64 - 1
}

#[test]
fn logs_flow_through_a_minute_without_either_daemon_and_rotate() {
    if !require_root() {
        return;
    }
    let mut node = CriNode::start();
    let c = node.crictl();
    let pod_cfg = node.pod_config("chatty", json!({}));
    // ~100-byte numbered lines every few ms: a 64 KiB pipe that nobody drained would be full
    // in seconds.
    let pad = "x".repeat(90);
    let script =
        format!("i=0; while true; do i=$((i+1)); printf '%08d {pad}\\n' $i; sleep 0.005; done");
    let ctr_cfg = node.container_config("counter", &["sh", "-c", &script], json!({}));
    let (pod, id) = node.run_pod_with(&pod_cfg, &ctr_cfg);
    let log: PathBuf = node.dir().join("logs/chatty/counter.log");
    let status = node.container_status(&id);
    assert_eq!(status["logPath"], log.to_str().unwrap(), "{status}");
    wait_until("the first lines in the log", T, || {
        (numbers(&log).len() >= 20).then_some(())
    });

    node.kill_9();
    node.corrald_mut().kill_9();
    let down_at = Instant::now();
    let at_kill = numbers(&log).len();
    // The outage is the subject of this test, so it lasts its minute; meanwhile the log is
    // watched for lines arriving without either daemon.
    let mut last_count = at_kill;
    let mut last_growth = Instant::now();
    let mut longest_stall = Duration::ZERO;
    while down_at.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(250));
        let n = numbers(&log).len();
        if n > last_count {
            last_count = n;
            last_growth = Instant::now();
        }
        longest_stall = longest_stall.max(last_growth.elapsed());
        assert!(
            longest_stall < MAX_STALL,
            "no new log line for {longest_stall:?} while the daemons were down \
             ({last_count} lines, {at_kill} at the kill)"
        );
    }
    let during = last_count - at_kill;
    let outage = down_at.elapsed();
    eprintln!(
        "{during} lines in {outage:?} without the daemons ({:.0}/s), longest stall {longest_stall:?}",
        during as f64 / outage.as_secs_f64()
    );
    // One line per ~5 ms plus a fork of sleep: even a slow machine manages 10 a second.
    assert!(
        during as f64 >= 10.0 * outage.as_secs_f64(),
        "only {during} lines in {outage:?}"
    );

    node.corrald_mut().restart();
    node.restart();
    let st = node.wait_container_state(&id, "CONTAINER_RUNNING");
    assert_eq!(st["logPath"], log.to_str().unwrap(), "{st}");
    let tail = c.ok(&["logs", "--tail", "3", &id]);
    let tail_lines: Vec<&str> = tail.lines().collect();
    assert_eq!(tail_lines.len(), 3, "{tail}");
    for l in tail_lines {
        assert!(l.ends_with(&pad) && l.len() == 8 + 1 + pad.len(), "{l:?}");
    }

    // kubelet's rotation: rename, then ReopenContainerLog; the shim opens a new file.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    node.reopen_container_log(&id)
        .unwrap_or_else(|e| panic!("ReopenContainerLog: {e:?}"));
    wait_until("lines in the reopened log", T, || {
        (numbers(&log).len() >= 20).then_some(())
    });
    c.ok(&["stop", "-t", "1", &id]);
    node.wait_container_state(&id, "CONTAINER_EXITED");

    let first = numbers(&rotated);
    let second = numbers(&log);
    let last = assert_consecutive(&first, 1, "the log before rotation");
    assert!(
        first.len() > at_kill + during,
        "the rotated log has {} lines, fewer than the {} seen before the restart",
        first.len(),
        at_kill + during
    );
    let end = assert_consecutive(&second, last + 1, "the log after rotation");
    eprintln!(
        "{} lines before rotation, {} after, none lost",
        first.len(),
        end - last
    );

    // A stopped container's reopen is refused: nobody writes its log any more.
    let e = node.reopen_container_log(&id).unwrap_err();
    assert_eq!(
        e.code(),
        protocol::grpc::tonic::Code::FailedPrecondition,
        "{e:?}"
    );

    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
    let address = node.corrald().address();
    wait_until("every shim (log writer) to exit", T, || {
        integration::leaks::daemon_shim_processes(&address, "k8s.io")
            .is_empty()
            .then_some(())
    });
}
