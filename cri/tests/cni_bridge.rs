//! Pod networking with Debian's real CNI plugins (/usr/lib/cni) in real network namespaces
//! (root). Each test has a private bridge (`crb<pid><n>`), a /24 of its own in 10.128-254.x,
//! host-local's data under its temp dir, and a guard that on any exit tears the pods down
//! (which removes portmap's rules), removes the namespaces and deletes the bridge.
//!
//! Host-wide effects that remain, as on any node running these plugins: the bridge plugin
//! with `isGateway` turns on `net.ipv4.ip_forward`, and portmap leaves its (empty) top-level
//! `CNI-HOSTPORT-*` chains in the nat table.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cri::network::{Cni, Error, NetNs, PodNetwork, PortMapping, netns};
use integration::require_root;
use protocol::Code;
use serde_json::Value;

const NETWORK: &str = "corral-test";

struct Env {
    dir: tempfile::TempDir,
    bridge: String,
    /// The first three octets of the test's /24.
    prefix: String,
    pods: Mutex<Vec<PodNetwork>>,
}

impl Env {
    /// `n` tells apart the tests of one process (bridge name and subnet).
    fn new(n: u32, extra_plugins: &str) -> Env {
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("crb{pid}{n}");
        assert!(bridge.len() <= 15);
        let prefix = format!("10.{}.{}", 128 + pid % 127, 10 + n);
        let env = Env {
            dir,
            bridge,
            prefix,
            pods: Mutex::new(Vec::new()),
        };
        fs::create_dir_all(env.path("net.d")).unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"{NETWORK}","plugins":[
                {{"type":"bridge","bridge":"{}","isGateway":true,
                  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{}.0/24"}}]],
                           "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}{extra_plugins}]}}"#,
            env.bridge,
            env.prefix,
            env.path("ipam").display()
        );
        fs::write(env.path("net.d/10-test.conflist"), conf).unwrap();
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cni(&self) -> Cni {
        Cni::new(
            self.path("net.d"),
            vec!["/usr/lib/cni".into()],
            self.path("cache"),
        )
    }

    /// A namespace and the pod that uses it, torn down by the guard if the test does not.
    fn pod(&self, name: &str) -> PodNetwork {
        let id = format!("{name}{}", std::process::id());
        let ns = NetNs::create(self.path(&format!("netns/{id}"))).unwrap();
        let mut pod = PodNetwork::new(&id, ns.path());
        pod.namespace = "test".into();
        pod.name = name.into();
        pod.uid = format!("uid-{id}");
        self.pods.lock().unwrap().push(pod.clone());
        pod
    }

    /// host-local's allocations: one file per IP under dataDir/<network>/.
    fn allocated(&self) -> Vec<IpAddr> {
        let Ok(dir) = fs::read_dir(self.path(&format!("ipam/{NETWORK}"))) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
            .collect()
    }

    fn bridge_ports(&self) -> Vec<String> {
        match fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge)) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap());
        if !pods.is_empty() {
            let cni = self.cni();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for pod in &pods {
                if let Err(e) = rt.block_on(cni.teardown(pod, None)) {
                    eprintln!("cleanup: {e}");
                }
                let _ = NetNs::remove(&pod.netns);
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `ip -j <args>` inside the pod's namespace.
fn ip_json(pod: &PodNetwork, args: &[&str]) -> Value {
    let mut cmd = Command::new("ip");
    cmd.arg("-j").args(args);
    netns::enter_on_exec(&mut cmd, &pod.netns).unwrap();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn nat_rules() -> String {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_pods_talk_over_the_bridge_then_leave_nothing() {
    if !require_root() {
        return;
    }
    let env = Env::new(1, "");
    let cni = env.cni();
    let (a, b) = (env.pod("a"), env.pod("b"));
    rt().block_on(async {
        let up_a = cni.setup(&a).await.unwrap();
        let up_b = cni.setup(&b).await.unwrap();
        assert_eq!(up_a.network, NETWORK);
        for up in [&up_a, &up_b] {
            assert!(up.ip.to_string().starts_with(&env.prefix), "{}", up.ip);
            assert!(up.additional_ips.is_empty());
        }
        assert_ne!(up_a.ip, up_b.ip);

        // eth0 has the IP of the result, with a default route via the bridge; lo is up.
        let addrs = ip_json(&a, &["addr", "show", "dev", "eth0"]);
        let info = &addrs[0]["addr_info"];
        assert!(
            info.as_array()
                .unwrap()
                .iter()
                .any(|i| i["local"] == up_a.ip.to_string() && i["prefixlen"] == 24),
            "{addrs}"
        );
        let routes = ip_json(&a, &["route", "show", "default"]);
        assert_eq!(
            routes[0]["gateway"],
            format!("{}.1", env.prefix),
            "{routes}"
        );
        assert_eq!(routes[0]["dev"], "eth0");
        let lo = ip_json(&a, &["link", "show", "lo"]);
        assert!(
            lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{lo}"
        );

        // a pings b, and a TCP connection from a reaches a listener in b.
        let mut ping = Command::new("busybox");
        ping.args(["ping", "-c1", "-W2", &up_b.ip.to_string()]);
        netns::enter_on_exec(&mut ping, &a.netns).unwrap();
        let out = ping.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ns_b = NetNs::open(&b.netns).unwrap();
        let ip_b = up_b.ip;
        let listener = ns_b
            .run(move || TcpListener::bind((ip_b, 0)))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(b"hi").unwrap();
            peer.ip()
        });
        let got = netns::run_in(&a.netns, move || {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(ip_b, port), Duration::from_secs(5))
                    .unwrap();
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
        assert_eq!(&got, b"hi");
        assert_eq!(server.join().unwrap(), up_a.ip);

        // CHECK passes with the stored result and with the cache.
        cni.check(&a, Some(&up_a.raw)).await.unwrap();
        cni.check(&b, None).await.unwrap();

        // The state DEL must remove.
        let veth_a = host_veth(&up_a.raw);
        assert!(Path::new(&format!("/sys/class/net/{veth_a}")).exists());
        assert!(env.allocated().contains(&up_a.ip));
        let cache_a = env.path(&format!("cache/results/{NETWORK}-{}-eth0", a.id));
        assert!(cache_a.exists());

        cni.teardown(&a, Some(&up_a.raw)).await.unwrap();
        assert!(!env.allocated().contains(&up_a.ip), "{:?}", env.allocated());
        assert!(!Path::new(&format!("/sys/class/net/{veth_a}")).exists());
        assert!(!cache_a.exists());
        assert_eq!(
            ip_json(&a, &["link", "show"]).as_array().unwrap().len(),
            1,
            "only lo is left in the pod"
        );
        let e = cni.check(&a, None).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        cni.teardown(&a, Some(&up_a.raw)).await.unwrap();
        cni.teardown(&a, None).await.unwrap();
        NetNs::remove(&a.netns).unwrap();

        // b's namespace goes first (a crashed pod): DEL still releases its IP. The veth pair
        // dies with the namespace, which the kernel destroys asynchronously once the last
        // reference (our mount) is gone — so poll for it.
        let veth_b = host_veth(&up_b.raw);
        NetNs::remove(&b.netns).unwrap();
        cni.teardown(&b, None).await.unwrap();
        assert!(env.allocated().is_empty(), "{:?}", env.allocated());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/sys/class/net/{veth_b}")).exists() {
            assert!(Instant::now() < deadline, "{veth_b} outlived its namespace");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(env.bridge_ports().is_empty(), "{:?}", env.bridge_ports());
    });
    env.pods.lock().unwrap().clear();
}

#[test]
fn a_host_port_on_localhost_reaches_the_pod() {
    if !require_root() {
        return;
    }
    let env = Env::new(
        2,
        r#",{"type":"portmap","capabilities":{"portMappings":true}}"#,
    );
    let cni = env.cni();
    let mut pod = env.pod("pm");
    let host_port = free_port();
    pod.port_mappings.push(PortMapping {
        host_ip: "127.0.0.1".into(),
        ..PortMapping::tcp(host_port, 8080)
    });
    rt().block_on(async {
        let up = cni.setup(&pod).await.unwrap();
        let rules = nat_rules();
        assert!(
            rules.contains(&pod.id),
            "portmap's rules name the pod:\n{rules}"
        );
        // Localhost DNAT only works if the kernel may route 127.0.0.1-sourced packets out of
        // the bridge: portmap sets route_localnet on the bridge (only), and masquerades them.
        assert_eq!(
            sysctl(&format!("net/ipv4/conf/{}/route_localnet", env.bridge)),
            "1"
        );

        let ns = NetNs::open(&pod.netns).unwrap();
        let listener = ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
            .unwrap()
            .unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong").unwrap();
            (buf, peer.ip())
        });
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
            Duration::from_secs(5),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        let (got, peer) = server.join().unwrap();
        assert_eq!(&got, b"ping");
        // Masqueraded: the pod sees the bridge's address, not 127.0.0.1.
        assert_eq!(peer.to_string(), format!("{}.1", env.prefix));
        drop(s);

        cni.teardown(&pod, Some(&up.raw)).await.unwrap();
        let rules = nat_rules();
        assert!(
            !rules.contains(&pod.id),
            "DEL removed portmap's rules:\n{rules}"
        );
        let refused = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
            Duration::from_secs(2),
        );
        assert!(refused.is_err(), "the host port is closed again");
    });
}

#[test]
fn a_missing_plugin_fails_the_add_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let env = Env::new(3, r#",{"type":"corral-no-such-plugin"}"#);
    let cni = env.cni();
    let pod = env.pod("mp");
    rt().block_on(async {
        let e = cni.setup(&pod).await.unwrap_err();
        assert!(matches!(e, Error::PluginNotFound { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("corral-no-such-plugin") && msg.contains("/usr/lib/cni"),
            "{msg}"
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        // The bridge ADD that ran was undone: no IP held, no veth on the bridge, no cache.
        assert!(env.allocated().is_empty(), "{:?}", env.allocated());
        assert!(env.bridge_ports().is_empty(), "{:?}", env.bridge_ports());
        assert!(
            !env.path("cache/results").exists()
                || fs::read_dir(env.path("cache/results"))
                    .unwrap()
                    .next()
                    .is_none()
        );
        let links = ip_json(&pod, &["link", "show"]);
        assert_eq!(links.as_array().unwrap().len(), 1, "{links}");
        // teardown after the failed ADD: bridge's DEL runs, the missing plugin is reported.
        let e = cni.teardown(&pod, None).await.unwrap_err();
        assert!(e.to_string().contains("corral-no-such-plugin"), "{e}");
    });
    // Nothing left for the guard's teardown to find but the missing plugin again.
    env.pods.lock().unwrap().retain(|p| {
        let _ = NetNs::remove(&p.netns);
        false
    });
}

/// The host side of the pod's veth: the result's interface that is neither in the pod nor
/// the bridge.
fn host_veth(raw: &str) -> String {
    let v: Value = serde_json::from_str(raw).unwrap();
    v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["sandbox"].as_str().unwrap_or("").is_empty()
                && !i["name"].as_str().unwrap().starts_with("crb")
        })
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sysctl(rel: &str) -> String {
    fs::read_to_string(format!("/proc/sys/{rel}"))
        .unwrap()
        .trim()
        .to_string()
}
