//! A pod's files on the host, under `<root>/sandboxes/<id>/`: the hostname, hosts and
//! resolv.conf its containers bind-mount, and its /dev/shm (a tmpfs the containers share;
//! not made with the host's IPC namespace, where containers use the host's).
//!
//! What is written follows containerd 1.6: /etc/hosts is the host's, resolv.conf is the pod's
//! DNS config when it has one and the host's otherwise, the hostname is the pod's (the host's
//! with host networking).

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use protocol::grpc::runtime::v1::PodSandboxConfig;

use crate::network::replace_file;
use crate::spec::{self, SandboxFiles};

const SHM_OPTIONS: &str = "mode=1777,size=65536k";

/// Writes the files and mounts /dev/shm. Blocking (files, a mount): run off the runtime.
pub fn setup(dir: &Path, config: &PodSandboxConfig) -> std::io::Result<SandboxFiles> {
    std::fs::create_dir_all(dir)?;
    let files = paths(dir, !spec::host_ipc(config));
    let hostname = if spec::host_network(config) || config.hostname.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string()
    } else {
        config.hostname.clone()
    };
    replace_file(&files.hostname, format!("{hostname}\n").as_bytes(), 0o644)?;
    let hosts = std::fs::read("/etc/hosts").unwrap_or_else(|_| DEFAULT_HOSTS.into());
    replace_file(&files.hosts, &hosts, 0o644)?;
    let resolv = match &config.dns_config {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            resolv_conf(&d.servers, &d.searches, &d.options).into_bytes()
        }
        _ => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    replace_file(&files.resolv_conf, &resolv, 0o644)?;
    if let Some(shm) = &files.shm {
        std::fs::create_dir_all(shm)?;
        if !is_mountpoint(shm)? {
            nix::mount::mount(
                Some("shm"),
                shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(SHM_OPTIONS),
            )
            .map_err(|e| std::io::Error::other(format!("mount tmpfs on {}: {e}", shm.display())))?;
        }
    }
    Ok(files)
}

/// The paths of a pod's files (whether or not they exist yet).
pub fn paths(dir: &Path, own_shm: bool) -> SandboxFiles {
    SandboxFiles {
        hostname: dir.join("hostname"),
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
        shm: own_shm.then(|| dir.join("shm")),
    }
}

/// Unmounts a pod's /dev/shm (every mount stacked there); not mounted is fine. Blocking.
pub fn unmount(shm: &Path) -> std::io::Result<()> {
    while is_mountpoint(shm)? {
        nix::mount::umount2(shm, MntFlags::MNT_DETACH)
            .map_err(|e| std::io::Error::other(format!("unmount {}: {e}", shm.display())))?;
    }
    Ok(())
}

/// Unmounts /dev/shm and removes the directory; nothing there is fine. Blocking.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    unmount(&dir.join("shm"))?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A directory is a mount point when its device differs from its parent's, or (a bind of the
/// same filesystem) when /proc/self/mountinfo lists it.
fn is_mountpoint(p: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let me = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some(parent) = p.parent()
        && std::fs::metadata(parent)?.dev() != me.dev()
    {
        return Ok(true);
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = p.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mount_path(mp) == want))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// resolv.conf for a pod's DNS config.
pub fn resolv_conf(servers: &[String], searches: &[String], options: &[String]) -> String {
    let mut out = String::new();
    if !searches.is_empty() {
        out += &format!("search {}\n", searches.join(" "));
    }
    for s in servers {
        out += &format!("nameserver {s}\n");
    }
    if !options.is_empty() {
        out += &format!("options {}\n", options.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_search_servers_options() {
        let s = resolv_conf(
            &["10.0.0.10".into(), "8.8.8.8".into()],
            &["svc.cluster.local".into(), "cluster.local".into()],
            &["ndots:5".into()],
        );
        assert_eq!(
            s,
            "search svc.cluster.local cluster.local\nnameserver 10.0.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
    }

    #[test]
    fn files_are_written_without_shm_for_host_ipc() {
        use protocol::grpc::runtime::v1::{
            DnsConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
            NamespaceOption,
        };
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("p1");
        let config = PodSandboxConfig {
            hostname: "web-1".into(),
            dns_config: Some(DnsConfig {
                servers: vec!["10.1.1.1".into()],
                ..Default::default()
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        ipc: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = setup(&pod, &config).unwrap();
        assert!(f.shm.is_none());
        assert_eq!(std::fs::read_to_string(&f.hostname).unwrap(), "web-1\n");
        assert_eq!(
            std::fs::read_to_string(&f.resolv_conf).unwrap(),
            "nameserver 10.1.1.1\n"
        );
        assert!(f.hosts.exists());
        remove(&pod).unwrap();
        assert!(!pod.exists());
        remove(&pod).unwrap();
    }
}
