//! Pod networking: network namespaces and CNI plugins, as containerd 1.6's CRI plugin does it
//! (pkg/cri/server/sandbox_run.go with go-cni and libcni), on Debian's containernetworking
//! plugins. The sandbox code calls this; it knows nothing of pods beyond a [`PodNetwork`].
//!
//! ```text
//!  RunPodSandbox                                     StopPodSandbox / RemovePodSandbox
//!    │ NetNs::create(<root>/netns/<pod>)               │ cni.teardown(&pod, stored result)
//!    │   (unshare on a throw-away thread,              │   DEL pod network, plugins in reverse,
//!    │    bind-mount its ns/net onto the file)         │   every plugin even if one fails;
//!    │ cni.setup(&pod)                                 │   DEL loopback; drop the cache file
//!    │   ADD loopback (lo)                             │ NetNs::remove(<root>/netns/<pod>)
//!    │   ADD pod network: plugin 1 → result ─┐         │   (umount MNT_DETACH + unlink)
//!    │        prevResult ◀───────────────────┘         ▼
//!    │   ... plugin n → final result
//!    │   cache: <cache>/results/<network>-<pod>-eth0   start-up: netns::list(<root>/netns)
//!    │   any failure: DEL everything, return the error   minus the pods corrald knows →
//!    ▼                                                   teardown + NetNs::remove
//!  SetupResult { ip, additional_ips, raw, .. } ─▶ stored with the pod record in corrald
//! ```
//!
//! The network config is the first file of `conf_dir` in lexical order (`*.conflist`, `*.conf`,
//! `*.json`; a single-plugin `.conf` becomes a one-plugin list). As in containerd, a broken first
//! file is an error naming it — it is not skipped in favour of the next one, which would put pods
//! on a network the operator did not choose. [`Cni::status`] re-reads it only when that file's
//! name, size, mtime or inode changed, so kubelet's frequent Status calls cost a readdir and a
//! stat.
//!
//! The final ADD result is kept twice: the caller stores [`SetupResult::raw`] with the pod
//! record, and a libcni-format cache file (written atomically) covers a crash between ADD and
//! that store. DEL and CHECK take the caller's copy first, then the cache. Plugins run with
//! `tokio::process`, each in its own process group, killed with the group after a deadline; no
//! lock is held while one runs. The spec forbids concurrent operations on one pod; the caller
//! serialises per pod, different pods may run in parallel.
//!
//! Example (error handling shortened):
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use cri::network::{Cni, NetNs, PodNetwork, PortMapping};
//!
//! let cni = Cni::new("/etc/cni/net.d", vec!["/usr/lib/cni".into()], "/var/lib/corral-cri/cni");
//! cni.status()?; // NetworkReady=false (reason NetworkPluginNotReady) while this fails
//! let ns = NetNs::create("/var/lib/corral-cri/netns/pod1")?;
//! let mut pod = PodNetwork::new("pod1", ns.path());
//! pod.namespace = "default".into();
//! pod.name = "web".into();
//! pod.uid = "6f1b...".into();
//! pod.port_mappings.push(PortMapping::tcp(8080, 80));
//! let up = cni.setup(&pod).await?; // up.ip, up.additional_ips; store up.raw with the pod
//! cni.check(&pod, Some(&up.raw)).await?;
//! cni.teardown(&pod, Some(&up.raw)).await?;
//! NetNs::remove(ns.path())?;
//! # Ok(()) }
//! ```

mod cache;
mod cni;
mod conf;
mod error;
mod exec;
pub mod netns;
mod result;
mod template;

pub use cache::{atomic_write, replace_file};
pub use cni::{
    Bandwidth, Cni, DEFAULT_IFNAME, DEFAULT_TIMEOUT, Dns, IpRange, NETWORK_NOT_READY_REASON,
    PodNetwork, PortMapping, SetupResult, TEMPLATE_CONF_NAME,
};
pub use conf::{NetworkConfig, PluginConfig};
pub use error::Error;
pub use exec::Command;
pub use netns::NetNs;
pub use result::{Cidr, CniResult, Interface, IpConfig, ResultDns, Route, select_pod_ips};
pub use template::render_template;
