//! corral-cri driven by the real crictl (cri-tools v1.36.0) on a private node: corrald,
//! corral-cri, a CNI bridge of its own, our pause image and the busybox test image.

use std::time::Duration;

use integration::{ContainerdCri, CriNode, CriOptions, IMAGE_REF, require_root, wait_until};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// A pod's and a container's state as crictl prints them.
fn pod_state(node: &CriNode, pod: &str) -> String {
    let v = node.crictl().json(&["inspectp", pod]);
    v["status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn container_status(node: &CriNode, id: &str) -> Value {
    node.crictl().json(&["inspect", id])["status"].clone()
}

fn wait_state(node: &CriNode, id: &str, state: &str) -> Value {
    wait_until(&format!("container {id} {state}"), T, || {
        let s = container_status(node, id);
        (s["state"] == state).then_some(s)
    })
}

/// Waits until no shim of the node's daemon runs (a shim exits just after its task's delete).
fn assert_no_shims(node: &CriNode) {
    let address = node.corrald().address();
    wait_until("every shim to exit", T, || {
        integration::leaks::daemon_shim_processes(&address, "k8s.io")
            .is_empty()
            .then_some(())
    });
}

fn netns_entries(node: &CriNode) -> Vec<String> {
    std::fs::read_dir(node.root().join("netns"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pod_and_container_lifecycle() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();

    let v = c.ok(&["version"]);
    assert!(v.contains("RuntimeName:  corral"), "{v}");
    let info = c.json(&["info"]);
    let conditions = info["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for cond in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conditions
                .iter()
                .any(|x| x["type"] == cond && x["status"] == true),
            "{cond} not true: {info}"
        );
    }

    let pod_cfg = node.pod_config("web", json!({ "hostname": "web-host" }));
    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    assert_eq!(pod.len(), 64, "pod id {pod:?}");
    assert_eq!(pod_state(&node, &pod), "SANDBOX_READY");
    let inspect = c.json(&["inspectp", &pod]);
    let ip = inspect["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let prefix = node.subnet().trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "pod ip {ip:?} not in {}",
        node.subnet()
    );
    assert_eq!(
        netns_entries(&node).len(),
        1,
        "one network namespace per pod"
    );

    let ctr_cfg = node.container_config(
        "app",
        &["sh", "-c", "echo hello from app; hostname; exec sleep 1000"],
        json!({}),
    );
    let id = c.ok(&[
        "create",
        &pod,
        ctr_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    assert_eq!(container_status(&node, &id)["state"], "CONTAINER_CREATED");
    c.ok(&["start", &id]);
    wait_state(&node, &id, "CONTAINER_RUNNING");

    let logs = wait_until("the container's log", T, || {
        let out = c.run(&["logs", &id]);
        (out.success() && out.stdout.contains("web-host")).then_some(out.stdout)
    });
    assert!(logs.contains("hello from app"), "{logs}");

    let out = c.ok(&["exec", "-s", &id, "sh", "-c", "echo exec $((6*7))"]);
    assert_eq!(out, "exec 42");
    let failed = c.run(&["exec", "-s", &id, "sh", "-c", "exit 3"]);
    assert!(!failed.success(), "{}", failed.describe());

    // The pod's network: loopback up and an address on eth0 inside the container.
    let addrs = c.ok(&["exec", "-s", &id, "cat", "/proc/net/fib_trie"]);
    assert!(
        addrs.contains(&ip),
        "{ip} not in the container's addresses:\n{addrs}"
    );

    let ps = c.ok(&["ps", "-q", "--pod", &pod]);
    assert_eq!(ps, id);

    c.ok(&["stop", "-t", "2", &id]);
    let st = wait_state(&node, &id, "CONTAINER_EXITED");
    assert!(st["exitCode"].as_i64().is_some(), "{st}");
    c.ok(&["rm", &id]);
    let gone = c.run(&["inspect", &id]);
    assert!(!gone.success(), "{}", gone.describe());

    c.ok(&["stopp", &pod]);
    assert_eq!(pod_state(&node, &pod), "SANDBOX_NOTREADY");
    c.ok(&["stopp", &pod]); // idempotent
    c.ok(&["rmp", &pod]);
    assert!(c.ok(&["pods", "-q"]).is_empty());
    assert!(
        netns_entries(&node).is_empty(),
        "{:?}",
        netns_entries(&node)
    );
    let ctr = node.corrald().ctr_in("k8s.io");
    assert!(ctr.ok(&["containers", "ls", "-q"]).is_empty());
    assert!(ctr.ok(&["tasks", "ls", "-q"]).is_empty());
    assert_no_shims(&node);
}

#[test]
fn pods_survive_kill_9_of_corral_cri_and_corrald() {
    if !require_root() {
        return;
    }
    let mut node = CriNode::start();
    let c = node.crictl();
    let pod_cfg = node.pod_config("survivor", json!({}));
    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    // `stays` runs through everything; `quits` exits with 7 on SIGUSR1, sent while both
    // daemons are down.
    let stays = node.container_config("stays", &["sleep", "1000"], json!({}));
    let quits = node.container_config(
        "quits",
        &[
            "sh",
            "-c",
            "trap 'exit 7' USR1; while true; do sleep 0.1; done",
        ],
        json!({}),
    );
    let pod_arg = pod_cfg.to_str().unwrap();
    let stays = c.ok(&["create", &pod, stays.to_str().unwrap(), pod_arg]);
    let quits = c.ok(&["create", &pod, quits.to_str().unwrap(), pod_arg]);
    c.ok(&["start", &stays]);
    c.ok(&["start", &quits]);
    wait_state(&node, &quits, "CONTAINER_RUNNING");
    let quits_pid = node
        .corrald()
        .ctr_in("k8s.io")
        .tasks()
        .into_iter()
        .find(|t| t.id == quits)
        .map(|t| t.pid)
        .expect("quits has a task");

    // corral-cri alone.
    node.kill_9();
    node.restart();
    assert_eq!(pod_state(&node, &pod), "SANDBOX_READY");
    wait_state(&node, &stays, "CONTAINER_RUNNING");

    // Both, and an exit while they are down.
    node.kill_9();
    node.corrald_mut().kill_9();
    // SAFETY: kill(2) of the container's shell, a pid the test read from corrald.
    assert_eq!(
        unsafe { libc::kill(quits_pid as libc::pid_t, libc::SIGUSR1) },
        0
    );
    node.corrald_mut().restart();
    node.restart();
    assert_eq!(pod_state(&node, &pod), "SANDBOX_READY");
    wait_state(&node, &stays, "CONTAINER_RUNNING");
    let st = wait_state(&node, &quits, "CONTAINER_EXITED");
    assert_eq!(st["exitCode"], 7, "{st}");
    let out = c.ok(&["exec", "-s", &stays, "echo", "still here"]);
    assert_eq!(out, "still here");

    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
    assert!(
        netns_entries(&node).is_empty(),
        "{:?}",
        netns_entries(&node)
    );
    assert!(
        node.corrald()
            .ctr_in("k8s.io")
            .ok(&["tasks", "ls", "-q"])
            .is_empty()
    );
    assert_no_shims(&node);
}

#[test]
fn bad_requests_get_clear_errors() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let pod_cfg = node.pod_config("bad", json!({}));
    let ctr_cfg = node.container_config("x", &["true"], json!({}));
    let missing = "0".repeat(64);
    let out = c.run(&[
        "create",
        &missing,
        ctr_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{}",
        out.describe()
    );
    // Stop and remove are idempotent (the CRI contract): nothing there is already done.
    c.ok(&["stopp", &missing]);
    let out = c.run(&["start", &missing]);
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{}",
        out.describe()
    );

    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    let bad_image = node.container_config(
        "y",
        &["true"],
        json!({ "image": { "image": "no.such/image:1" } }),
    );
    let out = c.run(&[
        "create",
        "--no-pull",
        &pod,
        bad_image.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    assert!(!out.success(), "{}", out.describe());
    // The same pod name twice is refused while the first exists.
    let out = c.run(&["runp", pod_cfg.to_str().unwrap()]);
    assert!(
        !out.success() && out.stderr.contains("reserved"),
        "{}",
        out.describe()
    );
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
}

/// corral-cri keeps the image list between calls; images another client of corrald adds or
/// removes in `k8s.io` still show (corrald's image events tell it), and so do its own pulls'
/// and removals.
#[test]
fn images_changed_by_another_client_show_up() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let ctr = node.corrald().ctr_in("k8s.io");
    let tag = "docker.io/library/busybox:another-client";
    let listed = |c: &integration::Crictl| c.ok(&["images", "-o", "json"]);
    assert!(listed(&c).contains(IMAGE_REF), "{}", listed(&c));
    assert!(!listed(&c).contains(tag));

    ctr.ok(&["images", "tag", IMAGE_REF, tag]);
    wait_until("crictl to list the tag ctr made", T, || {
        listed(&c).contains(tag).then_some(())
    });
    let inspected = c.ok(&["inspecti", tag]);
    assert!(inspected.contains(tag), "{inspected}");

    ctr.ok(&["images", "rm", tag]);
    wait_until("crictl to stop listing the tag ctr removed", T, || {
        (!listed(&c).contains(tag)).then_some(())
    });
    let out = c.run(&["inspecti", tag]);
    assert!(!out.success(), "{}", out.describe());

    // Our own removal shows at once, with no event to wait for.
    ctr.ok(&["images", "tag", IMAGE_REF, tag]);
    wait_until("crictl to list the tag again", T, || {
        listed(&c).contains(tag).then_some(())
    });
    c.ok(&["rmi", tag]);
    assert!(!listed(&c).contains(tag), "{}", listed(&c));
}

/// The reference node the benchmark compares with (containerd 1.6's own CRI plugin, set up by
/// the harness as `CriNode` is) really runs pods on its private network, with our pause image
/// and the busybox test image, and its drop removes them.
#[test]
fn containerd_cri_reference_node_runs_a_pod() {
    if !require_root() {
        return;
    }
    let node = ContainerdCri::start_with(CriOptions::default());
    let c = node.crictl();
    let v = c.ok(&["version"]);
    assert!(v.contains("RuntimeName:  containerd"), "{v}");
    let dir = node.dir();
    let pod_cfg = dir.join("pod.json");
    std::fs::write(
        &pod_cfg,
        json!({
            "metadata": { "name": "ref", "namespace": "default", "uid": "uid-ref", "attempt": 0 },
            "log_directory": dir.join("logs").join("ref"),
            "linux": {},
        })
        .to_string(),
    )
    .unwrap();
    let ctr_cfg = dir.join("ctr.json");
    std::fs::write(
        &ctr_cfg,
        json!({
            "metadata": { "name": "app" },
            "image": { "image": integration::IMAGE_REF },
            "command": ["sleep", "1000"],
            "log_path": "app.log",
            "linux": {},
        })
        .to_string(),
    )
    .unwrap();
    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    let ip = c.json(&["inspectp", &pod])["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let prefix = node.subnet().trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "pod ip {ip:?} not in {}",
        node.subnet()
    );
    let id = c.ok(&[
        "create",
        &pod,
        ctr_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &id]);
    let status = wait_until("the container RUNNING", T, || {
        let s = c.json(&["inspect", &id])["status"].clone();
        (s["state"] == "CONTAINER_RUNNING").then_some(s)
    });
    assert!(
        status["image"]["image"]
            .as_str()
            .unwrap_or_default()
            .contains("busybox"),
        "{status}"
    );
    assert_eq!(c.ok(&["exec", "-s", &id, "echo", "hi"]), "hi");
    let address = node.socket();
    drop(node);
    assert!(
        integration::leaks::daemon_shim_processes(&address, "k8s.io").is_empty(),
        "shims left after the node's drop"
    );
}
