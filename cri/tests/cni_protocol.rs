//! The CNI execution protocol against recording stand-in plugins (shell scripts): what each
//! plugin is given (environment, stdin), in which order plugins run for ADD, CHECK and DEL,
//! and how failures, bad output and hung plugins come back. No root needed: the scripts touch
//! no namespace, so the pod's "namespace" is our own (`/proc/self/ns/net`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cri::network::{Cni, Error, PodNetwork, PortMapping};
use protocol::Code;
use serde_json::Value;

/// Records every call in `<log>/calls` and its stdin and `CNI_*` environment in
/// `<log>/<COMMAND>-<plugin>.{stdin,env}`, then runs the plugin's own body.
const PRELUDE: &str = r#"#!/bin/sh
name=$(basename "$0")
log=@LOG@
echo "$CNI_COMMAND $name" >> "$log/calls"
cat > "$log/$CNI_COMMAND-$name.stdin"
env | grep '^CNI_' | sort > "$log/$CNI_COMMAND-$name.env"
[ "$CNI_COMMAND" = ADD ] || exit 0
"#;

const PLUGINS: &[(&str, &str)] = &[
    (
        "loopback",
        r#"echo '{"cniVersion":"0.3.1","interfaces":[{"name":"lo"}],"ips":[{"version":"4","interface":0,"address":"127.0.0.1/8"}]}'"#,
    ),
    (
        "first",
        r#"echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"10.0.0.9/24"}]}'"#,
    ),
    (
        "second",
        r#"echo '{"cniVersion":"1.0.0","interfaces":[{"name":"veth0"},{"name":"eth0","sandbox":"/x"}],
          "ips":[{"interface":0,"address":"192.168.9.1/24"},{"interface":1,"address":"fd00::9/64"},
                 {"interface":1,"address":"10.0.0.9/24","gateway":"10.0.0.1"}],
          "dns":{"nameservers":["10.0.0.53"]}}'"#,
    ),
    (
        "fail",
        r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"Invalid Configuration","details":"Network 10.0.0.0/31 too small"}'; exit 1"#,
    ),
    ("garbage", "echo 'not json'"),
    (
        "noip",
        r#"echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}'"#,
    ),
    (
        "hang",
        r#"sleep 30 & echo $! > "$log/hang.child"; echo $$ > "$log/hang.pid"; exec sleep 31"#,
    ),
];

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new(plugins: &[&str]) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "log", "net.d", "cache"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        for (name, body) in PLUGINS {
            let text = PRELUDE.replace("@LOG@", &dir.path().join("log").display().to_string());
            let p = dir.path().join("bin").join(name);
            fs::write(&p, format!("{text}{body}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let plugins: Vec<String> = plugins
            .iter()
            .map(|t| {
                if *t == "second" {
                    r#"{"type":"second","opt":"kept","capabilities":{"portMappings":true,"bandwidth":true}}"#
                        .to_string()
                } else {
                    format!(r#"{{"type":"{t}","capabilities":{{"dns":false}}}}"#)
                }
            })
            .collect();
        let f = Fake { dir };
        f.write_conf(&format!(
            r#"{{"cniVersion":"1.0.0","name":"fakenet","plugins":[{}]}}"#,
            plugins.join(",")
        ));
        f
    }

    fn write_conf(&self, text: &str) {
        fs::write(self.path("net.d/10-fake.conflist"), text).unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cni(&self) -> Cni {
        Cni::new(
            self.path("net.d"),
            vec![PathBuf::from("/nonexistent-bin"), self.path("bin")],
            self.path("cache"),
        )
    }

    fn calls(&self) -> Vec<String> {
        let text = fs::read_to_string(self.path("log/calls")).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }

    fn clear_calls(&self) {
        let _ = fs::remove_file(self.path("log/calls"));
    }

    fn stdin(&self, command: &str, plugin: &str) -> Value {
        let p = self.path(&format!("log/{command}-{plugin}.stdin"));
        serde_json::from_slice(&fs::read(&p).unwrap()).unwrap()
    }

    fn env(&self, command: &str, plugin: &str) -> String {
        fs::read_to_string(self.path(&format!("log/{command}-{plugin}.env"))).unwrap()
    }

    fn cache_entries(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.path("cache/results")) {
            Ok(d) => d.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn pod(id: &str) -> PodNetwork {
    let mut pod = PodNetwork::new(id, "/proc/self/ns/net");
    pod.namespace = "default".into();
    pod.name = "web".into();
    pod.uid = "uid-1".into();
    pod.port_mappings.push(PortMapping::tcp(8080, 80));
    pod
}

#[tokio::test]
async fn add_check_del_run_the_list_as_the_spec_says() {
    let f = Fake::new(&["first", "second"]);
    let cni = f.cni();
    let pod = pod("pod1");
    let up = cni.setup(&pod).await.unwrap();
    assert_eq!(f.calls(), ["ADD loopback", "ADD first", "ADD second"]);

    // The pod IP is the first IPv4 on eth0 (not the host-side 192.168.9.1, not the IPv6).
    assert_eq!(up.network, "fakenet");
    assert_eq!(up.ip.to_string(), "10.0.0.9");
    assert_eq!(
        up.additional_ips
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["fd00::9"]
    );
    assert_eq!(up.result.dns.nameservers, ["10.0.0.53"]);
    assert!(up.raw.contains("192.168.9.1"), "{}", up.raw);

    let env = f.env("ADD", "first");
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=pod1",
        "CNI_NETNS=/proc/self/ns/net",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=pod1;K8S_POD_UID=uid-1",
        &format!("CNI_PATH=/nonexistent-bin:{}", f.path("bin").display()),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    assert!(f.env("ADD", "loopback").contains("CNI_IFNAME=lo\n"));

    let first = f.stdin("ADD", "first");
    assert_eq!(first["name"], "fakenet");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert!(first.get("prevResult").is_none(), "{first}");
    assert!(first.get("runtimeConfig").is_none(), "{first}");
    assert!(first.get("capabilities").is_none(), "{first}");
    let second = f.stdin("ADD", "second");
    assert_eq!(second["opt"], "kept");
    assert_eq!(second["prevResult"]["ips"][0]["address"], "10.0.0.9/24");
    // Declared portMappings and bandwidth; the pod asked for port mappings only.
    assert_eq!(
        second["runtimeConfig"],
        serde_json::json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
    );

    // The libcni-format cache entry.
    let entries = f.cache_entries();
    assert_eq!(entries, [f.path("cache/results/fakenet-pod1-eth0")]);
    let entry: Value = serde_json::from_slice(&fs::read(&entries[0]).unwrap()).unwrap();
    assert_eq!(entry["kind"], "cniCacheV1");
    assert_eq!(entry["containerId"], "pod1");
    assert_eq!(entry["result"]["ips"][2]["address"], "10.0.0.9/24");

    // CHECK in order, with the final result.
    f.clear_calls();
    cni.check(&pod, Some(&up.raw)).await.unwrap();
    assert_eq!(f.calls(), ["CHECK first", "CHECK second"]);
    assert_eq!(
        f.stdin("CHECK", "first")["prevResult"]["ips"][2]["address"],
        "10.0.0.9/24"
    );
    f.clear_calls();
    cni.check(&pod, None).await.unwrap();
    assert_eq!(f.calls(), ["CHECK first", "CHECK second"], "from the cache");

    // DEL in reverse, then loopback; the final result as prevResult to each.
    f.clear_calls();
    cni.teardown(&pod, Some(&up.raw)).await.unwrap();
    assert_eq!(f.calls(), ["DEL second", "DEL first", "DEL loopback"]);
    assert_eq!(
        f.stdin("DEL", "first")["prevResult"]["ips"][2]["address"],
        "10.0.0.9/24"
    );
    assert!(
        f.stdin("DEL", "loopback").get("prevResult").is_none(),
        "0.3.1: none on DEL"
    );
    assert!(f.cache_entries().is_empty());

    // Nothing cached or stored any more: CHECK refuses, DEL still runs (idempotent).
    let e = cni.check(&pod, None).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    f.clear_calls();
    cni.teardown(&pod, None).await.unwrap();
    assert_eq!(f.calls(), ["DEL second", "DEL first", "DEL loopback"]);
    assert!(f.stdin("DEL", "first").get("prevResult").is_none());
}

#[tokio::test]
async fn a_failing_plugin_undoes_the_add_and_says_why() {
    let f = Fake::new(&["first", "fail", "second"]);
    let cni = f.cni();
    let e = cni.setup(&pod("pod2")).await.unwrap_err();
    let msg = e.to_string();
    for want in [
        "type=\"fail\"",
        "name=\"fakenet\"",
        "ADD",
        "Invalid Configuration",
        "Network 10.0.0.0/31 too small",
        "code 7",
    ] {
        assert!(msg.contains(want), "{want} not in {msg}");
    }
    assert!(matches!(e, Error::Plugin { code: 7, .. }));
    assert_eq!(e.code(), Code::Unknown);
    // Everything is DELeted again, the failed plugin included, with what ADD got so far.
    assert_eq!(
        f.calls(),
        [
            "ADD loopback",
            "ADD first",
            "ADD fail",
            "DEL second",
            "DEL fail",
            "DEL first",
            "DEL loopback"
        ]
    );
    assert_eq!(
        f.stdin("DEL", "first")["prevResult"]["ips"][0]["address"],
        "10.0.0.9/24"
    );
    assert!(f.cache_entries().is_empty());
}

#[tokio::test]
async fn bad_output_missing_plugins_and_no_ip_are_errors() {
    let f = Fake::new(&["first", "garbage"]);
    let e = f.cni().setup(&pod("pod3")).await.unwrap_err();
    assert!(matches!(e, Error::InvalidResult { .. }), "{e}");
    assert!(
        e.to_string().contains("garbage") && e.to_string().contains("not json"),
        "{e}"
    );
    assert_eq!(e.code(), Code::Internal);
    assert!(f.calls().ends_with(&[
        "DEL garbage".into(),
        "DEL first".into(),
        "DEL loopback".into()
    ]));

    let f = Fake::new(&["noip"]);
    let e = f.cni().setup(&pod("pod3")).await.unwrap_err();
    assert!(matches!(e, Error::NoPodIp { .. }), "{e}");
    assert!(f.calls().contains(&"DEL noip".to_string()));
    assert!(f.cache_entries().is_empty());

    let f = Fake::new(&["first", "corral-no-such-plugin"]);
    let e = f.cni().setup(&pod("pod3")).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::PluginNotFound { .. }), "{e}");
    assert!(msg.contains("corral-no-such-plugin"), "{msg}");
    assert!(
        msg.contains("/nonexistent-bin") && msg.contains(&f.path("bin").display().to_string()),
        "{msg}"
    );
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Undone: first's DEL ran although the missing plugin's DEL could not.
    assert!(
        f.calls()
            .ends_with(&["DEL first".into(), "DEL loopback".into()]),
        "{:?}",
        f.calls()
    );
    // A later teardown reports the missing plugin but still runs the others.
    f.clear_calls();
    let e = f.cni().teardown(&pod("pod3"), None).await.unwrap_err();
    match &e {
        Error::Teardown { errors, .. } => {
            assert_eq!(errors.len(), 1);
            assert!(matches!(errors[0], Error::PluginNotFound { .. }));
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(f.calls(), ["DEL first", "DEL loopback"]);
}

#[tokio::test]
async fn config_problems_are_failed_preconditions_naming_the_file() {
    let f = Fake::new(&["first"]);
    f.write_conf("{\"cniVersion\":\"1.0.0\",");
    let cni = f.cni();
    for e in [
        cni.status().unwrap_err(),
        cni.setup(&pod("pod4")).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.to_string().contains("10-fake.conflist"), "{e}");
    }
    assert!(f.calls().is_empty());

    fs::remove_file(f.path("net.d/10-fake.conflist")).unwrap();
    let e = cni.status().unwrap_err();
    assert!(e.to_string().contains("no network config found in"), "{e}");

    let e = cni
        .setup(&PodNetwork::new("bad id", "/proc/self/ns/net"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn teardown_uses_the_cached_list_once_the_config_is_gone() {
    let f = Fake::new(&["first", "second"]);
    let cni = f.cni();
    let pod = pod("pod5");
    cni.setup(&pod).await.unwrap();
    fs::remove_file(f.path("net.d/10-fake.conflist")).unwrap();
    assert!(cni.status().is_err());
    assert_eq!(
        cni.check(&pod, None).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    f.clear_calls();
    cni.teardown(&pod, None).await.unwrap();
    assert_eq!(f.calls(), ["DEL second", "DEL first", "DEL loopback"]);
    assert_eq!(
        f.stdin("DEL", "second")["prevResult"]["ips"][2]["address"],
        "10.0.0.9/24"
    );
    assert!(f.cache_entries().is_empty());
    // Now nothing at all says how to DEL.
    assert_eq!(
        cni.teardown(&pod, None).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn a_hung_plugin_is_killed_with_its_children() {
    let f = Fake::new(&["first", "hang"]);
    let cni = f.cni().with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let e = cni.setup(&pod("pod6")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(
        e.to_string().contains("hang") && e.to_string().contains("ADD"),
        "{e}"
    );
    for who in ["hang.pid", "hang.child"] {
        let pid: u32 = fs::read_to_string(f.path(&format!("log/{who}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_dead(pid);
    }
    // The undo ran after the kill (hang's DEL returns at once).
    assert!(
        f.calls()
            .ends_with(&["DEL hang".into(), "DEL first".into(), "DEL loopback".into()])
    );
}

/// Gone, or a zombie waiting for a reaper that is not us.
fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} still running: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn teardown_after_a_rename_drops_the_old_cache_entry() {
    let f = Fake::new(&["first"]);
    let cni = f.cni();
    let pod = pod("pod7");
    cni.setup(&pod).await.unwrap();
    assert_eq!(
        f.cache_entries(),
        [f.path("cache/results/fakenet-pod7-eth0")]
    );
    f.write_conf(r#"{"cniVersion":"1.0.0","name":"renamed","plugins":[{"type":"first"}]}"#);
    f.clear_calls();
    cni.teardown(&pod, None).await.unwrap();
    assert_eq!(f.calls(), ["DEL first", "DEL loopback"]);
    assert_eq!(f.stdin("DEL", "first")["name"], "renamed");
    assert!(f.cache_entries().is_empty(), "{:?}", f.cache_entries());
}
