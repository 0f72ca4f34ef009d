//! Invalid pod and container configs: each is refused with InvalidArgument and a message
//! naming the field, and leaves nothing behind (the names stay usable). Sent through crictl,
//! except what crictl already refuses itself (an empty name or image), which goes straight to
//! the CRI API.

use integration::{CriNode, require_root};
use protocol::grpc::runtime::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, PodSandboxConfig,
    PodSandboxMetadata, RunPodSandboxRequest,
};
use protocol::grpc::tonic::{Code, Status};
use serde_json::json;

fn assert_invalid_status<T: std::fmt::Debug>(r: Result<T, Status>, needles: &[&str]) {
    let e = r.expect_err("accepted");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for n in needles {
        assert!(
            e.message().contains(n),
            "the error does not name {n:?}: {e:?}"
        );
    }
}

/// Asserts that crictl failed with InvalidArgument and a message containing every `needle`.
fn assert_invalid(out: &integration::cri::CrictlOutput, needles: &[&str]) {
    assert!(!out.success(), "accepted: {}", out.describe());
    assert!(
        out.stderr.contains("code = InvalidArgument"),
        "not InvalidArgument: {}",
        out.describe()
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "the error does not name {n:?}: {}",
            out.describe()
        );
    }
}

#[test]
fn invalid_pod_configs_are_refused_naming_the_field() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let meta = |name: &str| PodSandboxMetadata {
        name: name.into(),
        namespace: "default".into(),
        uid: "uid-1".into(),
        attempt: 0,
    };
    for (config, needles) in [
        (None, vec!["config"]),
        (
            Some(PodSandboxConfig {
                metadata: None,
                ..Default::default()
            }),
            vec!["metadata"],
        ),
        (
            Some(PodSandboxConfig {
                metadata: Some(meta("")),
                ..Default::default()
            }),
            vec!["metadata.name"],
        ),
    ] {
        let r = node.runtime_api(async |api| {
            api.run_pod_sandbox(RunPodSandboxRequest {
                config,
                runtime_handler: String::new(),
            })
            .await
        });
        assert_invalid_status(r, &needles);
    }

    let cases = [
        (
            json!({ "port_mappings": [{ "protocol": 7, "container_port": 80, "host_port": 8080 }] }),
            vec!["port_mappings[0].protocol", "7"],
        ),
        (
            json!({ "port_mappings": [
                { "container_port": 80, "host_port": 8080 },
                { "container_port": 81, "host_port": 70000 }
            ] }),
            vec!["port_mappings[1].host_port", "70000"],
        ),
        (
            json!({ "port_mappings": [{ "container_port": 0, "host_port": 8080 }] }),
            vec!["port_mappings[0].container_port"],
        ),
        (
            json!({ "port_mappings": [{ "container_port": 80, "host_port": 8080, "host_ip": "localhost:1" }] }),
            vec!["port_mappings[0].host_ip", "localhost:1"],
        ),
        (
            json!({ "log_directory": "relative/logs" }),
            vec!["log_directory", "relative/logs"],
        ),
    ];
    for (extra, needles) in cases {
        let cfg = node.pod_config("bad-pod", extra);
        let out = c.run(&["runp", cfg.to_str().unwrap()]);
        assert_invalid(&out, &needles);
    }
    assert!(c.ok(&["pods", "-q"]).is_empty());
    assert!(
        node.netns_entries().is_empty(),
        "{:?}",
        node.netns_entries()
    );
    assert!(node.ipam_allocations().is_empty());
    // Nothing kept the name.
    let good = node.pod_config("bad-pod", json!({}));
    let pod = c.ok(&["runp", good.to_str().unwrap()]);
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
}

#[test]
fn invalid_container_configs_are_refused_naming_the_field() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let pod_cfg = node.pod_config("holder", json!({}));
    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    for (config, needles) in [
        (
            ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "x".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec::default()),
                ..Default::default()
            },
            vec!["image"],
        ),
        (
            ContainerConfig {
                metadata: Some(ContainerMetadata::default()),
                image: Some(ImageSpec {
                    image: integration::IMAGE_REF.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            vec!["metadata.name"],
        ),
    ] {
        let r = node.runtime_api(async |api| {
            api.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
        });
        assert_invalid_status(r, &needles);
    }
    let cases = [
        (
            json!({ "log_path": "/etc/evil.log" }),
            vec!["log_path", "/etc/evil.log"],
        ),
        (
            json!({ "log_path": "../../escape.log" }),
            vec!["log_path", "../../escape.log"],
        ),
    ];
    for (extra, needles) in cases {
        let cfg = node.container_config("bad-ctr", &["true"], extra);
        let out = c.run(&[
            "create",
            "--no-pull",
            &pod,
            cfg.to_str().unwrap(),
            pod_cfg.to_str().unwrap(),
        ]);
        assert_invalid(&out, &needles);
    }
    assert!(c.ok(&["ps", "-aq"]).is_empty());
    assert!(
        !node.dir().join("escape.log").exists() && !std::path::Path::new("/etc/evil.log").exists()
    );
    let ctr = node.corrald().ctr_in("k8s.io");
    assert_eq!(
        ctr.ok(&["containers", "ls", "-q"]).trim(),
        pod,
        "only the pod's own container is in corrald"
    );
    // Nothing kept the name.
    let good = node.container_config("bad-ctr", &["true"], json!({}));
    let id = c.ok(&[
        "create",
        &pod,
        good.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    assert_eq!(id.len(), 64, "{id}");
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
}
