//! What corral-cri reads from the host for the spec generator, which does no I/O itself
//! ([`crate::spec`]): the node's facts once at start-up ([`node`]), and before each
//! CreateContainer what is at the config's mount and device paths and the seccomp profile it
//! names ([`container_facts`]). Blocking file system work: call it off the async runtime.
//!
//! As containerd does, a missing mount source is created as a directory (0755): kubelet's
//! hostPath volumes of type DirectoryOrCreate rely on the runtime for it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use protocol::grpc::runtime::v1::ContainerConfig;

use crate::error::{Context, Error, Result};
use crate::spec::{self, DeviceKind, DeviceNode, HostFacts, HostPath, Node, Propagation};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The node's facts. Whatever cannot be read is assumed restrictive (and logged).
pub fn node() -> Node {
    let oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            log::warn!("cannot read /proc/self/oom_score_adj; assuming 0");
            0
        });
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .unwrap_or_else(|| {
            log::warn!("cannot read CapEff from /proc/self/status; assuming the default set");
            spec::DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
        });
    let controllers = std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers"));
    let cgroup_v2 = controllers.is_ok();
    let (swap, hugetlb) = match &controllers {
        Ok(list) => {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| unified_cgroup(&s))
                .unwrap_or_else(|| "/".into());
            let dir = Path::new(CGROUP_ROOT).join(own.trim_start_matches('/'));
            (
                dir.join("memory.swap.max").exists(),
                list.split_whitespace().any(|c| c == "hugetlb"),
            )
        }
        Err(_) => (
            Path::new(CGROUP_ROOT)
                .join("memory/memory.memsw.limit_in_bytes")
                .exists(),
            Path::new(CGROUP_ROOT).join("hugetlb").is_dir(),
        ),
    };
    Node {
        oom_score_adj,
        caps,
        cgroup_v2,
        swap,
        hugetlb,
        recursive_read_only: rro_supported(),
        user_namespaces: userns_supported(),
    }
}

/// The kernel version whose overlayfs takes detached (`open_tree`) mounts as layers, which is
/// how our shim hands overlayfs idmapped layers without attaching them anywhere (the
/// detached-mount case of `clone_private_mount`, Linux 6.15). Idmapped mounts (5.12) and
/// idmapped overlay layers (5.19) are older.
const IDMAPPED_LAYERS_KERNEL: (u32, u32) = (6, 15);

/// Whether pods can have user namespaces here: the kernel has them (and allows some) and our
/// shim can idmap the root filesystem's layers on it. Whether a runtime handler can is
/// `crate::system`'s question.
fn userns_supported() -> bool {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let ok = kernel_at_least(&kernel, IDMAPPED_LAYERS_KERNEL)
        && Path::new("/proc/self/ns/user").exists()
        && max > 0;
    if !ok {
        log::info!(
            "pods cannot have user namespaces here: kernel {} (needs {}.{}), \
             user.max_user_namespaces {max}",
            kernel.trim(),
            IDMAPPED_LAYERS_KERNEL.0,
            IDMAPPED_LAYERS_KERNEL.1
        );
    }
    ok
}

/// Whether runc makes `rro` (recursive read-only) binds here: runc lists the option in `runc
/// features` (1.1 and later) and the kernel has mount_setattr (5.12 and later). What Status
/// reports to kubelet and what CreateContainer accepts.
fn rro_supported() -> bool {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !kernel_at_least(&kernel, (5, 12)) {
        return false;
    }
    let out = match std::process::Command::new("runc")
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        _ => return false,
    };
    runc_lists_rro(&out)
}

fn runc_lists_rro(features_json: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(features_json)
        .ok()
        .and_then(|v| v["mountOptions"].as_array().cloned())
        .is_some_and(|opts| opts.iter().any(|o| o == "rro"))
}

/// `6.1.0-18-amd64` ≥ (major, minor)?
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// The capability names set in `CapEff` (hex bits, in [`spec::ALL_CAPS`] order).
fn effective_caps(status: &str) -> Option<Vec<String>> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(
        spec::ALL_CAPS
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, c)| c.to_string())
            .collect(),
    )
}

/// Our cgroup v2 path (`0::/path` in /proc/self/cgroup).
fn unified_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// What the spec of a container with `config` needs from the host. `userns_pod_dir`: the
/// directory of the pod's files, for a container in a user namespace (whose read-only binds
/// must keep their source mount's locked flags).
pub fn container_facts(
    config: &ContainerConfig,
    userns_pod_dir: Option<&Path>,
) -> Result<HostFacts> {
    let mut facts = HostFacts::default();
    let mountinfo = if config.mounts.is_empty() && userns_pod_dir.is_none() {
        String::new()
    } else {
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?
    };
    for m in &config.mounts {
        // Validation (empty paths, image mounts, ...) is the spec's; skip what it rejects.
        if m.host_path.is_empty() || facts.mounts.contains_key(&m.host_path) {
            continue;
        }
        let hp = host_path(Path::new(&m.host_path), &mountinfo)
            .with_context(|| format!("mount source {}", m.host_path))?;
        facts.mounts.insert(m.host_path.clone(), hp);
    }
    if let Some(dir) = userns_pod_dir {
        facts.pod_files_locked = locked_options(dir, &mountinfo);
    }
    for d in &config.devices {
        if d.host_path.is_empty() || facts.devices.contains_key(&d.host_path) {
            continue;
        }
        let nodes = devices_at(Path::new(&d.host_path))
            .with_context(|| format!("device {}", d.host_path))?;
        facts.devices.insert(d.host_path.clone(), nodes);
    }
    let privileged = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged {
        facts.host_devices = walk_devices(Path::new("/dev"), "").context("list /dev")?;
    }
    if let Some(path) = spec::container_seccomp_file(config)? {
        facts.seccomp_profile = Some(read_seccomp(&path)?);
    }
    Ok(facts)
}

/// A seccomp profile file; a missing one is InvalidArgument (the pod names it).
pub fn read_seccomp(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        let message = format!("read seccomp profile {path}: {e}");
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::invalid(message),
            _ => Error::new(Error::from(e).code, message),
        }
    })
}

/// A mount source: created when missing, symlinks resolved, and its mount's propagation.
fn host_path(path: &Path, mountinfo: &str) -> Result<HostPath> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .context("create it")?;
        }
        Err(e) => return Err(Error::from(e).context("stat")),
    }
    let resolved = std::fs::canonicalize(path).context("resolve symlinks")?;
    let (mount_point, propagation) = mount_of(&resolved, mountinfo).ok_or_else(|| {
        Error::internal(format!(
            "{} is on no mount in /proc/self/mountinfo",
            resolved.display()
        ))
    })?;
    let locked = locked_options(&resolved, mountinfo);
    Ok(HostPath {
        resolved,
        mount_point,
        propagation,
        locked,
    })
}

/// The mount `path` lies on (the deepest mount point above it; the last of mounts stacked on
/// one point) and how it propagates.
fn mount_of(path: &Path, mountinfo: &str) -> Option<(PathBuf, Propagation)> {
    let fields = mount_line(path, mountinfo)?;
    let optional = fields.iter().skip(6).take_while(|f| **f != "-");
    let mut propagation = Propagation::Private;
    for f in optional {
        if f.starts_with("shared:") {
            propagation = Propagation::Shared;
        } else if f.starts_with("master:") && propagation == Propagation::Private {
            propagation = Propagation::Slave;
        }
    }
    Some((PathBuf::from(unescape(fields[4])), propagation))
}

/// The fields of the mountinfo line of the mount `path` lies on (see [`mount_of`]).
fn mount_line<'a>(path: &Path, mountinfo: &'a str) -> Option<Vec<&'a str>> {
    let mut best: Option<(usize, Vec<&str>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).map(|p| PathBuf::from(unescape(p))) else {
            continue;
        };
        if fields.len() < 6 || !path.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        if best.as_ref().is_some_and(|(d, _)| *d > depth) {
            continue;
        }
        best = Some((depth, fields));
    }
    best.map(|(_, f)| f)
}

/// The flags of the mount `path` lies on that a bind of it keeps in a user namespace, as
/// runc options: the kernel locks nosuid, nodev, noexec and the atime mode of every mount a
/// less privileged user namespace inherits, and refuses a remount (runc remounts read-only
/// binds) that would drop one. runc 1.1.5 remounts with the spec's options only, so they
/// must be there. Empty when `path` is on no mount.
pub fn locked_options(path: &Path, mountinfo: &str) -> Vec<String> {
    let Some(fields) = mount_line(path, mountinfo) else {
        return Vec::new();
    };
    let opts: Vec<&str> = fields[5].split(',').collect();
    let mut out: Vec<String> = ["nosuid", "nodev", "noexec", "noatime", "nodiratime"]
        .into_iter()
        .filter(|o| opts.contains(o))
        .map(str::to_string)
        .collect();
    // relatime is what a remount without an atime option asks for; neither relatime nor
    // noatime shown means strictatime.
    if !opts.contains(&"relatime") && !opts.contains(&"noatime") {
        out.push("strictatime".into());
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The device nodes at `path`: the node itself, or every node in a directory tree.
fn devices_at(path: &Path) -> Result<Vec<DeviceNode>> {
    let resolved = std::fs::canonicalize(path).context("resolve symlinks")?;
    let meta = std::fs::metadata(&resolved).context("stat")?;
    if meta.is_dir() {
        return walk_devices(&resolved, "");
    }
    match node_of(&meta, "") {
        Some(n) => Ok(vec![n]),
        None => Err(Error::invalid(format!(
            "{} is not a character or block device",
            resolved.display()
        ))),
    }
}

/// Directories that hold no devices of the host's own, or other filesystems (containerd's
/// list: pts, shm, fd, mqueue and some container managers' private directories).
const SKIPPED_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

fn walk_devices(dir: &Path, prefix: &str) -> Result<Vec<DeviceNode>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("read {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        // Entries vanish while we look (udev): skip them rather than fail the container.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                out.extend(walk_devices(&e.path(), &relative)?);
            }
        } else if name != "console"
            && let Some(n) = node_of(&meta, &relative)
        {
            out.push(n);
        }
    }
    Ok(out)
}

fn node_of(meta: &std::fs::Metadata, relative: &str) -> Option<DeviceNode> {
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode {
        relative: relative.to_string(),
        kind,
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

#[cfg(test)]
mod tests {
    use protocol::grpc::runtime::v1::{Device, Mount};

    use super::*;

    #[test]
    fn rro_needs_runc_and_kernel_support() {
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 12)));
        assert!(kernel_at_least("5.12.0", (5, 12)));
        assert!(!kernel_at_least("5.10.0-28-amd64", (5, 12)));
        assert!(!kernel_at_least("garbage", (5, 12)));
        assert!(runc_lists_rro(br#"{"mountOptions": ["ro", "rro", "rrw"]}"#));
        assert!(!runc_lists_rro(br#"{"mountOptions": ["ro"]}"#));
        assert!(!runc_lists_rro(b"not json"));
    }

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
40 22 0:40 / /mnt/slave rw master:7 - tmpfs none rw
41 22 0:41 / /mnt/private rw - tmpfs none rw
42 22 0:42 / /mnt/both rw shared:9 master:3 - tmpfs none rw
43 41 0:43 / /mnt/private/sub\\040dir rw shared:12 - tmpfs none rw
44 41 0:44 / /mnt/private rw - tmpfs none rw
";

    #[test]
    fn the_deepest_mount_decides_propagation() {
        let m = |p: &str| mount_of(Path::new(p), MOUNTINFO).unwrap();
        assert_eq!(m("/home/x"), (PathBuf::from("/"), Propagation::Shared));
        assert_eq!(m("/mnt/slave/a"), ("/mnt/slave".into(), Propagation::Slave));
        assert_eq!(
            m("/mnt/private/a"),
            ("/mnt/private".into(), Propagation::Private)
        );
        assert_eq!(m("/mnt/both"), ("/mnt/both".into(), Propagation::Shared));
        assert_eq!(
            m("/mnt/private/sub dir/x"),
            ("/mnt/private/sub dir".into(), Propagation::Shared)
        );
        // A path component, not a string prefix.
        assert_eq!(m("/mnt/slaves").0, PathBuf::from("/"));
    }

    #[test]
    fn locked_flags_of_the_mount_below_a_path() {
        let info = "1 0 0:1 / / rw,relatime shared:1 - ext4 a rw\n\
                    2 1 0:2 / /run rw,nosuid,nodev,noexec,relatime - tmpfs b rw\n\
                    3 1 0:3 / /data ro,noatime,nodiratime - xfs c rw\n\
                    4 1 0:4 / /strict rw,nosuid - tmpfs d rw\n";
        let l = |p: &str| locked_options(Path::new(p), info);
        assert!(
            l("/var/lib/x").is_empty(),
            "relatime is the remount default"
        );
        assert_eq!(l("/run/pods/p1"), ["nosuid", "nodev", "noexec"]);
        assert_eq!(l("/data/v"), ["noatime", "nodiratime"]);
        assert_eq!(l("/strict"), ["nosuid", "strictatime"]);
        assert!(locked_options(Path::new("/x"), "").is_empty());
    }

    #[test]
    fn the_top_of_stacked_mounts_counts() {
        let info = "1 0 0:1 / / rw shared:1 - ext4 a rw\n2 1 0:2 / /m rw shared:2 - tmpfs b rw\n\
                    3 1 0:3 / /m rw - tmpfs c rw\n";
        assert_eq!(
            mount_of(Path::new("/m/x"), info).unwrap().1,
            Propagation::Private
        );
    }

    #[test]
    fn capabilities_from_capeff_bits() {
        let caps = effective_caps("Name:\tx\nCapEff:\t0000000000000001\n").unwrap();
        assert_eq!(caps, ["CAP_CHOWN"]);
        let caps = effective_caps("CapEff:\t000001ffffffffff\n").unwrap();
        assert_eq!(caps.len(), 41);
        assert!(effective_caps("CapPrm:\t0\n").is_none());
    }

    #[test]
    fn unified_cgroup_line() {
        assert_eq!(
            unified_cgroup("12:cpu:/x\n0::/system.slice/corral.service\n").unwrap(),
            "/system.slice/corral.service"
        );
        assert!(unified_cgroup("12:cpu:/x\n").is_none());
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain\\0"), "/plain\\0");
    }

    #[test]
    fn missing_mount_sources_are_created_and_symlinks_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let missing = dir.path().join("new/deeper");
        let config = ContainerConfig {
            mounts: vec![
                Mount {
                    host_path: link.to_string_lossy().into(),
                    container_path: "/a".into(),
                    ..Default::default()
                },
                Mount {
                    host_path: missing.to_string_lossy().into(),
                    container_path: "/b".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let f = container_facts(&config, None).unwrap();
        let real = std::fs::canonicalize(&target).unwrap();
        assert_eq!(f.mounts[link.to_str().unwrap()].resolved, real);
        assert!(missing.is_dir());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&missing).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(f.host_devices.is_empty() && f.seccomp_profile.is_none());
    }

    #[test]
    fn dev_null_is_a_char_device_and_a_file_is_not_a_device() {
        let n = devices_at(Path::new("/dev/null")).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].kind, n[0].major, n[0].minor),
            (DeviceKind::Char, 1, 3)
        );
        assert_eq!(n[0].relative, "");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = devices_at(&file).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        let config = ContainerConfig {
            devices: vec![Device {
                host_path: dir.path().join("nope").to_string_lossy().into(),
                container_path: "/dev/x".into(),
                permissions: "rw".into(),
            }],
            ..Default::default()
        };
        let e = container_facts(&config, None).unwrap_err();
        assert_eq!(e.code, protocol::Code::NotFound);
        assert!(e.message.contains("nope"), "{e}");
    }

    #[test]
    fn a_directory_of_devices_keeps_relative_names_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("regular"), "").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("sub/null")).unwrap();
        // No mknod without root: an empty result from a tree with no device nodes.
        assert!(devices_at(dir.path()).unwrap().is_empty());
        let dev = walk_devices(Path::new("/dev"), "").unwrap();
        assert!(dev.iter().any(|n| n.relative == "null" && n.major == 1));
        assert!(!dev.iter().any(|n| n.relative.starts_with("pts/")));
    }

    #[test]
    fn a_missing_seccomp_profile_is_invalid_and_named() {
        let e = read_seccomp("/nonexistent/profile.json").unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("/nonexistent/profile.json"), "{e}");
    }

    #[test]
    fn node_facts_are_read() {
        let n = node();
        assert!((-1000..=1000).contains(&n.oom_score_adj));
        assert!(n.caps.iter().all(|c| spec::ALL_CAPS.contains(&c.as_str())));
    }
}
