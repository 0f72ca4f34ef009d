//! OCI runtime specs for pods and containers, built from the CRI configs and the image config
//! the way containerd 1.6's CRI plugin builds them (pkg/cri/server/{sandbox,container}_create_linux.go,
//! pkg/cri/opts/spec_linux.go), as JSON for corrald's `Container.spec`.
//!
//! ```text
//!  PodSandboxConfig ─┐                          ContainerConfig ─┐
//!  image config ─────┼─▶ sandbox() ─▶ pause     PodSandboxConfig ┼─▶ container() ─▶ spec
//!  netns, files ─────┘     spec                 image config,    │     joins the pause's
//!                                               /etc of image ───┘     net/ipc/uts/pid namespaces
//! ```
//!
//! Pure functions: no I/O, no corrald. Everything they need arrives in the input structs
//! (including the image's /etc/passwd and /etc/group, read by the caller), so every rule is
//! unit-tested without root.

pub mod caps;
pub mod defaults;
pub mod devices;
pub mod mounts;
pub mod resources;
pub mod seccomp;
pub mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protocol::grpc::runtime::v1::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, NamespaceMode, PodSandboxConfig, SecurityProfile,
};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::oci::ImageConfig;

pub use defaults::ALL_CAPS;

/// Files a pod's containers get from the pod (under `<root>/sandboxes/<id>/`).
#[derive(Clone, Debug, Default)]
pub struct SandboxFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    /// The pod's /dev/shm (a tmpfs); None with the host's IPC namespace.
    pub shm: Option<PathBuf>,
}

/// The image's user database, for names in USER and run_as_username, and for the groups a
/// user belongs to. None: the image has no such file.
#[derive(Clone, Debug, Default)]
pub struct ImageEtc {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// What the specs depend on about this node, read once at start-up (`crate::host::node`).
#[derive(Clone, Debug)]
pub struct Node {
    /// corral-cri's own /proc/self/oom_score_adj: nothing it starts can score lower.
    pub oom_score_adj: i64,
    /// The capabilities corral-cri holds: what `ALL` and privileged containers get.
    pub caps: Vec<String>,
    /// cgroup v2 (unified): unprivileged containers get a cgroup namespace.
    pub cgroup_v2: bool,
    /// The memory controller can limit swap.
    pub swap: bool,
    /// The hugetlb controller is there.
    pub hugetlb: bool,
    /// runc and the kernel make `rro` binds (recursive read-only).
    pub recursive_read_only: bool,
}

impl Default for Node {
    /// A node that restricts nothing: every capability, v1 cgroups with swap and hugetlb.
    fn default() -> Node {
        Node {
            oom_score_adj: -1000,
            caps: defaults::ALL_CAPS.iter().map(|c| c.to_string()).collect(),
            cgroup_v2: false,
            swap: true,
            hugetlb: true,
            recursive_read_only: false,
        }
    }
}

/// How the mount a host path lies on propagates (its mountinfo optional fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// `shared:N`
    Shared,
    /// `master:N` without `shared:`
    Slave,
    Private,
}

/// What the caller found about a config mount's host path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPath {
    /// The path with every symlink resolved: what gets bind-mounted.
    pub resolved: PathBuf,
    /// The mount point the path lies on, and how that mount propagates.
    pub mount_point: PathBuf,
    pub propagation: Propagation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// A device node on the host, as stat saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// Where it is below the path asked for: "" for that path itself, `sub/node` for a node
    /// inside a requested directory (or below /dev for the host's devices).
    pub relative: String,
    pub kind: DeviceKind,
    pub major: i64,
    pub minor: i64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What the caller learned from the host for one container (`crate::host::container_facts`).
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// Every config mount's `host_path` → what is there (created first if it was missing, as
    /// containerd does).
    pub mounts: HashMap<String, HostPath>,
    /// Every config device's `host_path` → the device nodes found there.
    pub devices: HashMap<String, Vec<DeviceNode>>,
    /// Every device under /dev, for a privileged container (else empty).
    pub host_devices: Vec<DeviceNode>,
    /// The Localhost seccomp profile's contents ([`container_seccomp_file`]).
    pub seccomp_profile: Option<String>,
}

pub struct SandboxInput<'a> {
    pub id: &'a str,
    pub config: &'a PodSandboxConfig,
    pub image: &'a ImageConfig,
    /// The pod's network namespace; None with the host's network.
    pub netns: Option<&'a Path>,
    pub files: &'a SandboxFiles,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: &'a str,
}

pub struct ContainerInput<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    /// The pause process, whose namespaces the container joins.
    pub sandbox_pid: u32,
    pub netns: Option<&'a Path>,
    pub files: &'a SandboxFiles,
    pub image: &'a ImageConfig,
    pub etc: &'a ImageEtc,
    pub cgroup_driver: &'a str,
}

/// The pod's host-namespace choices.
pub fn host_network(config: &PodSandboxConfig) -> bool {
    namespace_mode(config, |o| o.network) == NamespaceMode::Node as i32
}

pub fn host_ipc(config: &PodSandboxConfig) -> bool {
    namespace_mode(config, |o| o.ipc) == NamespaceMode::Node as i32
}

pub fn host_pid(config: &PodSandboxConfig) -> bool {
    namespace_mode(config, |o| o.pid) == NamespaceMode::Node as i32
}

fn namespace_mode(
    config: &PodSandboxConfig,
    f: impl Fn(&protocol::grpc::runtime::v1::NamespaceOption) -> i32,
) -> i32 {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(f)
        .unwrap_or(NamespaceMode::Pod as i32)
}

fn pod_security(config: &PodSandboxConfig) -> Option<&LinuxSandboxSecurityContext> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
}

fn container_security(config: &ContainerConfig) -> Option<&LinuxContainerSecurityContext> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
}

/// The cgroups path of a pod or container under `parent`.
pub fn cgroups_path(driver: &str, parent: &str, id: &str) -> String {
    if driver == "systemd" {
        let slice = if parent.is_empty() {
            "system.slice"
        } else {
            parent
        };
        format!("{slice}:corral:{id}")
    } else if parent.is_empty() {
        format!("/k8s.io/{id}")
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

/// A pod's seccomp request: `seccomp`, and the deprecated `seccomp_profile_path` that
/// containerd still honours when `seccomp` is unset.
#[allow(deprecated)]
fn pod_seccomp(sc: &LinuxSandboxSecurityContext) -> (Option<&SecurityProfile>, &str) {
    (sc.seccomp.as_ref(), &sc.seccomp_profile_path)
}

/// A container's seccomp request (as [`pod_seccomp`]).
#[allow(deprecated)]
fn container_seccomp(sc: &LinuxContainerSecurityContext) -> (Option<&SecurityProfile>, &str) {
    (sc.seccomp.as_ref(), &sc.seccomp_profile_path)
}

/// The seccomp profile file the caller must read for a pod's pause container, if any.
pub fn sandbox_seccomp_file(config: &PodSandboxConfig) -> Result<Option<String>> {
    let Some(sc) = pod_security(config) else {
        return Ok(None);
    };
    let (profile, path) = pod_seccomp(sc);
    seccomp::file_to_read(profile, path, sc.privileged)
}

/// The seccomp profile file the caller must read for a container, if any.
pub fn container_seccomp_file(config: &ContainerConfig) -> Result<Option<String>> {
    let Some(sc) = container_security(config) else {
        return Ok(None);
    };
    let (profile, path) = container_seccomp(sc);
    seccomp::file_to_read(profile, path, sc.privileged)
}

/// The pause container's spec.
pub fn sandbox(i: &SandboxInput) -> Result<Value> {
    let mut args = i.image.entrypoint.clone();
    args.extend(i.image.cmd.iter().cloned());
    if args.is_empty() {
        return Err(Error::invalid(
            "the sandbox image has no entrypoint or command",
        ));
    }
    let parent = i
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    let mut namespaces = vec![json!({"type": "mount"})];
    if let Some(p) = i.netns {
        namespaces.push(json!({"type": "network", "path": p}));
    }
    if !host_ipc(i.config) {
        namespaces.push(json!({"type": "ipc"}));
    }
    if !host_pid(i.config) {
        namespaces.push(json!({"type": "pid"}));
    }
    let hostname = if i.netns.is_some() {
        namespaces.push(json!({"type": "uts"}));
        i.config.hostname.clone()
    } else {
        String::new()
    };
    let mut spec = base_spec(args, i.image.env.clone(), "/".into());
    spec["hostname"] = json!(hostname);
    spec["linux"]["namespaces"] = json!(namespaces);
    spec["linux"]["cgroupsPath"] = json!(cgroups_path(i.cgroup_driver, parent, i.id));
    Ok(spec)
}

/// A container's spec.
pub fn container(i: &ContainerInput) -> Result<Value> {
    let mut args = if i.config.command.is_empty() {
        i.image.entrypoint.clone()
    } else {
        i.config.command.clone()
    };
    if !i.config.args.is_empty() {
        args.extend(i.config.args.iter().cloned());
    } else if i.config.command.is_empty() {
        args.extend(i.image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(Error::invalid(
            "no command: neither the container config nor the image gives one",
        ));
    }
    let mut env = i.image.env.clone();
    for kv in &i.config.envs {
        env.retain(|e| e.split('=').next() != Some(kv.key.as_str()));
        env.push(format!("{}={}", kv.key, kv.value));
    }
    let cwd = if !i.config.working_dir.is_empty() {
        i.config.working_dir.clone()
    } else if !i.image.working_dir.is_empty() {
        i.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    let mut spec = base_spec(args, env, cwd);
    spec["process"]["terminal"] = json!(i.config.tty);
    let parent = i
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    let pid = i.sandbox_pid;
    let mut namespaces = vec![json!({"type": "mount"})];
    match i.netns {
        Some(p) => namespaces.push(json!({"type": "network", "path": p})),
        None if !host_network(i.sandbox) => {
            namespaces.push(json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}))
        }
        None => {}
    }
    if !host_ipc(i.sandbox) {
        namespaces.push(json!({"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")}));
    }
    if !host_network(i.sandbox) {
        namespaces.push(json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}));
    }
    if !host_pid(i.sandbox) {
        namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
    }
    spec["linux"]["namespaces"] = json!(namespaces);
    spec["linux"]["cgroupsPath"] = json!(cgroups_path(i.cgroup_driver, parent, i.id));
    let mounts = spec["mounts"].as_array_mut().expect("base spec has mounts");
    for (dst, src) in [
        ("/etc/hostname", Some(&i.files.hostname)),
        ("/etc/hosts", Some(&i.files.hosts)),
        ("/etc/resolv.conf", Some(&i.files.resolv_conf)),
        ("/dev/shm", i.files.shm.as_ref()),
    ] {
        if let Some(src) = src
            && !i.config.mounts.iter().any(|m| m.container_path == dst)
        {
            mounts.retain(|m| m["destination"] != dst);
            mounts.push(json!({"destination": dst, "type": "bind", "source": src,
                "options": ["rbind", "rprivate", "rw"]}));
        }
    }
    for m in &i.config.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.readonly { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.container_path, "type": "bind",
            "source": m.host_path, "options": options}));
    }
    Ok(spec)
}

/// The process of an exec in a container: the container's process with another command.
pub fn exec_process(container_spec: &Value, cmd: &[String], tty: bool) -> Result<Value> {
    let mut p = container_spec
        .get("process")
        .cloned()
        .ok_or_else(|| Error::internal("the container's spec has no process"))?;
    p["args"] = json!(cmd);
    p["terminal"] = json!(tty);
    Ok(p)
}

/// `LinuxResources` (OCI) for an update of a running container's limits: the rules of
/// CreateContainer's (see [`resources`]).
pub fn linux_resources(r: &LinuxContainerResources, node: &Node) -> Value {
    resources::linux_resources(r, node)
}

fn base_spec(args: Vec<String>, env: Vec<String>, cwd: String) -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": crate::spec::DEFAULT_CAPS,
                "effective": crate::spec::DEFAULT_CAPS,
                "permitted": crate::spec::DEFAULT_CAPS,
            },
            "noNewPrivileges": false,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        },
    })
}

/// containerd's default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
