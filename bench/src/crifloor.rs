//! The floor under a CRI pod start on this machine: what any runtime pays for a pod with one
//! container whatever its own code does — the node's CNI plugins, exec'd here directly as
//! libcni and corral-cri exec them, and runc's create + start of two containers (pause and the
//! app; [`crate::floor::RuncFloor::create_start`]).
//!
//! CNI: a fresh network namespace (`ip netns add`, untimed), then ADD of the loopback network
//! both runtimes add on `lo` and of the node's chain on `eth0` — bridge with host-local IPAM,
//! portmap, loopback, each plugin given its predecessor's result — on a bridge and /24 of the
//! floor's own. DEL of both and the namespace's removal follow, untimed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::cmd;
use serde_json::{Value, json};

const CNI_BIN: &str = "/usr/lib/cni";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's chain on a private bridge; the bridge is deleted on drop.
pub struct CniFloor {
    dir: tempfile::TempDir,
    bridge: String,
    subnet: String,
    next: u32,
}

impl CniFloor {
    pub fn new() -> CniFloor {
        let dir = tempfile::Builder::new()
            .prefix("corral-bench-cni-")
            .tempdir()
            .expect("cannot create a temp dir for the CNI floor");
        // 10.199.x.0/24: outside the harness's 10.200–249 range.
        let n = std::process::id() % 250;
        CniFloor {
            dir,
            bridge: format!("cbf{n}"),
            subnet: format!("10.199.{n}.0/24"),
            next: 0,
        }
    }

    /// The chain's plugin configs, in order.
    fn chain(&self) -> Vec<Value> {
        vec![
            json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.dir.path().join("ipam"),
                },
            }),
            json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
            json!({ "type": "loopback" }),
        ]
    }

    /// ADD of `lo` and of the chain in a fresh namespace: their wall time. The namespace, the
    /// DELs and the IPAM release are untimed.
    pub fn add(&mut self) -> Result<Duration, String> {
        self.next += 1;
        let name = format!("corral-bench-{}-{}", std::process::id(), self.next);
        let id = format!("cnifloor{}x{}", std::process::id(), self.next);
        ip(&["netns", "add", &name])?;
        let netns = PathBuf::from("/var/run/netns").join(&name);
        let lo = json!({ "type": "loopback" });
        let chain = self.chain();
        let t = Instant::now();
        let added = (|| {
            let lo_result = call("ADD", &id, &netns, "lo", "cni-loopback", &lo, None)?;
            let mut prev: Option<Value> = None;
            for conf in &chain {
                prev = Some(call(
                    "ADD",
                    &id,
                    &netns,
                    "eth0",
                    "corral-bench-floor",
                    conf,
                    prev.as_ref(),
                )?);
            }
            Ok::<_, String>((lo_result, prev))
        })();
        let el = t.elapsed();
        // Undo whatever was added, last first, even after a failure.
        let prev = added.as_ref().ok().and_then(|(_, p)| p.clone());
        for conf in chain.iter().rev() {
            let _ = call(
                "DEL",
                &id,
                &netns,
                "eth0",
                "corral-bench-floor",
                conf,
                prev.as_ref(),
            );
        }
        let _ = call("DEL", &id, &netns, "lo", "cni-loopback", &lo, None);
        let _ = ip(&["netns", "del", &name]);
        let (_, last) = added?;
        let ip_ok = last
            .as_ref()
            .and_then(|r| r["ips"][0]["address"].as_str())
            .is_some_and(|a| a.starts_with(self.subnet.trim_end_matches("0/24")));
        if !ip_ok {
            return Err(format!(
                "the chain gave no address in {}: {last:?}",
                self.subnet
            ));
        }
        Ok(el)
    }
}

impl Drop for CniFloor {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = cmd::output_with_timeout(Command::new("ip").args(args), CALL_TIMEOUT)
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// One plugin call as the CNI spec (1.0.0) has it: config on stdin, parameters in the
/// environment, result on stdout.
fn call(
    command: &str,
    id: &str,
    netns: &std::path::Path,
    ifname: &str,
    network: &str,
    conf: &Value,
    prev: Option<&Value>,
) -> Result<Value, String> {
    let mut conf = conf.clone();
    conf["cniVersion"] = "1.0.0".into();
    conf["name"] = network.into();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let plugin = conf["type"].as_str().unwrap_or_default().to_string();
    let mut c = Command::new(format!("{CNI_BIN}/{plugin}"));
    c.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_BIN);
    let out = cmd::output_with_input(&mut c, conf.to_string().as_bytes(), CALL_TIMEOUT)
        .map_err(|e| format!("{plugin} {command}: {e}"))?;
    if !out.status.success() || out.timed_out {
        return Err(format!(
            "{plugin} {command}: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if command == "DEL" || out.stdout.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{plugin} {command}: {e}"))
}
