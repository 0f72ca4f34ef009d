//! corral-cri's message limits (`[grpc] max_recv_message_size`, `max_send_message_size`, 16
//! MiB by default as kubelet's and containerd's), seen through crictl (grpc-go): past them a
//! call fails with grpc-go's ResourceExhausted text, nothing is created, and corral-cri keeps
//! serving.

use std::fs::OpenOptions;
use std::io::Write;

use integration::{CriNode, require_root};

#[test]
fn crictl_past_the_configured_limits() {
    if !require_root() {
        return;
    }
    let mut node = CriNode::start();
    let crictl = node.crictl();
    // Large enough for every request here but a padded pod, small enough that the image list
    // (two images with their ids, tags and digests) does not fit.
    let (recv, send) = (16 * 1024, 256);
    let mut cfg = OpenOptions::new()
        .append(true)
        .open(node.dir().join("cri.toml"))
        .unwrap();
    writeln!(
        cfg,
        "\n[grpc]\nmax_recv_message_size = {recv}\nmax_send_message_size = {send}"
    )
    .unwrap();
    drop(cfg);
    node.restart();

    let padding: serde_json::Map<String, serde_json::Value> = (0..5)
        .map(|i| (format!("pad{i}"), "x".repeat(4000).into()))
        .collect();
    let pod = node.pod_config("big", serde_json::json!({ "annotations": padding }));
    let out = crictl.run(&["runp", pod.to_str().unwrap()]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr
            .contains("code = ResourceExhausted desc = grpc: received message larger than max (")
            && out.stderr.contains(&format!(" vs. {recv})")),
        "{}",
        out.describe()
    );
    assert_eq!(crictl.ok(&["pods", "-q"]), "", "nothing was created");

    let out = crictl.run(&["images"]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains(
            "code = ResourceExhausted desc = grpc: trying to send message larger than max ("
        ) && out.stderr.contains(&format!(" vs. {send})")),
        "{}",
        out.describe()
    );
    crictl.ok(&["version"]);
}
