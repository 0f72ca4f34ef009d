//! Pods with a user namespace (Kubernetes `hostUsers: false`) on corral-cri, driven by crictl
//! with real runc: the container's root is an unprivileged host uid, yet owns and writes its
//! root filesystem (idmapped by our shim), what it writes lands on disk with unshifted ids,
//! the pod's network works, and removing the pod leaves no idmapped mount and no process in
//! its user namespace.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::{CriNode, require_root, wait_until};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
/// The host ids the pods' root maps to (kubelet picks multiples of 65536 above 65535).
const HOST_ID: u32 = 3 * 65536;
const LENGTH: u32 = 65536;

fn userns_options(mode: &str) -> Value {
    let map = json!([{ "container_id": 0, "host_id": HOST_ID, "length": LENGTH }]);
    let mode = match mode {
        "POD" => 0,
        "CONTAINER" => 1,
        "NODE" => 2,
        _ => 3,
    };
    if mode == 0 {
        json!({ "mode": mode, "uids": map, "gids": map })
    } else {
        json!({ "mode": mode })
    }
}

fn with_userns(mode: &str) -> Value {
    json!({ "linux": { "security_context": { "namespace_options": {
        "userns_options": userns_options(mode) } } } })
}

/// The mounts of this process's mount namespace (the host's) whose options say `idmapped`.
fn idmapped_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(5).is_some_and(|o| o.contains("idmapped")))
        .map(str::to_string)
        .collect()
}

/// Pids of the processes in the user namespace whose inode is `ino`.
fn processes_in_userns(ino: u64) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{pid}/ns/user")).is_ok_and(|m| m.ino() == ino) {
            out.push(pid);
        }
    }
    out
}

/// The upperdir of a container's snapshot, as corrald's snapshotter reports its mounts.
fn upper_dir(node: &CriNode, key: &str) -> PathBuf {
    let out = node
        .corrald()
        .ctr_in("k8s.io")
        .run(&["snapshots", "mounts", "/tmp/unused", key]);
    let text = out.stdout_str();
    let upper = text
        .split([',', ' ', '\n'])
        .find_map(|w| w.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {text:?}"));
    PathBuf::from(upper)
}

fn uid_map_line(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_pod_with_a_user_namespace_owns_its_rootfs() {
    if !require_root() {
        return;
    }
    let mut node = CriNode::start();
    let c = node.crictl();

    // Our shim's handlers report the feature; containerd's runc shim's does not.
    let info = c.json(&["info"]);
    let handlers = info["runtimeHandlers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let feature = |name: &str| {
        handlers
            .iter()
            .find(|h| h["name"].as_str().unwrap_or_default() == name)
            .map(|h| h["features"]["user_namespaces"] == true)
    };
    assert_eq!(feature(""), Some(true), "{info}");
    assert_eq!(feature("runc"), Some(false), "{info}");

    let pod_cfg = node.pod_config("userns", with_userns("POD"));
    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    let inspect = c.json(&["inspectp", &pod]);
    let ip = inspect["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default();
    assert!(!ip.is_empty(), "the pod has an address: {inspect}");

    let script = "echo written > /etc/userns-proof && cat /proc/self/uid_map && exec sleep 1000";
    let ctr_cfg = node.container_config("app", &["sh", "-c", script], with_userns("POD"));
    let id = c.ok(&[
        "create",
        &pod,
        ctr_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &id]);
    wait_until("the container to run", T, || {
        (c.json(&["inspect", &id])["status"]["state"] == "CONTAINER_RUNNING").then_some(())
    });

    // Inside: root, mapped onto HOST_ID.., owning its image's files and the pod's files.
    let map = c.ok(&["exec", "-s", &id, "cat", "/proc/self/uid_map"]);
    assert_eq!(
        uid_map_line(&map),
        ["0", &HOST_ID.to_string(), &LENGTH.to_string()]
    );
    let owners = c.ok(&[
        "exec",
        "-s",
        &id,
        "stat",
        "-c",
        "%n %u %g",
        "/etc",
        "/etc/userns-proof",
        "/etc/hosts",
        "/etc/resolv.conf",
    ]);
    for line in owners.lines() {
        assert!(
            line.ends_with(" 0 0"),
            "not root's in the container: {owners}"
        );
    }
    // The pod's files are the pod root's to write, and /dev/shm is usable.
    c.ok(&[
        "exec",
        "-s",
        &id,
        "sh",
        "-c",
        "echo '10.9.9.9 extra' >> /etc/hosts && touch /dev/shm/x",
    ]);
    // The network namespace belongs to the pod's user namespace: runc could mount sysfs,
    // which shows the pod's own interfaces.
    let net = c.ok(&["exec", "-s", &id, "ls", "/sys/class/net"]);
    assert!(net.split_whitespace().any(|n| n == "eth0"), "{net}");

    // A read-only container with a read-only volume as kubelet sends it (idmapped, from a
    // nosuid,nodev,noexec mount): the volume's root-owned file is root's inside, and the
    // read-only remounts work although the user namespace locks those flags.
    let vol = node.dir().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &vol,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .unwrap();
    std::fs::write(vol.join("data"), "volume\n").unwrap();
    let map = json!([{ "container_id": 0, "host_id": HOST_ID, "length": LENGTH }]);
    let mut ro = with_userns("POD");
    ro["linux"]["security_context"]["readonly_rootfs"] = json!(true);
    ro["mounts"] = json!([{ "container_path": "/vol", "host_path": vol, "readonly": true,
                            "uidMappings": map, "gidMappings": map }]);
    let ro_cfg = node.container_config("ro", &["sleep", "1000"], ro);
    let ro_id = c.ok(&[
        "create",
        &pod,
        ro_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &ro_id]);
    wait_until("the read-only container to run", T, || {
        (c.json(&["inspect", &ro_id])["status"]["state"] == "CONTAINER_RUNNING").then_some(())
    });
    let st = c.ok(&["exec", "-s", &ro_id, "stat", "-c", "%u %g", "/vol/data"]);
    assert_eq!(st, "0 0");
    for target in ["/vol/data", "/etc/hosts", "/etc/new"] {
        let w = c.run(&[
            "exec",
            "-s",
            &ro_id,
            "sh",
            "-c",
            &format!("echo x >> {target}"),
        ]);
        assert!(!w.success(), "{target} is writable: {}", w.describe());
    }
    c.ok(&["stop", "-t", "1", &ro_id]);
    c.ok(&["rm", &ro_id]);

    // After corral-cri is killed and restarted, a new container still joins the pod's user
    // namespace (found again through the pause's pid).
    node.kill_9();
    node.restart();
    let again_cfg =
        node.container_config("again", &["cat", "/proc/self/uid_map"], with_userns("POD"));
    let again = c.ok(&[
        "create",
        &pod,
        again_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &again]);
    let out = wait_until("the container's uid_map in its log", T, || {
        let out = c.run(&["logs", &again]);
        out.stdout
            .contains(&HOST_ID.to_string())
            .then_some(out.stdout)
    });
    assert_eq!(
        uid_map_line(&out),
        ["0", &HOST_ID.to_string(), &LENGTH.to_string()]
    );
    c.ok(&["rm", "-f", &again]);

    // Outside: the container's processes run as HOST_ID, and what root wrote is uid 0 on
    // disk, in the container's own layer.
    let pid = c.json(&["inspect", &id])["info"]["pid"]
        .as_u64()
        .expect("container pid") as u32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(HOST_ID.to_string().as_str()),
        "{uid_line}"
    );
    let userns_ino = std::fs::metadata(format!("/proc/{pid}/ns/user"))
        .unwrap()
        .ino();
    let upper = upper_dir(&node, &id);
    let proof = std::fs::metadata(upper.join("etc/userns-proof")).unwrap();
    assert_eq!((proof.uid(), proof.gid()), (0, 0), "in {}", upper.display());
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/userns-proof")).unwrap(),
        "written\n"
    );
    let logs = c.ok(&["logs", &id]);
    assert!(logs.contains(&HOST_ID.to_string()), "{logs}");

    // Gone without a trace: no idmapped mount, no process left in the user namespace, no
    // network namespace, no shim.
    c.ok(&["stop", "-t", "1", &id]);
    c.ok(&["rm", &id]);
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
    let below = |m: &String| m.contains(&node.dir().to_string_lossy().to_string());
    wait_until(
        "no idmapped mount and no process in the pod's user namespace",
        T,
        || {
            (idmapped_mounts().iter().all(|m| !below(m))
                && processes_in_userns(userns_ino).is_empty())
            .then_some(())
        },
    );
    assert!(
        std::fs::read_dir(node.root().join("netns"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
    wait_until("every shim to exit", T, || {
        integration::leaks::daemon_shim_processes(&node.corrald().address(), "k8s.io")
            .is_empty()
            .then_some(())
    });
    let leftovers: Vec<_> = idmapped_mounts().into_iter().filter(below).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_no_bind_dirs(&node.corrald().state());
}

/// No bundle keeps an `idmapped` directory of attached bind sources.
fn assert_no_bind_dirs(state: &Path) {
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            assert!(
                !(p.ends_with("idmapped") && p.is_dir()),
                "{} is left",
                p.display()
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
}

#[test]
fn user_namespace_requests_that_cannot_work_are_refused_clearly() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    // containerd's runc shim cannot idmap the rootfs: refused, naming the handler.
    let pod_cfg = node.pod_config("userns-runc", with_userns("POD"));
    let out = c.run(&["runp", "--runtime", "runc", pod_cfg.to_str().unwrap()]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("code = Unimplemented")
            && out.stderr.contains("runtime handler")
            && out.stderr.contains("(io.containerd.runc.v2)"),
        "{}",
        out.describe()
    );
    // CONTAINER and TARGET modes, and a POD mapping that leaves out root.
    for (name, extra, want) in [
        ("userns-ctr", with_userns("CONTAINER"), "mode CONTAINER"),
        ("userns-tgt", with_userns("TARGET"), "mode TARGET"),
        (
            "userns-noroot",
            json!({ "linux": { "security_context": { "namespace_options": {
                "userns_options": { "mode": 0,
                    "uids": [{ "container_id": 1, "host_id": HOST_ID, "length": LENGTH }],
                    "gids": [{ "container_id": 0, "host_id": HOST_ID, "length": LENGTH }] }
            } } } }),
            "container_id must be 0",
        ),
    ] {
        let cfg = node.pod_config(name, extra);
        let out = c.run(&["runp", cfg.to_str().unwrap()]);
        assert!(!out.success(), "{name}");
        assert!(
            out.stderr.contains("InvalidArgument") && out.stderr.contains(want),
            "{name}: {}",
            out.describe()
        );
    }
    // Nothing of the refused pods is left.
    assert!(c.ok(&["pods", "-q"]).is_empty());
    assert!(
        std::fs::read_dir(node.root().join("netns"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
}
