//! `crictl stats`, `crictl statsp` and `crictl events` against corral-cri on a private node:
//! the numbers come from corrald's task metrics and the snapshotter, the events from
//! corral-cri's own lifecycle changes.

use std::io::BufReader;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use integration::{CriNode, require_root, wait_until};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// A JSON number that crictl may print as a string (64-bit values in protojson).
fn num(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn stats_and_statsp_report_cpu_memory_and_the_writable_layer() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let pod_cfg = node.pod_config("measured", json!({}));
    // Half a MiB in the writable layer, some CPU, then idle.
    let ctr_cfg = node.container_config(
        "busy",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/fill bs=1024 count=512 && i=0; \
             while [ $i -lt 20000 ]; do i=$((i+1)); done; echo filled; exec sleep 1000",
        ],
        json!({}),
    );
    let (pod, id) = node.run_pod_with(&pod_cfg, &ctr_cfg);
    wait_until("the container to fill its layer", T, || {
        let out = c.run(&["logs", &id]);
        out.stdout.contains("filled").then_some(())
    });

    let v = c.json(&["stats", "--id", &id]);
    let stats = v["stats"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["attributes"]["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("no stats for {id}: {v}"))
        .clone();
    assert!(
        num(&stats["cpu"]["usageCoreNanoSeconds"]["value"]) > 0,
        "cpu: {stats}"
    );
    assert!(
        num(&stats["memory"]["workingSetBytes"]["value"]) > 0,
        "memory: {stats}"
    );
    let layer = num(&stats["writableLayer"]["usedBytes"]["value"]);
    assert!(layer >= 512 * 1024, "writable layer {layer} bytes: {stats}");
    assert_eq!(stats["attributes"]["metadata"]["name"], "busy", "{stats}");

    let v = c.json(&["statsp", "--id", &pod]);
    let ps = v["stats"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["attributes"]["id"] == pod.as_str()))
        .unwrap_or_else(|| panic!("no pod stats for {pod}: {v}"))
        .clone();
    let linux = &ps["linux"];
    assert!(
        num(&linux["cpu"]["usageCoreNanoSeconds"]["value"]) > 0,
        "pod cpu: {ps}"
    );
    assert!(
        num(&linux["memory"]["workingSetBytes"]["value"]) > 0,
        "pod memory: {ps}"
    );
    let containers = linux["containers"].as_array().cloned().unwrap_or_default();
    assert!(
        containers
            .iter()
            .any(|s| s["attributes"]["id"] == id.as_str()),
        "the pod's stats lack its container: {ps}"
    );
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
}

/// `crictl events` running in the background; its JSON objects arrive on a channel.
struct EventsWatch {
    child: std::process::Child,
    rx: mpsc::Receiver<Value>,
}

impl EventsWatch {
    fn start(node: &CriNode) -> EventsWatch {
        let mut cmd = node.crictl().command(&["events", "-o", "json"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start crictl events");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(out));
            for v in stream.into_iter::<Value>() {
                let Ok(v) = v else { return };
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        EventsWatch { child, rx }
    }

    /// The next event about `id`, skipping others; None after `timeout`.
    fn next_for(&self, id: &str, timeout: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(v) if v["containerId"] == id => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for EventsWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_arrive_in_lifecycle_order() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let events = EventsWatch::start(&node);
    let pod_cfg = node.pod_config("watched", json!({}));
    // crictl gives no sign of having subscribed: a pod whose creation it did not see was run
    // before it had, and is replaced by another until one is seen.
    let pod = wait_until("crictl events to see a pod created", T, || {
        let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
        match events.next_for(&pod, Duration::from_secs(3)) {
            Some(e) => {
                assert_eq!(e["containerEventType"], "CONTAINER_CREATED_EVENT", "{e}");
                Some(pod)
            }
            None => {
                c.ok(&["stopp", &pod]);
                c.ok(&["rmp", &pod]);
                None
            }
        }
    });
    let e = events.next_for(&pod, T).expect("the pod's start event");
    assert_eq!(e["containerEventType"], "CONTAINER_STARTED_EVENT", "{e}");
    assert_eq!(e["podSandboxStatus"]["state"], "SANDBOX_READY", "{e}");

    let ctr_cfg = node.container_config("app", &["sleep", "1000"], json!({}));
    let id = c.ok(&[
        "create",
        &pod,
        ctr_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &id]);
    c.ok(&["stop", "-t", "1", &id]);
    c.ok(&["rm", &id]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = events
            .next_for(&id, T)
            .unwrap_or_else(|| panic!("events of {id} after {seen:?}"));
        assert_eq!(e["podSandboxStatus"]["id"], pod.as_str(), "{e}");
        seen.push((
            e["containerEventType"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            e["containersStatuses"][0]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    let want = [
        ("CONTAINER_CREATED_EVENT", "CONTAINER_CREATED"),
        ("CONTAINER_STARTED_EVENT", "CONTAINER_RUNNING"),
        ("CONTAINER_STOPPED_EVENT", "CONTAINER_EXITED"),
        ("CONTAINER_DELETED_EVENT", "CONTAINER_EXITED"),
    ];
    let seen_ref: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(seen_ref, want);

    c.ok(&["stopp", &pod]);
    let e = events.next_for(&pod, T).expect("the pod's stop event");
    assert_eq!(e["containerEventType"], "CONTAINER_STOPPED_EVENT", "{e}");
    c.ok(&["rmp", &pod]);
    let e = events.next_for(&pod, T).expect("the pod's delete event");
    assert_eq!(e["containerEventType"], "CONTAINER_DELETED_EVENT", "{e}");
}
