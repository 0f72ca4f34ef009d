//! Pod networking through corral-cri, driven by crictl on a private node: port mappings on
//! 127.0.0.1 (the portmap plugin's DNAT), pod-to-pod traffic on the node's bridge, and a pod
//! whose CNI ADD fails, which must leave nothing behind.
//!
//! Every address used is 127.0.0.1 or a pod IP on the node's own bridge.
//!
//! 127.0.0.1 needs nothing beyond the portmap plugin's defaults, as with containerd: with
//! `snat` on (its default) portmap DNATs locally generated packets in OUTPUT, sets
//! `net.ipv4.conf.<bridge>.route_localnet=1` on the host interface that routes to the pod
//! (otherwise the kernel drops a packet with a 127/8 source leaving through the bridge as
//! martian), and masquerades those packets to the bridge's address in POSTROUTING so the pod's
//! reply comes back. The test checks the sysctl too, so a change in that is noticed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use integration::{CriNode, require_root, wait_until};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// A TCP port nobody listens on at 127.0.0.1 right now.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// `GET /` over plain TCP; the whole answer, or the error.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The nat table as `iptables-save` prints it.
fn nat_table() -> String {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("run iptables-save");
    assert!(out.status.success(), "iptables-save: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The nat table's rules that mention `id` (portmap tags its rules with the sandbox id).
fn nat_rules_of(id: &str) -> Vec<String> {
    nat_table()
        .lines()
        .filter(|l| l.contains(id))
        .map(str::to_string)
        .collect()
}

/// A shell command for busybox that serves `body` over HTTP on `port` in the foreground.
fn httpd(port: u16, body: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"
        ),
    ]
}

#[test]
fn port_mapping_answers_on_localhost_until_the_pod_stops() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let port = free_port();
    let pod_cfg = node.pod_config(
        "mapped",
        json!({ "port_mappings": [
            { "protocol": 0, "container_port": 80, "host_port": port, "host_ip": "127.0.0.1" }
        ]}),
    );
    let cmd = httpd(80, "hello-through-portmap");
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let ctr_cfg = node.container_config("web", &cmd, json!({}));
    let (pod, _web) = node.run_pod_with(&pod_cfg, &ctr_cfg);

    let rules = nat_rules_of(&pod);
    assert!(
        rules
            .iter()
            .any(|r| r.contains(&format!("--dports {port}"))),
        "no DNAT rule of pod {pod} for port {port}:\n{}",
        rules.join("\n")
    );
    // The pod's own chains (CNI-DN-<hash of the id>), jumped to from the tagged rules.
    let chains: Vec<String> = rules
        .iter()
        .filter_map(|r| r.split_once("-j ").map(|(_, c)| c.trim().to_string()))
        .filter(|c| c.starts_with("CNI-"))
        .collect();
    assert!(!chains.is_empty(), "{rules:?}");
    let localnet = std::fs::read_to_string(format!(
        "/proc/sys/net/ipv4/conf/{}/route_localnet",
        node.bridge()
    ))
    .unwrap();
    assert_eq!(localnet.trim(), "1", "route_localnet on {}", node.bridge());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // httpd binds just after the container starts.
    let answer = wait_until("an HTTP answer on 127.0.0.1", T, || http_get(addr).ok());
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains("hello-through-portmap"),
        "{answer}"
    );

    c.ok(&["stopp", &pod]);
    let rules = nat_rules_of(&pod);
    assert!(
        rules.is_empty(),
        "portmap rules left after StopPodSandbox:\n{}",
        rules.join("\n")
    );
    let table = nat_table();
    for chain in &chains {
        assert!(
            !table.contains(chain.as_str()),
            "chain {chain} of pod {pod} left after StopPodSandbox:\n{table}"
        );
    }
    let after = http_get(addr);
    assert!(
        after.is_err(),
        "127.0.0.1:{port} still answers after StopPodSandbox: {after:?}"
    );
    c.ok(&["rmp", &pod]);
    assert!(
        node.netns_entries().is_empty(),
        "{:?}",
        node.netns_entries()
    );
}

#[test]
fn pods_reach_each_other_on_the_bridge() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let server_pod = node.pod_config("server", json!({}));
    let cmd = httpd(8080, "hello-from-server-pod");
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let server_ctr = node.container_config("srv", &cmd, json!({}));
    let (spod, _srv) = node.run_pod_with(&server_pod, &server_ctr);
    let client_pod = node.pod_config("client", json!({}));
    let client_ctr = node.container_config("cli", &["sleep", "1000"], json!({}));
    let (cpod, cli) = node.run_pod_with(&client_pod, &client_ctr);

    let server_ip = node.pod_ip(&spod);
    let client_ip = node.pod_ip(&cpod);
    assert_ne!(server_ip, client_ip);
    let prefix = node.subnet().trim_end_matches("0/24");
    for ip in [&server_ip, &client_ip] {
        assert!(ip.starts_with(prefix), "{ip} not in {}", node.subnet());
    }

    let url = format!("http://{server_ip}:8080/");
    let mut last = None;
    let body = integration::try_wait_until(T, || {
        // (busybox 1.35 wget crashes with -T; `timeout` bounds it instead.)
        let out = c.run(&[
            "exec", "-s", &cli, "timeout", "5", "wget", "-q", "-O", "-", &url,
        ]);
        let ok = out.success().then(|| out.stdout.clone());
        last = Some(out);
        ok
    })
    .unwrap_or_else(|| {
        panic!(
            "the server pod does not answer over the bridge: {}",
            last.map(|o| o.describe()).unwrap_or_default()
        )
    });
    assert_eq!(body.trim(), "hello-from-server-pod");
    // A raw TCP connection from the client pod, not only HTTP.
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server_ip} 8080");
    let raw = c.ok(&["exec", "-s", &cli, "sh", "-c", &request]);
    assert!(
        raw.starts_with("HTTP/1.") && raw.contains("hello-from-server-pod"),
        "{raw}"
    );

    for pod in [&spod, &cpod] {
        c.ok(&["stopp", pod]);
        c.ok(&["rmp", pod]);
    }
    assert!(
        node.netns_entries().is_empty(),
        "{:?}",
        node.netns_entries()
    );
    assert!(
        node.ipam_allocations().is_empty(),
        "{:?}",
        node.ipam_allocations()
    );
}

/// The host ends of veths attached to `bridge`.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("run ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
        .collect()
}

#[test]
fn failed_cni_add_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let good = node.cni_config();
    // The bridge plugin and its host-local IPAM succeed, then the next plugin is missing: the
    // ADD fails after an address was allocated and a veth attached.
    let mut missing_plugin = good.clone();
    missing_plugin["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({ "type": "corral-no-such-plugin" }));
    // The bridge plugin fails itself, its IPAM plugin missing, with the veth already made.
    let mut missing_ipam = good.clone();
    missing_ipam["plugins"][0]["ipam"] = json!({ "type": "corral-no-such-ipam" });
    let pod_cfg = node.pod_config("doomed", json!({}));

    for (broken, named) in [
        (missing_plugin, "corral-no-such-plugin"),
        (missing_ipam, "corral-no-such-ipam"),
    ] {
        node.set_cni_config(&broken);
        let out = c.run(&["runp", pod_cfg.to_str().unwrap()]);
        assert!(!out.success(), "{}", out.describe());
        assert!(
            out.stderr.contains(named) && out.stderr.contains("set up the pod network"),
            "the error does not name {named}: {}",
            out.describe()
        );

        assert!(c.ok(&["pods", "-q"]).is_empty(), "a pod is listed");
        assert!(
            node.netns_entries().is_empty(),
            "{:?}",
            node.netns_entries()
        );
        assert!(node.sandbox_dirs().is_empty(), "{:?}", node.sandbox_dirs());
        assert!(
            node.ipam_allocations().is_empty(),
            "IPAM allocation kept: {:?}",
            node.ipam_allocations()
        );
        let cache = node.root().join("cni/results");
        let cached: Vec<_> = std::fs::read_dir(&cache)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(cached.is_empty(), "CNI cache entries left: {cached:?}");
        // The kernel destroys the unmounted namespace, and the veth in it, a little later.
        wait_until("the failed pod's veth to go", T, || {
            bridge_ports(node.bridge()).is_empty().then_some(())
        });
        let ctr = node.corrald().ctr_in("k8s.io");
        assert!(ctr.ok(&["containers", "ls", "-q"]).trim().is_empty());
        assert!(ctr.ok(&["tasks", "ls", "-q"]).trim().is_empty());
        let snapshots = ctr.ok(&["snapshots", "ls"]);
        assert!(
            !snapshots.contains("Active"),
            "an active snapshot is left:\n{snapshots}"
        );
    }

    // The network is mended: the same pod name runs.
    node.set_cni_config(&good);
    let pod = c.ok(&["runp", pod_cfg.to_str().unwrap()]);
    assert!(!node.pod_ip(&pod).is_empty());
    assert_eq!(node.ipam_allocations().len(), 1);
    assert_eq!(bridge_ports(node.bridge()).len(), 1);
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
    assert!(node.ipam_allocations().is_empty());
}

/// `lo` is up in a pod whose network list has no loopback plugin: corral-cri sets it up itself
/// (`[cni] internal_loopback`, the default), as the loopback plugin would. Read from the flags
/// of `lo` inside the container (IFF_UP is bit 0).
#[test]
fn lo_is_up_without_the_loopback_plugin() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let mut conf = node.cni_config();
    let plugins = conf["plugins"].as_array_mut().unwrap();
    plugins.retain(|p| p["type"] != "loopback");
    assert_eq!(plugins.len(), 2, "{conf}");
    node.set_cni_config(&conf);
    let c = node.crictl();
    let pod_cfg = node.pod_config("lo", json!({}));
    let ctr_cfg = node.container_config("lo", &["sleep", "1000"], json!({}));
    let (pod, ctr) = node.run_pod_with(&pod_cfg, &ctr_cfg);
    let flags = c.ok(&["exec", "-s", &ctr, "cat", "/sys/class/net/lo/flags"]);
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("lo flags {flags:?}: {e}"));
    assert_eq!(flags & 1, 1, "lo is down in the pod (flags {flags:#x})");
    // With lo up, the kernel has its local routes.
    let routes = c.ok(&["exec", "-s", &ctr, "cat", "/proc/net/fib_trie"]);
    assert!(routes.contains("127.0.0.1"), "{routes}");
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
    assert!(
        node.netns_entries().is_empty(),
        "{:?}",
        node.netns_entries()
    );
}
