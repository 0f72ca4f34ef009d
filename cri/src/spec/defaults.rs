//! containerd's default Linux spec (`oci.populateDefaultUnixSpec`) and the edits the CRI plugin
//! makes to it before anything pod- or container-specific: the starting point of every spec.

use serde_json::{Value, json};

/// The OCI runtime-spec version containerd 1.6 writes.
pub const OCI_VERSION: &str = "1.0.2-dev";

/// The bundle-relative root containerd's CRI plugin uses.
pub const ROOTFS: &str = "rootfs";

pub use protocol::oci::{DEFAULT_CAPS, DEFAULT_PATH_ENV, MASKED_PATHS, READONLY_PATHS};

/// Every capability Linux knows (through 5.9's CAP_CHECKPOINT_RESTORE, still the last), in
/// bit order: the names a security context may use.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's default spec. `/run` is a private tmpfs, open files are limited to 1024, and
/// the container gets new pid, ipc, uts, mount and network namespaces.
pub fn default_spec() -> Value {
    json!({
        "ociVersion": OCI_VERSION,
        "root": {"path": ROOTFS},
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": [],
            "env": [],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "mounts": default_mounts(),
        "linux": {
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "resources": {"devices": default_device_rules()},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"},
            ],
        },
    })
}

/// What the CRI plugin starts every pod and container from: the default spec without the
/// `/run` tmpfs (`oci.WithoutRunMount`: an image's /run content must stay visible) and without
/// the default rlimits (`WithoutDefaultSecuritySettings`, containerd#515: 1024 open files is
/// too few for many servers, and Kubernetes expects a container to inherit the runtime's
/// limits). Seccomp and AppArmor are never defaulted; the security context decides.
pub fn cri_base() -> Value {
    let mut spec = default_spec();
    spec["mounts"]
        .as_array_mut()
        .expect("default spec has mounts")
        .retain(|m| m["destination"] != "/run");
    spec["process"]
        .as_object_mut()
        .expect("default spec has a process")
        .remove("rlimits");
    spec
}

fn default_mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    ])
}

/// The cgroup filesystem a container sees, read-only (Docker's behaviour, kept by containerd's
/// CRI for containers; the pause container has none).
pub fn cgroup_mount() -> Value {
    json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
}

/// The device cgroup: nothing, then the character devices every container has (runc creates
/// these nodes in /dev itself and allows them whatever the spec says; listing them keeps the
/// spec honest about what the container can open).
pub fn default_device_rules() -> Value {
    let allow = |major: i64, minor: Option<i64>| match minor {
        Some(minor) => {
            json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"})
        }
        None => json!({"allow": true, "type": "c", "major": major, "access": "rwm"}),
    };
    json!([
        {"allow": false, "access": "rwm"},
        allow(1, Some(3)),  // null
        allow(1, Some(8)),  // random
        allow(1, Some(7)),  // full
        allow(5, Some(0)),  // tty
        allow(1, Some(5)),  // zero
        allow(1, Some(9)),  // urandom
        allow(5, Some(1)),  // console
        allow(136, None),   // pts/*
        allow(5, Some(2)),  // ptmx
    ])
}

/// Every device, for privileged containers (`oci.WithAllDevicesAllowed`).
pub fn all_devices_rule() -> Value {
    json!([{"allow": true, "access": "rwm"}])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destinations(spec: &Value) -> Vec<&str> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn default_spec_is_containerds() {
        let s = default_spec();
        assert_eq!(s["ociVersion"], OCI_VERSION);
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["process"]["cwd"], "/");
        assert_eq!(
            s["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(
            s["process"]["capabilities"]["bounding"],
            json!(DEFAULT_CAPS)
        );
        assert_eq!(
            s["process"]["capabilities"]["permitted"],
            json!(DEFAULT_CAPS)
        );
        assert_eq!(s["linux"]["maskedPaths"][2], "/proc/kcore");
        assert_eq!(s["linux"]["readonlyPaths"][3], "/proc/sys");
        assert_eq!(
            destinations(&s),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/run"
            ]
        );
        let ns: Vec<_> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
    }

    #[test]
    fn sysfs_is_read_only_by_default() {
        let s = default_spec();
        let sys = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn cri_base_drops_run_and_rlimits_only() {
        let s = cri_base();
        assert!(!destinations(&s).contains(&"/run"));
        assert_eq!(destinations(&s).len(), 6);
        assert!(s["process"].get("rlimits").is_none());
        assert_eq!(s["linux"]["maskedPaths"], json!(MASKED_PATHS));
    }

    #[test]
    fn devices_deny_all_then_allow_the_standard_nodes() {
        let d = default_device_rules();
        let d = d.as_array().unwrap();
        assert_eq!(d[0], json!({"allow": false, "access": "rwm"}));
        assert!(
            d[1..]
                .iter()
                .all(|r| r["allow"] == true && r["type"] == "c")
        );
        assert!(d.contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        ));
        assert!(d.contains(&json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})));
        assert_eq!(d.len(), 10);
    }

    #[test]
    fn the_capability_lists_are_consistent() {
        assert_eq!(ALL_CAPS.len(), 41);
        assert!(DEFAULT_CAPS.iter().all(|c| ALL_CAPS.contains(c)));
        let mut all = ALL_CAPS.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), ALL_CAPS.len());
    }
}
