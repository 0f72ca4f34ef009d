//! OCI runtime specs for pods and containers, built from the CRI configs and the image config
//! the way containerd 1.6's CRI plugin builds them (pkg/cri/server/{sandbox_run,container_create}_linux.go,
//! pkg/cri/opts/spec_linux.go, oci/spec_opts.go), as JSON for corrald's `Container.spec`.
//!
//! ```text
//!  PodSandboxConfig ─┐                          ContainerConfig ─┐
//!  image config ─────┼─▶ sandbox() ─▶ pause     PodSandboxConfig ┼─▶ container() ─▶ spec
//!  netns, files, ────┘     spec                 image config,    │     joins the pause's
//!  node facts                                   /etc of image,   │     net/ipc/uts/pid namespaces
//!                                               host facts ──────┘
//! ```
//!
//! Pure functions: no I/O, no corrald. Everything they need arrives in the input structs:
//! the image's /etc/passwd and /etc/group ([`ImageEtc`]), what the node supports ([`Node`],
//! read once at start-up) and what the host says about a container's mounts, devices and
//! seccomp profile ([`HostFacts`], gathered by the caller before each CreateContainer).
//! So every rule is unit-tested without root.
//!
//! Where the rules live: `defaults` (the starting spec), `user`, `caps`, `seccomp`,
//! `mounts`, `devices`, `resources`; namespaces, environment, arguments and annotations
//! are here.
//!
//! Deliberately unlike containerd 1.6: AppArmor and SELinux options are ignored (this node has
//! neither); image volumes get no mount (see `mounts`); pass-through annotations
//! (`pod_annotations` of a runtime handler) are not copied; unprivileged ICMP and ports are not
//! enabled by sysctl (containerd 1.6's defaults too).

mod caps;
mod defaults;
mod devices;
mod mounts;
mod resources;
mod seccomp;
mod user;
mod userns;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use protocol::grpc::runtime::v1::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, SecurityProfile,
    SupplementalGroupsPolicy,
};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::oci::ImageConfig;

pub use defaults::{ALL_CAPS, DEFAULT_CAPS};
pub use userns::{IdMap, PodUserns};

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
    /// The kernel gives pods user namespaces and lets our shim idmap their layers.
    pub user_namespaces: bool,
}

impl Default for Node {
    /// A node that restricts nothing: every capability, v1 cgroups with swap and hugetlb.
    fn default() -> Node {
        Node {
            oom_score_adj: -1000,
            caps: ALL_CAPS.iter().map(|c| c.to_string()).collect(),
            cgroup_v2: false,
            swap: true,
            hugetlb: true,
            recursive_read_only: false,
            user_namespaces: true,
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
    /// That mount's flags a bind keeps in a user namespace, as runc options
    /// (`crate::host::locked_options`).
    pub locked: Vec<String>,
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
    /// For a container in a user namespace: the locked flags of the mount the pod's files are
    /// on ([`HostPath::locked`]).
    pub pod_files_locked: Vec<String>,
}

pub struct SandboxInput<'a> {
    pub id: &'a str,
    pub config: &'a PodSandboxConfig,
    pub image: &'a ImageConfig,
    /// The pause image's /etc/passwd and /etc/group (for a named USER).
    pub etc: &'a ImageEtc,
    /// The pod's network namespace; None with the host's network. Unused for a pod with a
    /// user namespace: runc makes its network namespace (see `userns`).
    pub netns: Option<&'a Path>,
    pub files: &'a SandboxFiles,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: &'a str,
    pub node: &'a Node,
    /// The Localhost seccomp profile's contents ([`sandbox_seccomp_file`]).
    pub seccomp_profile: Option<&'a str>,
}

pub struct ContainerInput<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    /// The pause process, whose namespaces the container joins.
    pub sandbox_pid: u32,
    /// With pid namespace TARGET: the init pid of the target container (running, same pod).
    pub target_pid: Option<u32>,
    pub netns: Option<&'a Path>,
    pub files: &'a SandboxFiles,
    pub image: &'a ImageConfig,
    /// The image's name as corrald records it (the `image-name` annotation).
    pub image_name: &'a str,
    pub etc: &'a ImageEtc,
    /// The pod's hostname; the node's when the pod has none (host network): $HOSTNAME.
    pub hostname: &'a str,
    pub cgroup_driver: &'a str,
    pub node: &'a Node,
    pub host: &'a HostFacts,
}

/// Annotations containerd's CRI plugin puts on specs, which tools (and shims) read to tell
/// pods from containers and find a container's pod.
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIRECTORY: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
    pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
    pub const SANDBOX_CPU_SHARES: &str = "io.kubernetes.cri.sandbox-cpu-shares";
    pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
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

fn namespace_mode(config: &PodSandboxConfig, f: impl Fn(&NamespaceOption) -> i32) -> i32 {
    pod_security(config)
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

/// The pod's own user namespace, if it asks for one (see `userns`). A pod in a user namespace
/// needs its own network, PID and IPC namespaces: runc mounts sysfs, proc and mqueue for it,
/// which the kernel allows only in namespaces the pod's user namespace owns.
pub fn pod_userns(config: &PodSandboxConfig) -> Result<Option<PodUserns>> {
    const FIELD: &str = "PodSandboxConfig.linux.security_context.namespace_options";
    let ns = pod_security(config).and_then(|s| s.namespace_options.as_ref());
    let Some(u) = userns::parse(ns, &format!("{FIELD}.userns_options"))? else {
        return Ok(None);
    };
    if host_network(config) {
        return Err(Error::unimplemented(format!(
            "{FIELD}: a user namespace (userns_options mode POD) with the host's network \
             (network NODE) is not supported by corral-cri (runtime feature \
             user_namespaces_host_network is false)"
        )));
    }
    for (what, host) in [("pid", host_pid(config)), ("ipc", host_ipc(config))] {
        if host {
            return Err(Error::invalid(format!(
                "{FIELD}: a user namespace (userns_options mode POD) needs the pod's own {what} \
                 namespace, but {what} is NODE"
            )));
        }
    }
    Ok(Some(u))
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

/// The pause container's spec (containerd's `sandboxContainerSpec` and
/// `sandboxContainerSpecOpts`): the image's command as the image's USER or the pod's
/// run_as_user, a read-only root, new pid/ipc/uts/mount namespaces and the pod's network
/// namespace (each the host's where the pod asks), the pod's sysctls, 2 CPU shares, OOM score
/// -998, the pod's shm and resolv.conf read-only, the pod's seccomp profile.
pub fn sandbox(i: &SandboxInput) -> Result<Value> {
    let sc = pod_security(i.config);
    let empty_sc = LinuxSandboxSecurityContext::default();
    let sc = sc.unwrap_or(&empty_sc);
    let userns = pod_userns(i.config)?;
    let mut args = i.image.entrypoint.clone();
    args.extend(i.image.cmd.iter().cloned());
    if args.is_empty() {
        return Err(Error::invalid(
            "the sandbox image has no entrypoint or command",
        ));
    }
    let mut spec = defaults::cri_base();
    let mut env = Vec::new();
    merge_env(&mut env, i.image.env.iter().cloned());
    let process = &mut spec["process"];
    process["args"] = json!(args);
    process["env"] = json!(env);
    process["cwd"] = json!(working_dir(None, i.image));
    let asked = user::requested("", sc.run_as_user.as_ref(), sc.run_as_group.as_ref())?;
    let u = user::resolve(asked.as_deref().unwrap_or(&i.image.user), i.etc)?;
    let gids = user::additional_gids(&u, i.etc, false, &sc.supplemental_groups)?;
    process["user"] = user::to_json(&u, &gids);
    process["oomScoreAdj"] = json!(resources::oom_score_adj(
        resources::SANDBOX_OOM_SCORE_ADJ,
        i.node
    )?);
    spec["root"]["readonly"] = json!(true);

    let host_net = host_network(i.config);
    let mut namespaces = Vec::new();
    // runc makes the user namespace first and every other new one inside it.
    if userns.is_some() {
        namespaces.push(json!({"type": "user"}));
    }
    if !host_pid(i.config) {
        namespaces.push(json!({"type": "pid"}));
    }
    if !host_ipc(i.config) {
        namespaces.push(json!({"type": "ipc"}));
    }
    if !host_net {
        namespaces.push(json!({"type": "uts"}));
    }
    namespaces.push(json!({"type": "mount"}));
    if userns.is_some() {
        // A new one, owned by the pod's user namespace; the caller pins it after the create
        // (see `userns`).
        namespaces.push(json!({"type": "network"}));
        spec["hostname"] = json!(i.config.hostname);
    } else if !host_net {
        let netns = i.netns.ok_or_else(|| {
            Error::internal("a pod without host networking needs a network namespace")
        })?;
        namespaces.push(json!({"type": "network", "path": netns}));
        // Only a pod with its own UTS namespace can have its own hostname.
        spec["hostname"] = json!(i.config.hostname);
    }
    spec["linux"]["namespaces"] = json!(namespaces);
    if let Some(u) = userns {
        let (uids, gids) = u.to_json();
        spec["linux"]["uidMappings"] = uids;
        spec["linux"]["gidMappings"] = gids;
    }

    let shm = i
        .files
        .shm
        .clone()
        .unwrap_or_else(|| PathBuf::from(mounts::DEV_SHM));
    // nosuid, nodev and noexec on both (containerd 2 does the same): in a user namespace the
    // read-only remount must keep the flags the kernel locked on the source mount (the shm
    // tmpfs has all three), and they do no harm elsewhere.
    let bind_options = json!(["rbind", "ro", "nosuid", "nodev", "noexec"]);
    let shm = json!({"destination": mounts::DEV_SHM, "type": "bind", "source": shm,
                     "options": bind_options});
    // The pause process needs no name service, but VM-based runtimes set the pod's DNS up
    // from the sandbox's resolv.conf.
    let resolv = json!({"destination": mounts::ETC_RESOLV_CONF, "type": "bind",
                        "source": i.files.resolv_conf, "options": bind_options});
    let list = spec["mounts"].as_array_mut().expect("base spec has mounts");
    list.retain(|m| m["destination"] != mounts::DEV_SHM);
    list.extend([shm, resolv]);

    if let Some(sysctls) = i.config.linux.as_ref().map(|l| &l.sysctls)
        && !sysctls.is_empty()
    {
        let sorted: BTreeMap<_, _> = sysctls.iter().collect();
        spec["linux"]["sysctl"] = json!(sorted);
    }
    spec["linux"]["resources"]["cpu"] = json!({"shares": resources::SANDBOX_CPU_SHARES});
    if !sc.privileged {
        let (profile, path) = pod_seccomp(sc);
        let choice = seccomp::choose(profile, path)?;
        let bounding: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
        if let Some(s) = seccomp::linux_seccomp(&choice, i.seccomp_profile, &bounding)? {
            spec["linux"]["seccomp"] = s;
        }
    }
    let parent = i
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    spec["linux"]["cgroupsPath"] = json!(cgroups_path(i.cgroup_driver, parent, i.id));

    let meta = i.config.metadata.clone().unwrap_or_default();
    let mut a = Map::new();
    a.insert(
        annotations::CONTAINER_TYPE.into(),
        json!(annotations::CONTAINER_TYPE_SANDBOX),
    );
    a.insert(annotations::SANDBOX_ID.into(), json!(i.id));
    a.insert(annotations::SANDBOX_NAMESPACE.into(), json!(meta.namespace));
    a.insert(annotations::SANDBOX_UID.into(), json!(meta.uid));
    a.insert(annotations::SANDBOX_NAME.into(), json!(meta.name));
    a.insert(
        annotations::SANDBOX_LOG_DIRECTORY.into(),
        json!(i.config.log_directory),
    );
    if let Some(r) = i.config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        for (k, v) in [
            (annotations::SANDBOX_CPU_PERIOD, r.cpu_period),
            (annotations::SANDBOX_CPU_QUOTA, r.cpu_quota),
            (annotations::SANDBOX_CPU_SHARES, r.cpu_shares),
            (annotations::SANDBOX_MEMORY, r.memory_limit_in_bytes),
        ] {
            a.insert(k.into(), json!(v.to_string()));
        }
    }
    spec["annotations"] = Value::Object(a);
    Ok(spec)
}

/// A container's spec (containerd's `containerSpec` and `containerSpecOpts`):
/// - process: [`process_args`]; env PATH (default), TERM (tty), HOSTNAME, the image's, the
///   config's, a later key replacing an earlier one; cwd the config's, the image's or /;
///   the user by `user`, capabilities by `caps`; privileges may be gained unless
///   no_new_privs; an OOM score when the config has resources;
/// - a privileged container needs a privileged pod, and gets no masked or read-only paths,
///   no seccomp, every host device and the device cgroup open;
/// - masked and read-only paths are exactly the config's (kubelet sends its defaults);
/// - root read-only when asked, mounts by `mounts`, devices by `devices`, limits by
///   `resources`, cgroups path under the pod's parent, namespaces as
///   `container_namespaces`, seccomp by `seccomp`, containerd's annotations.
pub fn container(i: &ContainerInput) -> Result<Value> {
    let empty_sc = LinuxContainerSecurityContext::default();
    let sc = container_security(i.config).unwrap_or(&empty_sc);
    let name = i
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    let privileged = sc.privileged;
    if privileged && !pod_security(i.sandbox).is_some_and(|s| s.privileged) {
        return Err(Error::invalid(format!(
            "container {name:?} is privileged but its pod sandbox is not \
             (PodSandboxConfig.linux.security_context.privileged)"
        )));
    }
    let userns = userns::check_container(pod_userns(i.sandbox)?, sc.namespace_options.as_ref())?;
    let mut spec = defaults::cri_base();

    // The process.
    let args = process_args(i.config, i.image)?;
    let mut env = vec![defaults::DEFAULT_PATH_ENV.to_string()];
    if i.config.tty {
        merge_env(&mut env, ["TERM=xterm".to_string()]);
    }
    merge_env(&mut env, [format!("HOSTNAME={}", i.hostname)]);
    merge_env(&mut env, i.image.env.iter().cloned());
    merge_env(
        &mut env,
        i.config
            .envs
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value)),
    );
    let asked = user::requested(
        &sc.run_as_username,
        sc.run_as_user.as_ref(),
        sc.run_as_group.as_ref(),
    )?;
    let u = user::resolve(asked.as_deref().unwrap_or(&i.image.user), i.etc)?;
    let merge = match SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(SupplementalGroupsPolicy::Merge) => true,
        Ok(SupplementalGroupsPolicy::Strict) => false,
        Err(_) => {
            return Err(Error::invalid(format!(
                "unknown supplemental_groups_policy {}",
                sc.supplemental_groups_policy
            )));
        }
    };
    let gids = user::additional_gids(&u, i.etc, merge, &sc.supplemental_groups)?;
    let caps = caps::container(sc.capabilities.as_ref(), privileged, &i.node.caps)?;
    let process = &mut spec["process"];
    process["args"] = json!(args);
    process["env"] = json!(env);
    process["cwd"] = json!(working_dir(Some(&i.config.working_dir), i.image));
    process["terminal"] = json!(i.config.tty);
    process["noNewPrivileges"] = json!(sc.no_new_privs);
    process["user"] = user::to_json(&u, &gids);
    process["capabilities"] = caps.to_json();
    let limits_asked = i.config.linux.as_ref().and_then(|l| l.resources.as_ref());
    if let Some(r) = limits_asked {
        process["oomScoreAdj"] = json!(resources::oom_score_adj(r.oom_score_adj, i.node)?);
    }

    // The filesystem.
    let defaults_mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    let planned = mounts::plan(
        &mounts::Request {
            config: &i.config.mounts,
            files: i.files,
            facts: &i.host.mounts,
            readonly_rootfs: sc.readonly_rootfs,
            privileged,
            recursive_read_only: i.node.recursive_read_only,
            userns,
            pod_files_locked: &i.host.pod_files_locked,
        },
        defaults_mounts,
    )?;
    spec["mounts"] = json!(planned.mounts);
    if let Some(p) = planned.rootfs_propagation {
        spec["linux"]["rootfsPropagation"] = json!(p);
    }
    if sc.readonly_rootfs {
        spec["root"]["readonly"] = json!(true);
    }
    let linux = spec["linux"].as_object_mut().expect("base spec has linux");
    if privileged {
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
    } else {
        // containerd's CRI starts from none: kubelet sends the defaults it wants.
        linux.insert("maskedPaths".into(), json!(sc.masked_paths));
        linux.insert("readonlyPaths".into(), json!(sc.readonly_paths));
    }

    // Devices and cgroups.
    let devices = devices::plan(
        &i.config.devices,
        &i.host.devices,
        privileged.then_some(i.host.host_devices.as_slice()),
    )?;
    if !devices.devices.is_empty() {
        linux.insert("devices".into(), json!(devices.devices));
    }
    let mut limits = match limits_asked {
        Some(r) => resources::linux_resources(r, i.node),
        None => json!({}),
    };
    limits["devices"] = if privileged {
        defaults::all_devices_rule()
    } else {
        let mut rules = defaults::default_device_rules();
        let list = rules.as_array_mut().expect("rules are a list");
        list.extend(devices.rules);
        rules
    };
    linux.insert("resources".into(), limits);
    let parent = i
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    linux.insert(
        "cgroupsPath".into(),
        json!(cgroups_path(i.cgroup_driver, parent, i.id)),
    );
    linux.insert(
        "namespaces".into(),
        json!(container_namespaces(i, sc, privileged, userns.is_some())?),
    );
    if let Some(u) = userns {
        // runc 1.1.5 joins the pause's user namespace by path and writes no mappings, but it
        // still reads root's host ids from these (for device nodes) and refuses without them.
        let (uids, gids) = u.to_json();
        linux.insert("uidMappings".into(), uids);
        linux.insert("gidMappings".into(), gids);
    }
    if !privileged {
        let (profile, path) = container_seccomp(sc);
        let choice = seccomp::choose(profile, path)?;
        if let Some(s) =
            seccomp::linux_seccomp(&choice, i.host.seccomp_profile.as_deref(), &caps.bounding)?
        {
            linux.insert("seccomp".into(), s);
        }
    }

    let meta = i.sandbox.metadata.clone().unwrap_or_default();
    let mut a = Map::new();
    a.insert(
        annotations::CONTAINER_TYPE.into(),
        json!(annotations::CONTAINER_TYPE_CONTAINER),
    );
    a.insert(annotations::SANDBOX_ID.into(), json!(i.sandbox_id));
    a.insert(annotations::SANDBOX_NAMESPACE.into(), json!(meta.namespace));
    a.insert(annotations::SANDBOX_UID.into(), json!(meta.uid));
    a.insert(annotations::SANDBOX_NAME.into(), json!(meta.name));
    a.insert(annotations::CONTAINER_NAME.into(), json!(name));
    a.insert(annotations::IMAGE_NAME.into(), json!(i.image_name));
    spec["annotations"] = Value::Object(a);
    Ok(spec)
}

/// The namespaces of a container: the pause's user namespace when the pod has one (first:
/// runc joins it before the others, which it owns); a new mount namespace; the pause's
/// network, IPC and UTS namespaces unless the pod uses the host's; the pid namespace the container's mode asks
/// for (POD: the pause's, CONTAINER: a new one, NODE: the host's, TARGET: another
/// container's); a new cgroup namespace on cgroup v2 unless privileged (containerd: it hides
/// the host's cgroup tree, and v1 or privileged containers keep the old view).
fn container_namespaces(
    i: &ContainerInput,
    sc: &LinuxContainerSecurityContext,
    privileged: bool,
    userns: bool,
) -> Result<Vec<Value>> {
    // `kind` is the OCI type; the file in /proc/<pid>/ns is the same but for `net`.
    let join = |kind: &str, pid: u32| -> Result<Value> {
        if pid == 0 {
            return Err(Error::precondition(format!(
                "cannot join the {kind} namespace: its process is not running"
            )));
        }
        let file = if kind == "network" { "net" } else { kind };
        Ok(json!({"type": kind, "path": format!("/proc/{pid}/ns/{file}")}))
    };
    let pid = i.sandbox_pid;
    let host_net = host_network(i.sandbox);
    let mut ns = Vec::new();
    if userns {
        ns.push(join("user", pid)?);
    }
    let ns_opts = sc.namespace_options.clone().unwrap_or_default();
    match NamespaceMode::try_from(ns_opts.pid) {
        Ok(NamespaceMode::Pod) if !host_pid(i.sandbox) => ns.push(join("pid", pid)?),
        Ok(NamespaceMode::Pod | NamespaceMode::Node) => {}
        Ok(NamespaceMode::Container) => ns.push(json!({"type": "pid"})),
        Ok(NamespaceMode::Target) => {
            let target = i.target_pid.ok_or_else(|| {
                Error::invalid(format!(
                    "pid namespace TARGET: no running target container {:?}",
                    ns_opts.target_id
                ))
            })?;
            ns.push(join("pid", target)?);
        }
        Err(_) => {
            return Err(Error::invalid(format!(
                "unknown pid namespace mode {}",
                ns_opts.pid
            )));
        }
    }
    if !host_ipc(i.sandbox) {
        ns.push(join("ipc", pid)?);
    }
    if !host_net {
        ns.push(join("uts", pid)?);
    }
    ns.push(json!({"type": "mount"}));
    if !host_net {
        match i.netns {
            Some(p) => ns.push(json!({"type": "network", "path": p})),
            None => ns.push(join("network", pid)?),
        }
    }
    if i.node.cgroup_v2 && !privileged {
        ns.push(json!({"type": "cgroup"}));
    }
    Ok(ns)
}

/// The command line: Kubernetes' `command` replaces the image's ENTRYPOINT and `args` its
/// CMD, and a `command` alone drops CMD (Docker's rule, kept by containerd). An ENTRYPOINT of
/// `[""]` means none.
pub fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if image.entrypoint != [""] {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(Error::invalid(
            "no command: neither the container config nor the image gives one",
        ));
    }
    Ok(command)
}

/// The config's working directory, else the image's, else /.
fn working_dir(config: Option<&str>, image: &ImageConfig) -> String {
    match config {
        Some(d) if !d.is_empty() => d.to_string(),
        _ if !image.working_dir.is_empty() => image.working_dir.clone(),
        _ => "/".to_string(),
    }
}

/// Sets each `KEY=VALUE` of `overrides` in `env`: in place when KEY is there, appended
/// otherwise; a bare `KEY` removes it (containerd's `replaceOrAppendEnvValues`, except that an
/// override also replaces an earlier override, so a config env beats the image's).
fn merge_env(env: &mut Vec<String>, overrides: impl IntoIterator<Item = String>) {
    for o in overrides {
        let key = o.split('=').next().unwrap_or_default().to_string();
        let pos = env
            .iter()
            .position(|e| e.split('=').next() == Some(key.as_str()));
        match (o.contains('='), pos) {
            (true, Some(p)) => env[p] = o,
            (true, None) => env.push(o),
            (false, Some(p)) => {
                env.remove(p);
            }
            (false, None) => {}
        }
    }
}

/// The process of an exec in a container: the container's process with another command; a
/// terminal gets TERM=xterm, as containerd's exec does.
pub fn exec_process(container_spec: &Value, cmd: &[String], tty: bool) -> Result<Value> {
    let mut p = container_spec
        .get("process")
        .cloned()
        .ok_or_else(|| Error::internal("the container's spec has no process"))?;
    p["args"] = json!(cmd);
    p["terminal"] = json!(tty);
    if tty {
        let mut env: Vec<String> = p["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        merge_env(&mut env, ["TERM=xterm".to_string()]);
        p["env"] = json!(env);
    }
    Ok(p)
}

/// `LinuxResources` (OCI) for an update of a running container's limits: the rules of
/// CreateContainer's (see `resources`).
pub fn linux_resources(r: &LinuxContainerResources, node: &Node) -> Value {
    resources::linux_resources(r, node)
}

#[cfg(test)]
mod tests;
