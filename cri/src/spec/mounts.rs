//! A container's mounts (containerd's `containerMounts` and `customopts.WithMounts`).
//!
//! - The pod's files are bind-mounted at /etc/hostname, /etc/hosts, /etc/resolv.conf
//!   (read-only when the rootfs is) and /dev/shm (the pod's shm; the host's with host IPC),
//!   unless the config mounts something at that path itself.
//! - Config mounts are binds of the host path with symlinks resolved (by the caller), `rbind`
//!   plus the propagation (`rprivate`, `rslave`, `rshared`) plus `ro`/`rw` (plus `rro` for
//!   recursive read-only). rslave needs the host path on a shared or slave mount, rshared on
//!   a shared one; the container's root then becomes rslave or rshared
//!   (`linux.rootfsPropagation`), or nothing would propagate through it.
//! - Binds go shallowest first, so /a is mounted before /a/b. A default mount (/proc, /dev,
//!   ...) at a path the binds cover is dropped, and with /dev bound everything under /dev too.
//! - The cgroup filesystem is mounted read-only at /sys/fs/cgroup; privileged containers get
//!   /sys and /sys/fs/cgroup read-write.
//! - Image volumes (the image config's `Volumes`) get no mount: writes there land in the
//!   container's writable layer, which lives exactly as long as containerd's per-container
//!   volume directories would (containerd's `ignore_image_defined_volumes = true`). The one
//!   difference: with a read-only rootfs those paths are read-only too.

use std::collections::{HashMap, HashSet};

use protocol::grpc::runtime::v1::{Mount, MountPropagation};
use serde_json::{Value, json};

use super::defaults::cgroup_mount;
use super::{HostPath, Propagation, SandboxFiles};
use crate::error::{Error, Result};

/// A container's mounts and the root propagation they need.
#[derive(Debug, PartialEq)]
pub struct Planned {
    pub mounts: Vec<Value>,
    pub rootfs_propagation: Option<&'static str>,
}

/// One bind to make.
struct Bind {
    dst: String,
    src: String,
    readonly: bool,
    propagation: MountPropagation,
    recursive_read_only: bool,
    /// The source mount's locked flags ([`super::HostPath::locked`]).
    locked: Vec<String>,
    /// `uidMappings` and `gidMappings`: an idmapped bind (see `userns::mount_mappings`).
    idmap: Option<(Value, Value)>,
}

pub const ETC_HOSTNAME: &str = "/etc/hostname";
pub const ETC_HOSTS: &str = "/etc/hosts";
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
pub const DEV_SHM: &str = "/dev/shm";

/// Everything a container mounts, starting from the default mounts in `defaults`.
pub struct Request<'a> {
    pub config: &'a [Mount],
    pub files: &'a SandboxFiles,
    pub facts: &'a HashMap<String, HostPath>,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// runc and the kernel can make binds read-only recursively.
    pub recursive_read_only: bool,
    /// The pod's user namespace, the container's too: read-only binds carry their source
    /// mount's locked flags, or runc's read-only remount fails (EPERM), and the pod's files
    /// are idmapped binds (as containerd 2 makes them), so that they belong to the pod's root.
    pub userns: Option<super::PodUserns>,
    /// The locked flags of the mount the pod's files are on.
    pub pod_files_locked: &'a [String],
}

pub fn plan(r: &Request, defaults: Vec<Value>) -> Result<Planned> {
    let mut binds = Vec::new();
    for m in r.config {
        binds.push(config_bind(m, r)?);
    }
    let covered: HashSet<String> = binds.iter().map(|b| b.dst.clone()).collect();
    let shm = r
        .files
        .shm
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEV_SHM.to_string());
    let files_idmap = r.userns.map(|u| u.to_json());
    for (dst, src, readonly, idmap) in [
        (
            ETC_HOSTNAME,
            r.files.hostname.to_string_lossy().into_owned(),
            r.readonly_rootfs,
            files_idmap.clone(),
        ),
        (
            ETC_HOSTS,
            r.files.hosts.to_string_lossy().into_owned(),
            r.readonly_rootfs,
            files_idmap.clone(),
        ),
        (
            ETC_RESOLV_CONF,
            r.files.resolv_conf.to_string_lossy().into_owned(),
            r.readonly_rootfs,
            files_idmap.clone(),
        ),
        // An empty tmpfs, 1777: nothing to own (containerd 2 does not idmap it either).
        (DEV_SHM, shm, false, None),
    ] {
        if !covered.contains(dst) {
            binds.push(Bind {
                dst: dst.to_string(),
                src,
                readonly,
                propagation: MountPropagation::PropagationPrivate,
                recursive_read_only: false,
                locked: r.pod_files_locked.to_vec(),
                idmap,
            });
        }
    }
    binds.sort_by_key(|b| b.dst.matches('/').count());

    let all: HashSet<&str> = binds.iter().map(|b| b.dst.as_str()).collect();
    let dev_bound = all.contains("/dev");
    let mut mounts: Vec<Value> = defaults
        .into_iter()
        .chain([cgroup_mount()])
        .filter(|m| {
            let dst = clean(m["destination"].as_str().unwrap_or_default());
            let under_bound_dev = dev_bound && dst.starts_with("/dev/");
            !(all.contains(dst.as_str()) || under_bound_dev)
        })
        .collect();
    if r.privileged {
        for m in &mut mounts {
            if m["type"] == "sysfs" || m["type"] == "cgroup" {
                set_rw(m);
            }
        }
    }

    let mut rootfs_propagation = None;
    for b in &binds {
        let propagation = match b.propagation {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationHostToContainer => {
                if rootfs_propagation != Some("rshared") {
                    rootfs_propagation = Some("rslave");
                }
                "rslave"
            }
            MountPropagation::PropagationBidirectional => {
                rootfs_propagation = Some("rshared");
                "rshared"
            }
        };
        let mut options = vec!["rbind", propagation, if b.readonly { "ro" } else { "rw" }];
        if b.recursive_read_only {
            options.push("rro");
        }
        // A read-write bind is not remounted, so it keeps its flags without being told.
        if r.userns.is_some() && b.readonly {
            options.extend(b.locked.iter().map(String::as_str));
        }
        let mut bind = json!({"destination": b.dst, "type": "bind", "source": b.src,
                              "options": options});
        if let Some((uids, gids)) = &b.idmap {
            bind["uidMappings"] = uids.clone();
            bind["gidMappings"] = gids.clone();
        }
        mounts.push(bind);
    }
    Ok(Planned {
        mounts,
        rootfs_propagation,
    })
}

fn config_bind(m: &Mount, r: &Request) -> Result<Bind> {
    let dst = clean(&m.container_path);
    if m.container_path.is_empty() || !dst.starts_with('/') {
        return Err(Error::invalid(format!(
            "mount of {:?}: container_path {:?} is not an absolute path",
            m.host_path, m.container_path
        )));
    }
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(Error::unimplemented(format!(
            "mount at {dst}: image volumes (Mount.image) are not supported by corral-cri"
        )));
    }
    let idmap = super::userns::mount_mappings(
        &m.uid_mappings,
        &m.gid_mappings,
        &format!("mount at {dst}"),
    )?;
    if m.host_path.is_empty() {
        return Err(Error::invalid(format!(
            "mount at {dst}: host_path is empty"
        )));
    }
    let propagation = MountPropagation::try_from(m.propagation).map_err(|_| {
        Error::invalid(format!(
            "mount at {dst}: unknown propagation {}",
            m.propagation
        ))
    })?;
    if m.recursive_read_only {
        if !m.readonly {
            return Err(Error::invalid(format!(
                "mount at {dst}: recursive_read_only needs readonly"
            )));
        }
        if propagation != MountPropagation::PropagationPrivate {
            return Err(Error::invalid(format!(
                "mount at {dst}: recursive_read_only needs private propagation, not {}",
                propagation.as_str_name()
            )));
        }
        if !r.recursive_read_only {
            return Err(Error::unimplemented(format!(
                "mount at {dst}: recursive read-only mounts are not supported on this node"
            )));
        }
    }
    let facts = r.facts.get(&m.host_path).ok_or_else(|| {
        Error::internal(format!(
            "mount at {dst}: host path {} was not inspected",
            m.host_path
        ))
    })?;
    let needs_shared = propagation == MountPropagation::PropagationBidirectional;
    let needs_shared_or_slave = propagation == MountPropagation::PropagationHostToContainer;
    if (needs_shared && facts.propagation != Propagation::Shared)
        || (needs_shared_or_slave && facts.propagation == Propagation::Private)
    {
        return Err(Error::precondition(format!(
            "mount at {dst}: {} is on mount {}, which is not {}: {} propagation cannot work",
            m.host_path,
            facts.mount_point.display(),
            if needs_shared {
                "shared"
            } else {
                "shared or slave"
            },
            propagation.as_str_name()
        )));
    }
    Ok(Bind {
        dst,
        src: facts.resolved.to_string_lossy().into_owned(),
        readonly: m.readonly,
        propagation,
        recursive_read_only: m.recursive_read_only,
        locked: facts.locked.clone(),
        idmap,
    })
}

fn set_rw(m: &mut Value) {
    if let Some(opts) = m["options"].as_array_mut() {
        for o in opts {
            if o == "ro" {
                *o = json!("rw");
            }
        }
    }
}

/// A path made lexically clean: no empty, `.` or `..` components, no trailing slash
/// (Go's `filepath.Clean`, which containerd compares destinations with).
pub fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use protocol::grpc::runtime::v1::{IdMapping, ImageSpec};

    use super::*;
    use crate::spec::defaults::cri_base;

    fn files(shm: bool) -> SandboxFiles {
        SandboxFiles {
            hostname: "/pod/hostname".into(),
            hosts: "/pod/hosts".into(),
            resolv_conf: "/pod/resolv.conf".into(),
            shm: shm.then(|| PathBuf::from("/pod/shm")),
        }
    }

    fn mount(host: &str, dst: &str) -> Mount {
        Mount {
            host_path: host.into(),
            container_path: dst.into(),
            ..Default::default()
        }
    }

    fn facts(config: &[Mount], propagation: Propagation) -> HashMap<String, HostPath> {
        config
            .iter()
            .map(|m| {
                (
                    m.host_path.clone(),
                    HostPath {
                        resolved: PathBuf::from(format!("/resolved{}", m.host_path)),
                        mount_point: "/".into(),
                        propagation,
                        locked: vec!["nosuid".into()],
                    },
                )
            })
            .collect()
    }

    fn run(config: &[Mount], f: &SandboxFiles, ro: bool, privileged: bool) -> Result<Planned> {
        let facts = facts(config, Propagation::Shared);
        plan(
            &Request {
                config,
                files: f,
                facts: &facts,
                readonly_rootfs: ro,
                privileged,
                recursive_read_only: true,
                userns: None,
                pod_files_locked: &[],
            },
            defaults(),
        )
    }

    fn defaults() -> Vec<Value> {
        cri_base()["mounts"].as_array().unwrap().clone()
    }

    fn find<'a>(p: &'a Planned, dst: &str) -> Vec<&'a Value> {
        p.mounts
            .iter()
            .filter(|m| m["destination"] == dst)
            .collect()
    }

    fn options(m: &Value) -> Vec<&str> {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect()
    }

    #[test]
    fn pod_files_are_bound_read_write_by_default() {
        let p = run(&[], &files(true), false, false).unwrap();
        for (dst, src) in [
            ("/etc/hostname", "/pod/hostname"),
            ("/etc/hosts", "/pod/hosts"),
            ("/etc/resolv.conf", "/pod/resolv.conf"),
            ("/dev/shm", "/pod/shm"),
        ] {
            let m = find(&p, dst);
            assert_eq!(m.len(), 1, "{dst}");
            assert_eq!(m[0]["source"], src);
            assert_eq!(m[0]["type"], "bind");
            assert_eq!(options(m[0]), ["rbind", "rprivate", "rw"]);
        }
        assert_eq!(p.rootfs_propagation, None);
    }

    #[test]
    fn a_read_only_rootfs_makes_the_etc_files_read_only_but_not_shm() {
        let p = run(&[], &files(true), true, false).unwrap();
        assert_eq!(
            options(find(&p, "/etc/hosts")[0]),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(options(find(&p, "/etc/resolv.conf")[0])[2], "ro");
        assert_eq!(options(find(&p, "/etc/hostname")[0])[2], "ro");
        assert_eq!(options(find(&p, "/dev/shm")[0])[2], "rw");
    }

    #[test]
    fn host_ipc_binds_the_hosts_shm() {
        let p = run(&[], &files(false), false, false).unwrap();
        let shm = find(&p, "/dev/shm");
        assert_eq!(shm.len(), 1, "the default tmpfs is replaced");
        assert_eq!(shm[0]["source"], "/dev/shm");
    }

    #[test]
    fn config_mounts_replace_pod_files_at_the_same_path() {
        let config = [
            mount("/my/hosts", "/etc/hosts/"),
            mount("/my/resolv", "/etc/resolv.conf"),
        ];
        let p = run(&config, &files(true), false, false).unwrap();
        let hosts = find(&p, "/etc/hosts");
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], "/resolved/my/hosts");
        assert_eq!(
            find(&p, "/etc/resolv.conf")[0]["source"],
            "/resolved/my/resolv"
        );
        assert_eq!(find(&p, "/etc/hostname")[0]["source"], "/pod/hostname");
    }

    #[test]
    fn config_mounts_use_the_resolved_source_and_readonly() {
        let mut m = mount("/data", "/var/data");
        m.readonly = true;
        let p = run(&[m], &files(true), false, false).unwrap();
        let d = find(&p, "/var/data");
        assert_eq!(d[0]["source"], "/resolved/data");
        assert_eq!(options(d[0]), ["rbind", "rprivate", "ro"]);
    }

    #[test]
    fn binds_go_shallowest_first() {
        let config = [mount("/b", "/a/b/c"), mount("/a", "/a")];
        let p = run(&config, &files(true), false, false).unwrap();
        let binds: Vec<&str> = p
            .mounts
            .iter()
            .filter(|m| m["type"] == "bind")
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let a = binds.iter().position(|d| *d == "/a").unwrap();
        let abc = binds.iter().position(|d| *d == "/a/b/c").unwrap();
        assert!(a < abc, "{binds:?}");
        assert!(binds.iter().position(|d| *d == "/dev/shm").unwrap() < abc);
    }

    #[test]
    fn a_bound_dev_drops_every_default_under_dev() {
        let p = run(&[mount("/hostdev", "/dev")], &files(true), false, false).unwrap();
        for dst in ["/dev/pts", "/dev/mqueue"] {
            assert!(find(&p, dst).is_empty(), "{dst}");
        }
        assert_eq!(find(&p, "/dev").len(), 1);
        assert_eq!(find(&p, "/dev")[0]["type"], "bind");
        // /dev/shm is still the pod's: it is bound after /dev.
        assert_eq!(find(&p, "/dev/shm")[0]["type"], "bind");
    }

    #[test]
    fn a_config_mount_over_a_default_replaces_it() {
        let p = run(&[mount("/x", "/proc")], &files(true), false, false).unwrap();
        let proc_ = find(&p, "/proc");
        assert_eq!(proc_.len(), 1);
        assert_eq!(proc_[0]["type"], "bind");
    }

    #[test]
    fn cgroupfs_is_mounted_read_only_and_sysfs_stays_read_only() {
        let p = run(&[], &files(true), false, false).unwrap();
        assert_eq!(find(&p, "/sys/fs/cgroup")[0]["type"], "cgroup");
        assert!(options(find(&p, "/sys/fs/cgroup")[0]).contains(&"ro"));
        assert!(options(find(&p, "/sys")[0]).contains(&"ro"));
    }

    #[test]
    fn privileged_gets_sysfs_and_cgroupfs_read_write() {
        let p = run(&[], &files(true), false, true).unwrap();
        for dst in ["/sys", "/sys/fs/cgroup"] {
            let o = options(find(&p, dst)[0]);
            assert!(o.contains(&"rw") && !o.contains(&"ro"), "{dst}: {o:?}");
        }
    }

    #[test]
    fn rslave_needs_a_shared_or_slave_host_mount_and_sets_the_root() {
        let mut m = mount("/m", "/m");
        m.propagation = MountPropagation::PropagationHostToContainer as i32;
        let config = [m];
        for (host, ok) in [
            (Propagation::Shared, true),
            (Propagation::Slave, true),
            (Propagation::Private, false),
        ] {
            let facts = facts(&config, host);
            let r = plan(
                &Request {
                    config: &config,
                    files: &files(true),
                    facts: &facts,
                    readonly_rootfs: false,
                    privileged: false,
                    recursive_read_only: false,
                    userns: None,
                    pod_files_locked: &[],
                },
                defaults(),
            );
            match r {
                Ok(p) => {
                    assert!(ok, "{host:?}");
                    assert_eq!(p.rootfs_propagation, Some("rslave"));
                    assert_eq!(options(find(&p, "/m")[0]), ["rbind", "rslave", "rw"]);
                }
                Err(e) => {
                    assert!(!ok, "{host:?}: {e}");
                    assert_eq!(e.code, protocol::Code::FailedPrecondition);
                    assert!(e.message.contains("shared or slave"), "{e}");
                }
            }
        }
    }

    #[test]
    fn rshared_needs_a_shared_host_mount_and_wins_over_rslave() {
        let mut a = mount("/a", "/a");
        a.propagation = MountPropagation::PropagationHostToContainer as i32;
        let mut b = mount("/b", "/b");
        b.propagation = MountPropagation::PropagationBidirectional as i32;
        let p = run(&[b.clone(), a], &files(true), false, false).unwrap();
        assert_eq!(p.rootfs_propagation, Some("rshared"));
        assert_eq!(options(find(&p, "/b")[0])[1], "rshared");

        let config = [b];
        let facts = facts(&config, Propagation::Slave);
        let e = plan(
            &Request {
                config: &config,
                files: &files(true),
                facts: &facts,
                readonly_rootfs: false,
                privileged: false,
                recursive_read_only: false,
                userns: None,
                pod_files_locked: &[],
            },
            defaults(),
        )
        .unwrap_err();
        assert!(e.message.contains("not shared"), "{e}");
    }

    #[test]
    fn recursive_read_only_adds_rro_when_valid() {
        let mut m = mount("/r", "/r");
        m.readonly = true;
        m.recursive_read_only = true;
        let p = run(&[m], &files(true), false, false).unwrap();
        assert_eq!(
            options(find(&p, "/r")[0]),
            ["rbind", "rprivate", "ro", "rro"]
        );
    }

    #[test]
    fn recursive_read_only_needs_readonly_private_and_node_support() {
        let mut m = mount("/r", "/r");
        m.recursive_read_only = true;
        let e = run(&[m.clone()], &files(true), false, false).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("needs readonly"), "{e}");

        m.readonly = true;
        m.propagation = MountPropagation::PropagationHostToContainer as i32;
        let e = run(&[m.clone()], &files(true), false, false).unwrap_err();
        assert!(e.message.contains("private propagation"), "{e}");

        m.propagation = 0;
        let config = [m];
        let facts = facts(&config, Propagation::Private);
        let e = plan(
            &Request {
                config: &config,
                files: &files(true),
                facts: &facts,
                readonly_rootfs: false,
                privileged: false,
                recursive_read_only: false,
                userns: None,
                pod_files_locked: &[],
            },
            defaults(),
        )
        .unwrap_err();
        assert_eq!(e.code, protocol::Code::Unimplemented);
    }

    #[test]
    fn bad_mounts_are_rejected_clearly() {
        let e = run(&[mount("/x", "relative")], &files(true), false, false).unwrap_err();
        assert!(e.message.contains("not an absolute path"), "{e}");
        let e = run(&[mount("", "/x")], &files(true), false, false).unwrap_err();
        assert!(e.message.contains("host_path is empty"), "{e}");

        let mut img = mount("", "/img");
        img.image = Some(ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        let e = run(&[img], &files(true), false, false).unwrap_err();
        assert_eq!(e.code, protocol::Code::Unimplemented);

        let mut idm = mount("/x", "/x");
        idm.uid_mappings = vec![IdMapping {
            host_id: 1000,
            container_id: 0,
            length: 1,
        }];
        let e = run(&[idm], &files(true), false, false).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(
            e.message
                .contains("mount at /x: uid_mappings and gid_mappings"),
            "{e}"
        );

        let mut bad = mount("/x", "/x");
        bad.propagation = 7;
        assert!(run(&[bad], &files(true), false, false).is_err());
    }

    #[test]
    fn a_mount_without_facts_is_an_internal_error() {
        let config = [mount("/x", "/x")];
        let e = plan(
            &Request {
                config: &config,
                files: &files(true),
                facts: &HashMap::new(),
                readonly_rootfs: false,
                privileged: false,
                recursive_read_only: false,
                userns: None,
                pod_files_locked: &[],
            },
            defaults(),
        )
        .unwrap_err();
        assert_eq!(e.code, protocol::Code::Internal);
    }

    #[test]
    fn clean_paths() {
        for (input, want) in [
            ("/etc/hosts/", "/etc/hosts"),
            ("//a//b/./c", "/a/b/c"),
            ("/a/../b", "/b"),
            ("/..", "/"),
            ("a/../..", ".."),
            ("", "."),
            ("/", "/"),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
    }
}
