//! Device nodes a container gets (containerd's `customopts.WithDevices`, `oci.WithHostDevices`).
//!
//! Each config `Device` names a host path (a node, or a directory whose nodes are all taken,
//! keeping their relative paths) and where it appears in the container (the host path when
//! empty). The caller stats the host (symlinks resolved) and hands the nodes in; here each
//! node becomes a `linux.devices` entry with the host's type, numbers, mode and owner, and a
//! device cgroup rule allowing the requested `permissions` (some of `r`, `w`, `m`).
//! Privileged containers also get every node under the host's /dev (the caller lists them),
//! and their device cgroup allows everything (set by the caller of this module).

use std::collections::{HashMap, HashSet};

use protocol::grpc::runtime::v1::Device;
use serde_json::{Value, json};

use super::{DeviceKind, DeviceNode};
use crate::error::{Error, Result};

/// `linux.devices` entries and the device cgroup rules allowing them.
#[derive(Debug, Default, PartialEq)]
pub struct Planned {
    pub devices: Vec<Value>,
    pub rules: Vec<Value>,
}

pub fn plan(
    config: &[Device],
    facts: &HashMap<String, Vec<DeviceNode>>,
    host_devices: Option<&[DeviceNode]>,
) -> Result<Planned> {
    let mut out = Planned::default();
    let mut paths = HashSet::new();
    for d in config {
        if d.host_path.is_empty() {
            return Err(Error::invalid(format!(
                "device for {:?}: host_path is empty",
                d.container_path
            )));
        }
        let access = &d.permissions;
        if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::invalid(format!(
                "device {}: permissions {access:?} must be some of r, w and m",
                d.host_path
            )));
        }
        let nodes = facts
            .get(&d.host_path)
            .ok_or_else(|| Error::internal(format!("device {} was not inspected", d.host_path)))?;
        let base = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        for n in nodes {
            let path = join(base, &n.relative);
            paths.insert(path.clone());
            out.devices.push(entry(&path, n));
            let rule = json!({"allow": true, "type": kind(n.kind), "major": n.major,
                              "minor": n.minor, "access": access});
            out.rules.push(rule);
        }
    }
    for n in host_devices.unwrap_or_default() {
        let path = join("/dev", &n.relative);
        if paths.insert(path.clone()) {
            out.devices.push(entry(&path, n));
        }
    }
    Ok(out)
}

fn join(base: &str, relative: &str) -> String {
    if relative.is_empty() {
        base.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), relative)
    }
}

fn kind(k: DeviceKind) -> &'static str {
    match k {
        DeviceKind::Char => "c",
        DeviceKind::Block => "b",
    }
}

fn entry(path: &str, n: &DeviceNode) -> Value {
    json!({"path": path, "type": kind(n.kind), "major": n.major, "minor": n.minor,
           "fileMode": n.mode, "uid": n.uid, "gid": n.gid})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(relative: &str, kind: DeviceKind, major: i64, minor: i64) -> DeviceNode {
        DeviceNode {
            relative: relative.into(),
            kind,
            major,
            minor,
            mode: 0o660,
            uid: 0,
            gid: 6,
        }
    }

    fn device(host: &str, container: &str, perms: &str) -> Device {
        Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: perms.into(),
        }
    }

    #[test]
    fn a_device_node_gets_an_entry_and_a_rule() {
        let facts = HashMap::from([(
            "/dev/sda".to_string(),
            vec![node("", DeviceKind::Block, 8, 0)],
        )]);
        let p = plan(&[device("/dev/sda", "/dev/xvda", "rw")], &facts, None).unwrap();
        assert_eq!(
            p.devices,
            [
                json!({"path": "/dev/xvda", "type": "b", "major": 8, "minor": 0,
                    "fileMode": 0o660, "uid": 0, "gid": 6})
            ]
        );
        assert_eq!(
            p.rules,
            [json!({"allow": true, "type": "b", "major": 8, "minor": 0, "access": "rw"})]
        );
    }

    #[test]
    fn an_empty_container_path_means_the_host_path() {
        let facts = HashMap::from([(
            "/dev/fuse".to_string(),
            vec![node("", DeviceKind::Char, 10, 229)],
        )]);
        let p = plan(&[device("/dev/fuse", "", "rwm")], &facts, None).unwrap();
        assert_eq!(p.devices[0]["path"], "/dev/fuse");
        assert_eq!(p.devices[0]["type"], "c");
    }

    #[test]
    fn a_directory_keeps_relative_paths() {
        let facts = HashMap::from([(
            "/dev/snd".to_string(),
            vec![
                node("controlC0", DeviceKind::Char, 116, 2),
                node("by-id/x", DeviceKind::Char, 116, 3),
            ],
        )]);
        let p = plan(&[device("/dev/snd", "/dev/sound/", "r")], &facts, None).unwrap();
        let paths: Vec<_> = p
            .devices
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/dev/sound/controlC0", "/dev/sound/by-id/x"]);
        assert_eq!(p.rules.len(), 2);
        assert!(p.rules.iter().all(|r| r["access"] == "r"));
    }

    #[test]
    fn bad_permissions_and_paths_are_invalid() {
        let facts = HashMap::from([("/dev/x".to_string(), vec![node("", DeviceKind::Char, 1, 1)])]);
        for perms in ["", "rx", "RW"] {
            let e = plan(&[device("/dev/x", "", perms)], &facts, None).unwrap_err();
            assert_eq!(e.code, protocol::Code::InvalidArgument, "{perms:?}");
            assert!(e.message.contains("/dev/x"), "{e}");
        }
        let e = plan(&[device("", "/dev/y", "r")], &facts, None).unwrap_err();
        assert!(e.message.contains("host_path is empty"), "{e}");
        let e = plan(&[device("/dev/z", "", "r")], &facts, None).unwrap_err();
        assert_eq!(e.code, protocol::Code::Internal);
    }

    #[test]
    fn host_devices_are_added_under_dev_without_rules_or_duplicates() {
        let facts = HashMap::from([(
            "/dev/fuse".to_string(),
            vec![node("", DeviceKind::Char, 10, 229)],
        )]);
        let host = [
            node("fuse", DeviceKind::Char, 10, 229),
            node("loop0", DeviceKind::Block, 7, 0),
            node("net/tun", DeviceKind::Char, 10, 200),
        ];
        let p = plan(&[device("/dev/fuse", "", "rwm")], &facts, Some(&host)).unwrap();
        let paths: Vec<_> = p
            .devices
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/dev/fuse", "/dev/loop0", "/dev/net/tun"]);
        assert_eq!(p.rules.len(), 1);
    }
}
