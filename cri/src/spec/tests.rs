//! The rules of `sandbox()` and `container()`, one small test each.

use std::collections::HashMap;

use protocol::grpc::runtime::v1::security_profile::ProfileType;
use protocol::grpc::runtime::v1::{
    Capability, ContainerMetadata, Device, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxPodSandboxConfig, Mount, PodSandboxMetadata, UserNamespace,
};

use super::*;

const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n\
                      app:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n";

fn etc() -> ImageEtc {
    ImageEtc {
        passwd: Some(PASSWD.into()),
        group: Some(GROUP.into()),
    }
}

fn files() -> SandboxFiles {
    SandboxFiles {
        hostname: "/pods/p1/hostname".into(),
        hosts: "/pods/p1/hosts".into(),
        resolv_conf: "/pods/p1/resolv.conf".into(),
        shm: Some("/pods/p1/shm".into()),
    }
}

fn pod() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        log_directory: "/var/log/pods/web".into(),
        ..Default::default()
    }
}

fn with_pod_security(mut p: PodSandboxConfig, sc: LinuxSandboxSecurityContext) -> PodSandboxConfig {
    p.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(sc);
    p
}

fn ns(network: NamespaceMode, pid: NamespaceMode, ipc: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

fn pause_image() -> ImageConfig {
    ImageConfig {
        user: "65535:65535".into(),
        entrypoint: vec!["/pause".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

struct Pod {
    config: PodSandboxConfig,
    image: ImageConfig,
    etc: ImageEtc,
    files: SandboxFiles,
    node: Node,
    seccomp: Option<String>,
}

impl Pod {
    fn new(config: PodSandboxConfig) -> Pod {
        Pod {
            config,
            image: pause_image(),
            etc: ImageEtc::default(),
            files: files(),
            node: Node::default(),
            seccomp: None,
        }
    }

    fn spec(&self) -> Result<Value> {
        sandbox(&SandboxInput {
            id: "p1",
            config: &self.config,
            image: &self.image,
            etc: &self.etc,
            netns: (!host_network(&self.config)).then_some(Path::new("/run/netns/p1")),
            files: &self.files,
            cgroup_driver: "cgroupfs",
            node: &self.node,
            seccomp_profile: self.seccomp.as_deref(),
        })
    }
}

fn app_image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["serve".into()],
        env: vec!["PATH=/app/bin".into(), "MODE=image".into()],
        working_dir: "/srv".into(),
        ..Default::default()
    }
}

struct Ctr {
    config: ContainerConfig,
    pod: PodSandboxConfig,
    image: ImageConfig,
    etc: ImageEtc,
    files: SandboxFiles,
    node: Node,
    host: HostFacts,
    target_pid: Option<u32>,
    sandbox_pid: u32,
    netns: Option<PathBuf>,
}

impl Ctr {
    fn new(config: ContainerConfig) -> Ctr {
        Ctr {
            config,
            pod: pod(),
            image: app_image(),
            etc: etc(),
            files: files(),
            node: Node::default(),
            host: HostFacts::default(),
            target_pid: None,
            sandbox_pid: 4242,
            netns: Some("/run/netns/p1".into()),
        }
    }

    fn spec(&self) -> Result<Value> {
        container(&ContainerInput {
            id: "c1",
            sandbox_id: "p1",
            config: &self.config,
            sandbox: &self.pod,
            sandbox_pid: self.sandbox_pid,
            target_pid: self.target_pid,
            netns: self.netns.as_deref(),
            files: &self.files,
            image: &self.image,
            image_name: "docker.io/library/app:1",
            etc: &self.etc,
            hostname: "web-0",
            cgroup_driver: "cgroupfs",
            node: &self.node,
            host: &self.host,
        })
    }
}

fn config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

fn with_security(mut c: ContainerConfig, sc: LinuxContainerSecurityContext) -> ContainerConfig {
    c.linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .security_context = Some(sc);
    c
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn namespaces(spec: &Value) -> Vec<(String, Option<String>)> {
    spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_string(),
                n["path"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn ns_path(spec: &Value, kind: &str) -> Option<Option<String>> {
    namespaces(spec)
        .into_iter()
        .find(|(t, _)| t == kind)
        .map(|(_, p)| p)
}

fn mount_at<'a>(spec: &'a Value, dst: &str) -> &'a Value {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == dst)
        .unwrap_or_else(|| panic!("no mount at {dst}"))
}

// ---------------------------------------------------------------------------------------------
// The pause container

#[test]
fn sandbox_runs_the_images_command_env_and_workdir() {
    let mut p = Pod::new(pod());
    p.image.cmd = vec!["-v".into()];
    p.image.working_dir = "/w".into();
    let s = p.spec().unwrap();
    assert_eq!(strings(&s["process"]["args"]), ["/pause", "-v"]);
    assert_eq!(strings(&s["process"]["env"]), ["PATH=/bin"]);
    assert_eq!(s["process"]["cwd"], "/w");
    assert_eq!(s["root"], json!({"path": "rootfs", "readonly": true}));
    assert_eq!(s["process"]["noNewPrivileges"], true);
    assert!(s["process"].get("rlimits").is_none());
}

#[test]
fn sandbox_image_without_a_command_is_invalid() {
    let mut p = Pod::new(pod());
    p.image.entrypoint.clear();
    assert_eq!(p.spec().unwrap_err().code, protocol::Code::InvalidArgument);
}

#[test]
fn sandbox_gets_new_namespaces_and_the_pods_netns_and_hostname() {
    let s = Pod::new(pod()).spec().unwrap();
    assert_eq!(
        namespaces(&s),
        [
            ("pid".into(), None),
            ("ipc".into(), None),
            ("uts".into(), None),
            ("mount".into(), None),
            ("network".into(), Some("/run/netns/p1".into())),
        ]
    );
    assert_eq!(s["hostname"], "web-0");
}

#[test]
fn sandbox_with_host_network_has_no_network_or_uts_namespace_nor_hostname() {
    let sc = LinuxSandboxSecurityContext {
        namespace_options: Some(ns(
            NamespaceMode::Node,
            NamespaceMode::Pod,
            NamespaceMode::Pod,
        )),
        ..Default::default()
    };
    let s = Pod::new(with_pod_security(pod(), sc)).spec().unwrap();
    assert_eq!(ns_path(&s, "network"), None);
    assert_eq!(ns_path(&s, "uts"), None);
    assert!(s.get("hostname").is_none());
}

#[test]
fn sandbox_with_host_pid_and_ipc_has_neither_namespace() {
    let sc = LinuxSandboxSecurityContext {
        namespace_options: Some(ns(
            NamespaceMode::Pod,
            NamespaceMode::Node,
            NamespaceMode::Node,
        )),
        ..Default::default()
    };
    let s = Pod::new(with_pod_security(pod(), sc)).spec().unwrap();
    assert_eq!(ns_path(&s, "pid"), None);
    assert_eq!(ns_path(&s, "ipc"), None);
    assert!(ns_path(&s, "uts").is_some());
}

#[test]
fn sandbox_without_a_netns_and_without_host_network_is_an_internal_error() {
    let p = Pod::new(pod());
    let e = sandbox(&SandboxInput {
        id: "p1",
        config: &p.config,
        image: &p.image,
        etc: &p.etc,
        netns: None,
        files: &p.files,
        cgroup_driver: "cgroupfs",
        node: &p.node,
        seccomp_profile: None,
    })
    .unwrap_err();
    assert_eq!(e.code, protocol::Code::Internal);
}

#[test]
fn sandbox_binds_the_pods_shm_and_resolv_conf_read_only() {
    let s = Pod::new(pod()).spec().unwrap();
    let shm = mount_at(&s, "/dev/shm");
    assert_eq!(shm["source"], "/pods/p1/shm");
    let options = json!(["rbind", "ro", "nosuid", "nodev", "noexec"]);
    assert_eq!(shm["options"], options);
    let resolv = mount_at(&s, "/etc/resolv.conf");
    assert_eq!(resolv["source"], "/pods/p1/resolv.conf");
    assert_eq!(resolv["options"], options);
    let shm_count = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["destination"] == "/dev/shm")
        .count();
    assert_eq!(shm_count, 1);
}

#[test]
fn sandbox_with_host_ipc_binds_the_hosts_shm() {
    let mut p = Pod::new(pod());
    p.files.shm = None;
    assert_eq!(
        mount_at(&p.spec().unwrap(), "/dev/shm")["source"],
        "/dev/shm"
    );
}

#[test]
fn sandbox_keeps_the_default_masked_paths_and_has_no_cgroupfs() {
    let s = Pod::new(pod()).spec().unwrap();
    assert_eq!(s["linux"]["maskedPaths"], json!(defaults::MASKED_PATHS));
    assert_eq!(s["linux"]["readonlyPaths"], json!(defaults::READONLY_PATHS));
    assert!(
        !s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/sys/fs/cgroup")
    );
}

#[test]
fn sandbox_gets_the_pods_sysctls() {
    let mut config = pod();
    config.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        ]),
        ..Default::default()
    });
    let s = Pod::new(config).spec().unwrap();
    assert_eq!(
        s["linux"]["sysctl"],
        json!({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"})
    );
    assert!(
        Pod::new(pod()).spec().unwrap()["linux"]
            .get("sysctl")
            .is_none()
    );
}

#[test]
fn sandbox_gets_two_cpu_shares_and_a_clamped_oom_score() {
    let mut p = Pod::new(pod());
    let s = p.spec().unwrap();
    assert_eq!(s["linux"]["resources"]["cpu"], json!({"shares": 2}));
    assert_eq!(s["process"]["oomScoreAdj"], -998);
    p.node.oom_score_adj = 0;
    assert_eq!(p.spec().unwrap()["process"]["oomScoreAdj"], 0);
}

#[test]
fn sandbox_cgroups_path_is_under_the_pods_parent() {
    let mut config = pod();
    config.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: "/kubepods/burstable/poduid-1".into(),
        ..Default::default()
    });
    let s = Pod::new(config).spec().unwrap();
    assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/burstable/poduid-1/p1");
    assert_eq!(
        Pod::new(pod()).spec().unwrap()["linux"]["cgroupsPath"],
        "/k8s.io/p1"
    );
}

#[test]
fn sandbox_annotations_name_the_pod() {
    let s = Pod::new(pod()).spec().unwrap();
    let a = &s["annotations"];
    assert_eq!(a[annotations::CONTAINER_TYPE], "sandbox");
    assert_eq!(a[annotations::SANDBOX_ID], "p1");
    assert_eq!(a[annotations::SANDBOX_NAME], "web");
    assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
    assert_eq!(a[annotations::SANDBOX_UID], "uid-1");
    assert_eq!(a[annotations::SANDBOX_LOG_DIRECTORY], "/var/log/pods/web");
    assert!(a.get(annotations::SANDBOX_MEMORY).is_none());
}

#[test]
fn sandbox_annotations_carry_the_pods_resources() {
    let mut config = pod();
    config.linux = Some(LinuxPodSandboxConfig {
        resources: Some(LinuxContainerResources {
            cpu_period: 100000,
            cpu_quota: 50000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        }),
        ..Default::default()
    });
    let a = Pod::new(config).spec().unwrap()["annotations"].clone();
    assert_eq!(a[annotations::SANDBOX_CPU_PERIOD], "100000");
    assert_eq!(a[annotations::SANDBOX_CPU_QUOTA], "50000");
    assert_eq!(a[annotations::SANDBOX_CPU_SHARES], "512");
    assert_eq!(a[annotations::SANDBOX_MEMORY], (1u64 << 30).to_string());
}

#[test]
fn sandbox_runs_as_the_images_user_or_the_pods() {
    let s = Pod::new(pod()).spec().unwrap();
    assert_eq!(
        s["process"]["user"],
        json!({"uid": 65535, "gid": 65535, "additionalGids": [65535]})
    );
    let sc = LinuxSandboxSecurityContext {
        run_as_user: Some(Int64Value { value: 1000 }),
        run_as_group: Some(Int64Value { value: 3000 }),
        supplemental_groups: vec![5000, 4000],
        ..Default::default()
    };
    let s = Pod::new(with_pod_security(pod(), sc)).spec().unwrap();
    assert_eq!(
        s["process"]["user"],
        json!({"uid": 1000, "gid": 3000, "additionalGids": [3000, 4000, 5000]})
    );
}

#[test]
fn sandbox_run_as_group_alone_is_invalid() {
    let sc = LinuxSandboxSecurityContext {
        run_as_group: Some(Int64Value { value: 3000 }),
        ..Default::default()
    };
    let e = Pod::new(with_pod_security(pod(), sc)).spec().unwrap_err();
    assert_eq!(e.code, protocol::Code::InvalidArgument);
}

#[test]
fn sandbox_seccomp_follows_the_pod() {
    assert!(
        Pod::new(pod()).spec().unwrap()["linux"]
            .get("seccomp")
            .is_none()
    );
    let sc = LinuxSandboxSecurityContext {
        seccomp: Some(SecurityProfile::default()),
        ..Default::default()
    };
    let s = Pod::new(with_pod_security(pod(), sc.clone()))
        .spec()
        .unwrap();
    assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    let privileged = LinuxSandboxSecurityContext {
        privileged: true,
        ..sc
    };
    let s = Pod::new(with_pod_security(pod(), privileged))
        .spec()
        .unwrap();
    assert!(s["linux"].get("seccomp").is_none());
}

#[test]
fn sandbox_localhost_seccomp_uses_the_read_contents() {
    let sc = LinuxSandboxSecurityContext {
        seccomp: Some(SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "/profiles/p.json".into(),
        }),
        ..Default::default()
    };
    let config = with_pod_security(pod(), sc);
    assert_eq!(
        sandbox_seccomp_file(&config).unwrap().as_deref(),
        Some("/profiles/p.json")
    );
    let mut p = Pod::new(config);
    p.seccomp = Some(r#"{"defaultAction":"SCMP_ACT_LOG"}"#.into());
    assert_eq!(
        p.spec().unwrap()["linux"]["seccomp"],
        json!({"defaultAction": "SCMP_ACT_LOG"})
    );
}

fn userns_opts(mode: NamespaceMode, mapped: bool) -> NamespaceOption {
    let mapping = vec![protocol::grpc::runtime::v1::IdMapping {
        host_id: 100000,
        container_id: 0,
        length: 65536,
    }];
    NamespaceOption {
        userns_options: Some(UserNamespace {
            mode: mode as i32,
            uids: if mapped { mapping.clone() } else { vec![] },
            gids: if mapped { mapping } else { vec![] },
        }),
        ..Default::default()
    }
}

fn userns_pod() -> PodSandboxConfig {
    with_pod_security(
        pod(),
        LinuxSandboxSecurityContext {
            namespace_options: Some(userns_opts(NamespaceMode::Pod, true)),
            ..Default::default()
        },
    )
}

#[test]
fn sandbox_user_namespace_modes_are_checked() {
    let with_userns = |mode: NamespaceMode, mapped: bool| {
        let sc = LinuxSandboxSecurityContext {
            namespace_options: Some(userns_opts(mode, mapped)),
            ..Default::default()
        };
        Pod::new(with_pod_security(pod(), sc)).spec()
    };
    assert!(with_userns(NamespaceMode::Node, false).is_ok());
    assert!(with_userns(NamespaceMode::Pod, true).is_ok());
    // POD without mappings, NODE with them, CONTAINER and TARGET: each named.
    for (mode, mapped, want) in [
        (
            NamespaceMode::Pod,
            false,
            "userns_options.uids: mode POD needs exactly one mapping",
        ),
        (NamespaceMode::Node, true, "userns_options: mode NODE"),
        (
            NamespaceMode::Container,
            false,
            "mode CONTAINER is not supported",
        ),
        (NamespaceMode::Target, false, "mode TARGET is not supported"),
    ] {
        let e = with_userns(mode, mapped).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument, "{e}");
        assert!(
            e.message
                .contains("PodSandboxConfig.linux.security_context.namespace_options")
                && e.message.contains(want),
            "{e}"
        );
    }
}

#[test]
fn a_pod_user_namespace_is_new_and_owns_a_new_network_namespace() {
    let s = Pod::new(userns_pod()).spec().unwrap();
    let ns = namespaces(&s);
    assert_eq!(ns[0], ("user".to_string(), None), "user first: {ns:?}");
    // runc makes the network namespace inside the user namespace: no path.
    assert_eq!(ns_path(&s, "network"), Some(None));
    for kind in ["pid", "ipc", "uts", "mount"] {
        assert_eq!(ns_path(&s, kind), Some(None), "{kind}");
    }
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    assert_eq!(s["linux"]["uidMappings"], map);
    assert_eq!(s["linux"]["gidMappings"], map);
    assert_eq!(s["hostname"], "web-0");
    // The read-only binds keep the flags a user namespace locks.
    for dst in ["/dev/shm", "/etc/resolv.conf"] {
        assert_eq!(
            strings(&mount_at(&s, dst)["options"]),
            ["rbind", "ro", "nosuid", "nodev", "noexec"],
            "{dst}"
        );
    }
    // Without a user namespace: no user namespace, no mappings, the pinned network one.
    let plain = Pod::new(pod()).spec().unwrap();
    assert_eq!(ns_path(&plain, "user"), None);
    assert!(plain["linux"].get("uidMappings").is_none());
    assert_eq!(
        ns_path(&plain, "network"),
        Some(Some("/run/netns/p1".to_string()))
    );
}

#[test]
fn a_pod_user_namespace_needs_the_pods_own_network_pid_and_ipc() {
    for (opts, code, want) in [
        (
            ns(NamespaceMode::Node, NamespaceMode::Pod, NamespaceMode::Pod),
            protocol::Code::Unimplemented,
            "user_namespaces_host_network",
        ),
        (
            ns(NamespaceMode::Pod, NamespaceMode::Node, NamespaceMode::Pod),
            protocol::Code::InvalidArgument,
            "own pid namespace",
        ),
        (
            ns(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Node),
            protocol::Code::InvalidArgument,
            "own ipc namespace",
        ),
    ] {
        let mut o = opts;
        o.userns_options = userns_opts(NamespaceMode::Pod, true).userns_options;
        let config = with_pod_security(
            pod(),
            LinuxSandboxSecurityContext {
                namespace_options: Some(o),
                ..Default::default()
            },
        );
        let e = Pod::new(config).spec().unwrap_err();
        assert_eq!(e.code, code, "{e}");
        assert!(e.message.contains(want), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Containers: the process

#[test]
fn args_default_to_the_images_entrypoint_and_cmd() {
    let s = Ctr::new(config()).spec().unwrap();
    assert_eq!(strings(&s["process"]["args"]), ["/entry", "serve"]);
}

#[test]
fn command_replaces_the_entrypoint_and_drops_cmd() {
    let mut c = config();
    c.command = vec!["/bin/sh".into()];
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(strings(&s["process"]["args"]), ["/bin/sh"]);
}

#[test]
fn args_replace_cmd_and_keep_the_entrypoint() {
    let mut c = config();
    c.args = vec!["--debug".into()];
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(strings(&s["process"]["args"]), ["/entry", "--debug"]);
}

#[test]
fn command_and_args_are_both_used() {
    let mut c = config();
    c.command = vec!["sh".into(), "-c".into()];
    c.args = vec!["echo hi".into()];
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(strings(&s["process"]["args"]), ["sh", "-c", "echo hi"]);
}

#[test]
fn an_empty_string_entrypoint_means_none() {
    let mut t = Ctr::new(config());
    t.image.entrypoint = vec![String::new()];
    assert_eq!(strings(&t.spec().unwrap()["process"]["args"]), ["serve"]);
}

#[test]
fn no_command_anywhere_is_invalid() {
    let mut t = Ctr::new(config());
    t.image.entrypoint.clear();
    t.image.cmd.clear();
    let e = t.spec().unwrap_err();
    assert_eq!(e.code, protocol::Code::InvalidArgument);
    assert!(e.message.contains("no command"), "{e}");
}

#[test]
fn env_is_path_hostname_image_then_config_with_config_winning() {
    let mut c = config();
    c.envs = vec![
        KeyValue {
            key: "MODE".into(),
            value: "config".into(),
        },
        KeyValue {
            key: "EXTRA".into(),
            value: "".into(),
        },
    ];
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(
        strings(&s["process"]["env"]),
        ["PATH=/app/bin", "HOSTNAME=web-0", "MODE=config", "EXTRA="]
    );
}

#[test]
fn path_defaults_when_the_image_sets_none() {
    let mut t = Ctr::new(config());
    t.image.env.clear();
    let env = strings(&t.spec().unwrap()["process"]["env"]);
    assert_eq!(env[0], defaults::DEFAULT_PATH_ENV);
    assert_eq!(env[1], "HOSTNAME=web-0");
}

#[test]
fn a_tty_gets_term_and_a_terminal() {
    let mut c = config();
    c.tty = true;
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(s["process"]["terminal"], true);
    assert!(strings(&s["process"]["env"]).contains(&"TERM=xterm".to_string()));
    let s = Ctr::new(config()).spec().unwrap();
    assert_eq!(s["process"]["terminal"], false);
    assert!(
        !strings(&s["process"]["env"])
            .iter()
            .any(|e| e.starts_with("TERM="))
    );
}

#[test]
fn merge_env_replaces_appends_and_unsets() {
    let mut env = vec!["A=1".to_string(), "B=2".to_string()];
    merge_env(
        &mut env,
        ["B=3", "C=4", "A", "C=5", "MISSING"].map(String::from),
    );
    assert_eq!(env, ["B=3", "C=5"]);
}

#[test]
fn working_dir_is_configs_then_images_then_root() {
    let mut c = config();
    c.working_dir = "/data".into();
    assert_eq!(Ctr::new(c).spec().unwrap()["process"]["cwd"], "/data");
    assert_eq!(Ctr::new(config()).spec().unwrap()["process"]["cwd"], "/srv");
    let mut t = Ctr::new(config());
    t.image.working_dir.clear();
    assert_eq!(t.spec().unwrap()["process"]["cwd"], "/");
}

#[test]
fn containers_may_gain_privileges_unless_no_new_privs() {
    let s = Ctr::new(config()).spec().unwrap();
    assert_eq!(s["process"]["noNewPrivileges"], false);
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            no_new_privs: true,
            ..Default::default()
        },
    );
    assert_eq!(
        Ctr::new(c).spec().unwrap()["process"]["noNewPrivileges"],
        true
    );
}

// ---------------------------------------------------------------------------------------------
// Containers: the user

#[test]
fn default_user_is_root_with_its_groups() {
    let s = Ctr::new(config()).spec().unwrap();
    assert_eq!(
        s["process"]["user"],
        json!({"uid": 0, "gid": 0, "additionalGids": [0]})
    );
}

#[test]
fn the_images_user_name_is_resolved_with_its_groups() {
    let mut t = Ctr::new(config());
    t.image.user = "app".into();
    assert_eq!(
        t.spec().unwrap()["process"]["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000]})
    );
}

#[test]
fn run_as_username_beats_the_image() {
    let mut t = Ctr::new(with_security(
        config(),
        LinuxContainerSecurityContext {
            run_as_username: "nobody".into(),
            ..Default::default()
        },
    ));
    t.image.user = "app".into();
    assert_eq!(t.spec().unwrap()["process"]["user"]["uid"], 65534);
}

#[test]
fn an_unknown_run_as_username_is_invalid_and_named() {
    let t = Ctr::new(with_security(
        config(),
        LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        },
    ));
    let e = t.spec().unwrap_err();
    assert_eq!(e.code, protocol::Code::InvalidArgument);
    assert!(e.message.contains("\"ghost\""), "{e}");
}

#[test]
fn run_as_user_and_group_with_supplemental_groups() {
    let t = Ctr::new(with_security(
        config(),
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            run_as_group: Some(Int64Value { value: 3000 }),
            supplemental_groups: vec![1234, 5678],
            ..Default::default()
        },
    ));
    assert_eq!(
        t.spec().unwrap()["process"]["user"],
        json!({"uid": 1000, "gid": 3000, "additionalGids": [1234, 2000, 3000, 5678]})
    );
}

#[test]
fn strict_supplemental_groups_skip_the_images_memberships() {
    let t = Ctr::new(with_security(
        config(),
        LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
            ..Default::default()
        },
    ));
    assert_eq!(
        t.spec().unwrap()["process"]["user"]["additionalGids"],
        json!([1000, 1234])
    );
}

#[test]
fn run_as_group_without_a_user_is_invalid() {
    let t = Ctr::new(with_security(
        config(),
        LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 3000 }),
            ..Default::default()
        },
    ));
    assert_eq!(t.spec().unwrap_err().code, protocol::Code::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Containers: security

#[test]
fn default_caps_and_masked_paths_come_from_the_config() {
    let s = Ctr::new(config()).spec().unwrap();
    assert_eq!(
        s["process"]["capabilities"]["bounding"],
        json!(DEFAULT_CAPS)
    );
    assert_eq!(s["linux"]["maskedPaths"], json!([]));
    assert_eq!(s["linux"]["readonlyPaths"], json!([]));
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            masked_paths: vec!["/bin/ls".into()],
            readonly_paths: vec!["/tmp".into()],
            ..Default::default()
        },
    );
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(s["linux"]["maskedPaths"], json!(["/bin/ls"]));
    assert_eq!(s["linux"]["readonlyPaths"], json!(["/tmp"]));
}

#[test]
fn added_capabilities_reach_the_spec() {
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["NET_RAW".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let caps = strings(&Ctr::new(c).spec().unwrap()["process"]["capabilities"]["effective"]);
    assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
    assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
}

fn privileged_ctr() -> Ctr {
    let mut t = Ctr::new(with_security(
        config(),
        LinuxContainerSecurityContext {
            privileged: true,
            masked_paths: vec!["/proc/kcore".into()],
            seccomp: Some(SecurityProfile::default()),
            ..Default::default()
        },
    ));
    t.pod = with_pod_security(
        pod(),
        LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        },
    );
    t
}

#[test]
fn a_privileged_container_needs_a_privileged_pod() {
    let mut t = privileged_ctr();
    t.pod = pod();
    let e = t.spec().unwrap_err();
    assert_eq!(e.code, protocol::Code::InvalidArgument);
    assert!(e.message.contains("privileged"), "{e}");
}

#[test]
fn privileged_means_all_caps_no_masks_no_seccomp_all_devices() {
    let mut t = privileged_ctr();
    t.host.host_devices = vec![DeviceNode {
        relative: "loop0".into(),
        kind: DeviceKind::Block,
        major: 7,
        minor: 0,
        mode: 0o660,
        uid: 0,
        gid: 6,
    }];
    let s = t.spec().unwrap();
    assert_eq!(
        s["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        41
    );
    assert!(s["linux"].get("maskedPaths").is_none());
    assert!(s["linux"].get("readonlyPaths").is_none());
    assert!(s["linux"].get("seccomp").is_none());
    assert_eq!(
        s["linux"]["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    assert_eq!(s["linux"]["devices"][0]["path"], "/dev/loop0");
    assert!(strings(&mount_at(&s, "/sys")["options"]).contains(&"rw".to_string()));
}

#[test]
fn a_read_only_rootfs_is_read_only_and_so_are_the_etc_files() {
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        },
    );
    let s = Ctr::new(c).spec().unwrap();
    assert_eq!(s["root"]["readonly"], true);
    assert_eq!(mount_at(&s, "/etc/hosts")["options"][2], "ro");
    assert_eq!(mount_at(&s, "/dev/shm")["options"][2], "rw");
    assert!(
        Ctr::new(config()).spec().unwrap()["root"]
            .get("readonly")
            .is_none()
    );
}

#[test]
fn seccomp_is_unconfined_unless_asked() {
    assert!(
        Ctr::new(config()).spec().unwrap()["linux"]
            .get("seccomp")
            .is_none()
    );
}

#[test]
fn runtime_default_seccomp_follows_the_containers_caps() {
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile::default()),
            capabilities: Some(Capability {
                add_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let s = Ctr::new(c).spec().unwrap();
    let allowed = strings(&s["linux"]["seccomp"]["syscalls"][0]["names"]);
    assert!(allowed.contains(&"sethostname".to_string()));
}

#[test]
fn localhost_seccomp_from_the_deprecated_path_uses_the_read_contents() {
    #[allow(deprecated)]
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            seccomp_profile_path: "localhost//profiles/block.json".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        container_seccomp_file(&c).unwrap().as_deref(),
        Some("/profiles/block.json")
    );
    let mut t = Ctr::new(c);
    t.host.seccomp_profile = Some(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#.into());
    assert_eq!(
        t.spec().unwrap()["linux"]["seccomp"]["defaultAction"],
        "SCMP_ACT_ALLOW"
    );
    assert_eq!(container_seccomp_file(&config()).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Containers: namespaces

#[test]
fn containers_join_the_pods_namespaces() {
    let s = Ctr::new(config()).spec().unwrap();
    assert_eq!(
        namespaces(&s),
        [
            ("pid".into(), Some("/proc/4242/ns/pid".into())),
            ("ipc".into(), Some("/proc/4242/ns/ipc".into())),
            ("uts".into(), Some("/proc/4242/ns/uts".into())),
            ("mount".into(), None),
            ("network".into(), Some("/run/netns/p1".into())),
        ]
    );
    assert!(s.get("hostname").is_none());
}

#[test]
fn without_a_pinned_netns_containers_join_the_pauses() {
    let mut t = Ctr::new(config());
    t.netns = None;
    assert_eq!(
        ns_path(&t.spec().unwrap(), "network"),
        Some(Some("/proc/4242/ns/net".into()))
    );
}

fn with_pid_mode(mode: NamespaceMode) -> ContainerConfig {
    with_security(
        config(),
        LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: mode as i32,
                target_id: "other".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

#[test]
fn pid_mode_container_gets_a_new_pid_namespace() {
    let s = Ctr::new(with_pid_mode(NamespaceMode::Container))
        .spec()
        .unwrap();
    assert_eq!(ns_path(&s, "pid"), Some(None));
}

#[test]
fn pid_mode_node_uses_the_hosts() {
    let s = Ctr::new(with_pid_mode(NamespaceMode::Node)).spec().unwrap();
    assert_eq!(ns_path(&s, "pid"), None);
}

#[test]
fn pid_mode_target_joins_the_target_container() {
    let mut t = Ctr::new(with_pid_mode(NamespaceMode::Target));
    t.target_pid = Some(777);
    assert_eq!(
        ns_path(&t.spec().unwrap(), "pid"),
        Some(Some("/proc/777/ns/pid".into()))
    );
    t.target_pid = None;
    let e = t.spec().unwrap_err();
    assert_eq!(e.code, protocol::Code::InvalidArgument);
    assert!(e.message.contains("\"other\""), "{e}");
}

#[test]
fn a_host_pid_pod_gives_pod_mode_containers_the_hosts_pid_namespace() {
    let mut t = Ctr::new(config());
    t.pod = with_pod_security(
        pod(),
        LinuxSandboxSecurityContext {
            namespace_options: Some(ns(
                NamespaceMode::Pod,
                NamespaceMode::Node,
                NamespaceMode::Pod,
            )),
            ..Default::default()
        },
    );
    assert_eq!(ns_path(&t.spec().unwrap(), "pid"), None);
}

#[test]
fn host_network_and_ipc_pods_leave_those_namespaces_to_the_host() {
    let mut t = Ctr::new(config());
    t.netns = None;
    t.files.shm = None;
    t.pod = with_pod_security(
        pod(),
        LinuxSandboxSecurityContext {
            namespace_options: Some(ns(
                NamespaceMode::Node,
                NamespaceMode::Pod,
                NamespaceMode::Node,
            )),
            ..Default::default()
        },
    );
    let s = t.spec().unwrap();
    for kind in ["network", "uts", "ipc"] {
        assert_eq!(ns_path(&s, kind), None, "{kind}");
    }
    assert_eq!(mount_at(&s, "/dev/shm")["source"], "/dev/shm");
}

#[test]
fn joining_a_stopped_pause_is_a_failed_precondition() {
    let mut t = Ctr::new(config());
    t.sandbox_pid = 0;
    assert_eq!(
        t.spec().unwrap_err().code,
        protocol::Code::FailedPrecondition
    );
}

#[test]
fn cgroup_v2_gives_unprivileged_containers_a_cgroup_namespace() {
    let mut t = Ctr::new(config());
    assert_eq!(ns_path(&t.spec().unwrap(), "cgroup"), None);
    t.node.cgroup_v2 = true;
    assert_eq!(ns_path(&t.spec().unwrap(), "cgroup"), Some(None));
    let mut p = privileged_ctr();
    p.node.cgroup_v2 = true;
    assert_eq!(ns_path(&p.spec().unwrap(), "cgroup"), None);
}

#[test]
fn container_user_namespace_modes_are_checked() {
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                userns_options: Some(UserNamespace {
                    mode: NamespaceMode::Target as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    assert_eq!(
        Ctr::new(c).spec().unwrap_err().code,
        protocol::Code::InvalidArgument
    );
}

fn userns_ctr() -> Ctr {
    let c = with_security(
        config(),
        LinuxContainerSecurityContext {
            namespace_options: Some(userns_opts(NamespaceMode::Pod, true)),
            ..Default::default()
        },
    );
    let mut t = Ctr::new(c);
    t.pod = userns_pod();
    t
}

#[test]
fn a_container_joins_its_pods_user_namespace_with_the_mappings() {
    let s = userns_ctr().spec().unwrap();
    let ns = namespaces(&s);
    assert_eq!(
        ns[0],
        ("user".to_string(), Some("/proc/4242/ns/user".to_string())),
        "the pod's user namespace first: {ns:?}"
    );
    assert_eq!(
        ns_path(&s, "network"),
        Some(Some("/run/netns/p1".to_string()))
    );
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    assert_eq!(s["linux"]["uidMappings"], map);
    assert_eq!(s["linux"]["gidMappings"], map);
    // The pod's files are idmapped binds (they belong to the pod's root); /dev/shm is not.
    for dst in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
        let m = mount_at(&s, dst);
        assert_eq!(m["uidMappings"], map, "{dst}");
        assert_eq!(m["gidMappings"], map, "{dst}");
    }
    assert!(mount_at(&s, "/dev/shm").get("uidMappings").is_none());
    // A container outside one gets none of it.
    let plain = Ctr::new(config()).spec().unwrap();
    assert_eq!(ns_path(&plain, "user"), None);
    assert!(mount_at(&plain, "/etc/hosts").get("uidMappings").is_none());
}

#[test]
fn a_container_must_ask_for_its_pods_user_namespace() {
    // The pod has one, the container asks for the host's: refused, and the other way round.
    let mut t = userns_ctr();
    t.config = config();
    let e = t.spec().unwrap_err();
    assert_eq!(e.code, protocol::Code::InvalidArgument);
    assert!(
        e.message.contains("ContainerConfig.linux.security_context"),
        "{e}"
    );
    let mut t = userns_ctr();
    t.pod = pod();
    assert_eq!(t.spec().unwrap_err().code, protocol::Code::InvalidArgument);
}

#[test]
fn read_only_binds_in_a_user_namespace_keep_locked_flags() {
    let mut t = userns_ctr();
    t.config.mounts = vec![Mount {
        host_path: "/srv/data".into(),
        container_path: "/data".into(),
        readonly: true,
        uid_mappings: vec![protocol::grpc::runtime::v1::IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        }],
        gid_mappings: vec![protocol::grpc::runtime::v1::IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        }],
        ..Default::default()
    }];
    t.host.mounts.insert(
        "/srv/data".into(),
        HostPath {
            resolved: "/srv/data".into(),
            mount_point: "/srv".into(),
            propagation: Propagation::Private,
            locked: vec!["nosuid".into(), "nodev".into(), "noatime".into()],
        },
    );
    t.host.pod_files_locked = vec!["noexec".into()];
    if let Some(sc) = t
        .config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.readonly_rootfs = true;
    }
    let s = t.spec().unwrap();
    let data = mount_at(&s, "/data");
    assert_eq!(
        strings(&data["options"]),
        ["rbind", "rprivate", "ro", "nosuid", "nodev", "noatime"]
    );
    assert_eq!(data["uidMappings"][0]["hostID"], 100000);
    assert_eq!(
        strings(&mount_at(&s, "/etc/hosts")["options"]),
        ["rbind", "rprivate", "ro", "noexec"]
    );
    // Read-write binds are not remounted: nothing added.
    assert_eq!(
        strings(&mount_at(&s, "/dev/shm")["options"]),
        ["rbind", "rprivate", "rw"]
    );
}

// ---------------------------------------------------------------------------------------------
// Containers: mounts, devices, resources, annotations

#[test]
fn config_mounts_need_host_facts_and_use_them() {
    let mut c = config();
    c.mounts = vec![Mount {
        host_path: "/srv/data".into(),
        container_path: "/data".into(),
        propagation: protocol::grpc::runtime::v1::MountPropagation::PropagationHostToContainer
            as i32,
        ..Default::default()
    }];
    let mut t = Ctr::new(c);
    assert_eq!(t.spec().unwrap_err().code, protocol::Code::Internal);
    t.host.mounts.insert(
        "/srv/data".into(),
        HostPath {
            resolved: "/mnt/disk/data".into(),
            mount_point: "/mnt/disk".into(),
            propagation: Propagation::Shared,
            locked: vec![],
        },
    );
    let s = t.spec().unwrap();
    assert_eq!(mount_at(&s, "/data")["source"], "/mnt/disk/data");
    assert_eq!(s["linux"]["rootfsPropagation"], "rslave");
    assert_eq!(mount_at(&s, "/sys/fs/cgroup")["type"], "cgroup");
}

#[test]
fn devices_get_nodes_and_cgroup_rules_after_the_defaults() {
    let mut c = config();
    c.devices = vec![Device {
        host_path: "/dev/fuse".into(),
        container_path: "/dev/fuse".into(),
        permissions: "rwm".into(),
    }];
    let mut t = Ctr::new(c);
    t.host.devices.insert(
        "/dev/fuse".into(),
        vec![DeviceNode {
            relative: String::new(),
            kind: DeviceKind::Char,
            major: 10,
            minor: 229,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }],
    );
    let s = t.spec().unwrap();
    assert_eq!(s["linux"]["devices"][0]["path"], "/dev/fuse");
    let rules = s["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
    assert_eq!(
        rules.last().unwrap(),
        &json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"})
    );
    assert!(
        Ctr::new(config()).spec().unwrap()["linux"]
            .get("devices")
            .is_none()
    );
}

fn with_resources(r: LinuxContainerResources) -> ContainerConfig {
    let mut c = config();
    c.linux.get_or_insert_with(Default::default).resources = Some(r);
    c
}

#[test]
fn resources_and_oom_score_reach_the_spec() {
    let mut t = Ctr::new(with_resources(LinuxContainerResources {
        cpu_shares: 256,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: -900,
        ..Default::default()
    }));
    t.node.oom_score_adj = -500;
    let s = t.spec().unwrap();
    assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 256);
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(s["linux"]["resources"]["memory"]["swap"], 64 << 20);
    assert_eq!(s["process"]["oomScoreAdj"], -500);
}

#[test]
fn no_resources_means_no_oom_score() {
    let s = Ctr::new(config()).spec().unwrap();
    assert!(s["process"].get("oomScoreAdj").is_none());
    assert!(s["linux"]["resources"].get("cpu").is_none());
}

#[test]
fn an_out_of_range_oom_score_is_invalid() {
    let t = Ctr::new(with_resources(LinuxContainerResources {
        oom_score_adj: 2000,
        ..Default::default()
    }));
    assert_eq!(t.spec().unwrap_err().code, protocol::Code::InvalidArgument);
}

#[test]
fn container_cgroups_path_is_under_the_pods_parent() {
    let mut t = Ctr::new(config());
    t.pod.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: "/kubepods/poduid-1".into(),
        ..Default::default()
    });
    assert_eq!(
        t.spec().unwrap()["linux"]["cgroupsPath"],
        "/kubepods/poduid-1/c1"
    );
}

#[test]
fn container_annotations_name_the_pod_container_and_image() {
    let a = Ctr::new(config()).spec().unwrap()["annotations"].clone();
    assert_eq!(a[annotations::CONTAINER_TYPE], "container");
    assert_eq!(a[annotations::SANDBOX_ID], "p1");
    assert_eq!(a[annotations::SANDBOX_NAME], "web");
    assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
    assert_eq!(a[annotations::SANDBOX_UID], "uid-1");
    assert_eq!(a[annotations::CONTAINER_NAME], "app");
    assert_eq!(a[annotations::IMAGE_NAME], "docker.io/library/app:1");
}

#[test]
fn container_sysctls_are_the_pods_not_repeated() {
    let mut t = Ctr::new(config());
    t.pod.linux = Some(LinuxPodSandboxConfig {
        sysctls: HashMap::from([("net.core.somaxconn".to_string(), "1024".to_string())]),
        ..Default::default()
    });
    assert!(t.spec().unwrap()["linux"].get("sysctl").is_none());
}

// ---------------------------------------------------------------------------------------------
// Exec and updates

#[test]
fn exec_process_is_the_containers_with_another_command() {
    let s = Ctr::new(config()).spec().unwrap();
    let p = exec_process(&s, &["ls".into(), "-l".into()], false).unwrap();
    assert_eq!(strings(&p["args"]), ["ls", "-l"]);
    assert_eq!(p["terminal"], false);
    assert_eq!(p["user"], s["process"]["user"]);
    assert_eq!(p["env"], s["process"]["env"]);
}

#[test]
fn exec_with_a_tty_gets_term() {
    let s = Ctr::new(config()).spec().unwrap();
    let p = exec_process(&s, &["sh".into()], true).unwrap();
    assert_eq!(p["terminal"], true);
    assert!(strings(&p["env"]).contains(&"TERM=xterm".to_string()));
    assert!(exec_process(&json!({}), &["sh".into()], false).is_err());
}

#[test]
fn update_resources_follow_the_create_rules() {
    let r = LinuxContainerResources {
        memory_limit_in_bytes: 100,
        ..Default::default()
    };
    let node = Node {
        swap: false,
        ..Node::default()
    };
    assert_eq!(
        linux_resources(&r, &node),
        json!({"memory": {"limit": 100}})
    );
}
