//! RunPodSandbox: a pod's network, files and pause container.
//!
//! ```text
//!  reserve name ─▶ sandbox image (pull if missing) ─▶ pause spec (names the paths below)
//!    ─▶ at once: netns <root>/netns/<id> (unless host network) ─▶ CNI ADD into it
//!              │ files <root>/sandboxes/<id>: hostname, hosts,   ─┐
//!              │   resolv.conf, shm (on disk, found by id)       │
//!              │ corrald container <id> (pause spec, record),     ├─▶ pause task create + start
//!              │   then snapshot <id> on the image's top layer   │   (once the netns is made)
//!    ─▶ CNI's result (IPs) into the SandboxRecord (written to corrald after the answer)
//!    ─▶ in the view as READY
//! ```
//!
//! A pod with a user namespace (`hostUsers: false`) goes one step at a time instead: its
//! network namespace must belong to its user namespace, so runc makes both at the pause's
//! create, and only then is the namespace pinned at `<root>/netns/<id>` and given to CNI,
//! before the pause starts (containerd 2.0's order; see `spec::userns`).
//!
//! Crash safety: every step is named by the pod id, and each is undone by
//! [`Cri::release_sandbox`], which is idempotent and also what StopPodSandbox/RemovePodSandbox
//! and start-up use. A failure undoes everything done so far; a crash leaves either a record
//! (the pod shows NOTREADY and kubelet removes it; its namespace and files may not all exist
//! yet, and the undo takes what is there) or, before the record exists, a network namespace
//! and a directory that start-up finds without a record and removes. A record with a
//! namespace but no CNI result is a pod whose network never came up: NOTREADY too.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::grpc::any;
use protocol::grpc::containerd::services::containers::v1::{Container, container};
use protocol::grpc::containerd::services::tasks::v1::CreateTaskRequest;
use protocol::grpc::corral::cri::v1::SandboxRecord;
use protocol::grpc::runtime::v1::{
    ContainerEventType, PodSandboxConfig, Protocol, RunPodSandboxRequest, RunPodSandboxResponse,
};

use crate::core::Cri;
use crate::corrald::now_nanos;
use crate::error::{Context, Error, Result};
use crate::network::{Dns, NetNs, PodNetwork, PortMapping};
use crate::records;
use crate::spec;
use crate::store::Sandbox;

impl Cri {
    pub async fn run_pod_sandbox(&self, r: RunPodSandboxRequest) -> Result<RunPodSandboxResponse> {
        let config = r
            .config
            .ok_or_else(|| Error::invalid("RunPodSandbox: config is required"))?;
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::invalid("RunPodSandbox: config.metadata is required"))?;
        for (what, v) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if v.is_empty() {
                return Err(Error::invalid(format!(
                    "RunPodSandbox: config.metadata.{what} is empty"
                )));
            }
        }
        validate(&config)?;
        let userns = spec::pod_userns(&config)?;
        let runtime = self
            .cfg
            .runtime(&r.runtime_handler)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "RunPodSandbox: no runtime handler {:?} is configured (have: {})",
                    r.runtime_handler,
                    self.cfg
                        .runtimes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?
            .clone();
        if userns.is_some() && !self.userns_capable(&runtime.runtime_type) {
            return Err(Error::unimplemented(format!(
                "RunPodSandbox: runtime handler {:?} ({}) cannot run pods with a user namespace \
                 (userns_options mode POD): {}",
                r.runtime_handler,
                runtime.runtime_type,
                self.userns_unsupported_why(&runtime.runtime_type)
            )));
        }
        let id = crate::ids::new_id();
        let name = crate::ids::sandbox_name(meta);
        self.store.reserve_name(&name, &id)?;
        let record = SandboxRecord {
            config: Some(config),
            runtime_handler: r.runtime_handler,
            created_at: now_nanos(),
            image: self.cfg.sandbox_image.clone(),
            ..Default::default()
        };
        match self.start_sandbox(&id, record, &runtime.runtime_type).await {
            Ok(s) => {
                let sid = s.id.clone();
                self.store.put_sandbox(s);
                self.emit_sandbox(&sid, ContainerEventType::ContainerCreatedEvent);
                self.emit_sandbox(&sid, ContainerEventType::ContainerStartedEvent);
                Ok(RunPodSandboxResponse {
                    pod_sandbox_id: sid,
                })
            }
            Err(e) => {
                if let Err(undo) = self.release_sandbox(&id, None).await {
                    log::warn!("pod {id}: undo after a failed RunPodSandbox: {undo}");
                }
                self.store.release_name(&name, &id);
                Err(e.context(format!("run pod sandbox {name}")))
            }
        }
    }

    async fn start_sandbox(
        &self,
        id: &str,
        mut record: SandboxRecord,
        runtime_type: &str,
    ) -> Result<Sandbox> {
        let config = record.config.clone().unwrap_or_default();
        let image = self
            .images
            .ensure(&self.cfg.sandbox_image, None)
            .await
            .with_context(|| format!("sandbox image {}", self.cfg.sandbox_image))?;
        // What the spec needs from files, read before anything is set up for the pod.
        let etc = self.images.etc(&image).await?;
        let seccomp_profile = match spec::sandbox_seccomp_file(&config)? {
            Some(path) => Some(
                tokio::task::spawn_blocking(move || crate::host::read_seccomp(&path))
                    .await
                    .map_err(|e| Error::internal(e.to_string()))??,
            ),
            None => None,
        };

        // The namespace's and the files' paths are fixed by the pod id, so the pause spec and
        // the record name them before they exist. The record has the namespace's path before
        // corrald has the record, so a crash from here on leaves a record that accounts for it
        // (and start-up reports the pod NOTREADY until CNI's result is in the record; see
        // `recover`); a namespace or files left without a record are removed at start-up.
        let userns = spec::pod_userns(&config)?;
        let netns = (!spec::host_network(&config)).then(|| self.netns_dir().join(id));
        if let Some(path) = &netns {
            record.netns_path = path.to_string_lossy().into_owned();
        }
        let dir = self.sandbox_dir(id);
        let files = super::files::paths(&dir, !spec::host_ipc(&config));
        let spec = spec::sandbox(&spec::SandboxInput {
            id,
            config: &config,
            image: &image.config,
            etc: &etc,
            netns: netns.as_deref(),
            files: &files,
            cgroup_driver: &self.cfg.cgroup_driver,
            node: &self.node,
            seccomp_profile: seccomp_profile.as_deref(),
        })?;
        let cfg2 = config.clone();
        let make_files = async move {
            tokio::task::spawn_blocking(move || super::files::setup(&dir, &cfg2))
                .await
                .map_err(|e| Error::internal(e.to_string()))?
                .context("write the pod's files")
                .map(drop)
        };
        if userns.is_some() {
            // The namespace is made by runc with the pause (see the module doc) and pinned at
            // its path after the pause's create.
            make_files.await?;
            let pid = self
                .start_pause_in_userns(id, &mut record, spec, &image, runtime_type, &config)
                .await?;
            return Ok(self.ready_sandbox(id, record, &config, pid));
        }
        // The namespace, the files and the pause's container and snapshot in corrald are
        // independent of each other: made at once. CNI ADD needs only the namespace, and the
        // pause's task all three: CNI starts as soon as the namespace is there and runs beside
        // the pause's create, so that a pod is ready after the slower of the two instead of
        // after both. Every step is awaited before anything is undone, so an undo never races
        // a step still running.
        let (made_tx, made_rx) = tokio::sync::watch::channel(None::<bool>);
        let make_netns = async {
            let made = match netns.clone() {
                None => Ok(()),
                Some(path) => tokio::task::spawn_blocking(move || NetNs::create(&path))
                    .await
                    .map_err(|e| Error::internal(e.to_string()))
                    .and_then(|r| r.context("create the pod's network namespace").map(drop)),
            };
            let _ = made_tx.send(Some(made.is_ok()));
            made
        };
        // Whether the namespace was made (its error is reported by `make_netns`).
        let netns_made = |mut rx: tokio::sync::watch::Receiver<Option<bool>>| async move {
            rx.wait_for(Option::is_some)
                .await
                .map(|v| *v == Some(true))
                .unwrap_or(false)
        };
        let network = async {
            let Some(path) = &netns else {
                return Ok(None);
            };
            if !netns_made(made_rx.clone()).await {
                return Ok(None);
            }
            let pod = pod_network(id, path, &config);
            self.cni.setup(&pod).await.map(Some)
        };
        let pause = async {
            let (files, record) = tokio::join!(
                make_files,
                self.pause_record(id, &record, spec, &image, runtime_type)
            );
            files?;
            record?;
            if !netns_made(made_rx.clone()).await {
                return Ok(None);
            }
            self.create_pause_task(id).await?;
            self.corrald.start(id, "").await.map(Some)
        };
        let (made_netns, network, pause) = tokio::join!(make_netns, network, pause);
        made_netns?;
        let up = match network {
            Ok(up) => up,
            Err(e) => {
                // A failed setup has already DELeted whatever it added (IPs, veths, rules).
                // The namespace goes too, now: the undo must not run DEL again, which fails
                // the same way when a plugin is missing or the config broken and would then
                // keep the namespace for ever.
                if let Some(path) = netns
                    && let Err(undo) = super::stop::blocking(move || NetNs::remove(&path)).await
                {
                    log::warn!("pod {id}: remove the network namespace: {undo}");
                }
                return Err(Error::new(e.code(), format!("set up the pod network: {e}")));
            }
        };
        let pid =
            pause?.ok_or_else(|| Error::internal("the pause waited for a namespace never made"))?;
        if let Some(up) = up {
            self.record_network(id, &mut record, up);
        }
        Ok(self.ready_sandbox(id, record, &config, pid))
    }

    /// The pause of a pod with a user namespace: created (runc makes the user and network
    /// namespaces), its network namespace pinned and set up by CNI, then started. A failed CNI
    /// ADD has undone itself; the namespace goes too, as in the concurrent path.
    async fn start_pause_in_userns(
        &self,
        id: &str,
        record: &mut SandboxRecord,
        spec: serde_json::Value,
        image: &crate::image::Image,
        runtime_type: &str,
        config: &PodSandboxConfig,
    ) -> Result<u32> {
        self.pause_record(id, record, spec, image, runtime_type)
            .await?;
        let created = self.create_pause_task(id).await?;
        let path = self.netns_dir().join(id);
        let pin = path.clone();
        super::stop::blocking(move || NetNs::pin(created, &pin))
            .await
            .map_err(|e| e.context("pin the pod's network namespace"))?;
        let pod = pod_network(id, &path, config);
        match self.cni.setup(&pod).await {
            Ok(up) => self.record_network(id, record, up),
            Err(e) => {
                if let Err(undo) = super::stop::blocking(move || NetNs::remove(&path)).await {
                    log::warn!("pod {id}: remove the network namespace: {undo}");
                }
                return Err(Error::new(e.code(), format!("set up the pod network: {e}")));
            }
        }
        self.corrald.start(id, "").await
    }

    /// CNI's result into the record, and into corrald after the answer: it is off the pod's
    /// critical path, and nothing reads it back from corrald before a restart. Should
    /// corral-cri die before the write lands, start-up finds a record with a namespace and no
    /// CNI result, a pod whose network never came up: NOTREADY, and kubelet makes it again
    /// (its CNI cache entry, written before, lets the teardown release the address). A pod
    /// removed meanwhile makes the write NotFound, which is no error.
    fn record_network(
        &self,
        id: &str,
        record: &mut SandboxRecord,
        up: crate::network::SetupResult,
    ) {
        record.ip = up.ip.to_string();
        record.additional_ips = up.additional_ips.iter().map(|i| i.to_string()).collect();
        record.cni_result = up.raw;
        record.cni_config_name = up.network;
        let (corrald, id, packed) = (
            self.corrald.clone(),
            id.to_string(),
            records::pack_sandbox(record),
        );
        tokio::spawn(async move {
            match corrald
                .set_extension(&id, records::SANDBOX_EXT, packed)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => log::warn!("pod {id}: record the pod's network: {e}"),
            }
        });
    }

    fn ready_sandbox(
        &self,
        id: &str,
        record: SandboxRecord,
        config: &PodSandboxConfig,
        pid: u32,
    ) -> Sandbox {
        let name = config
            .metadata
            .as_ref()
            .map(crate::ids::sandbox_name)
            .unwrap_or_default();
        Sandbox {
            id: id.to_string(),
            name,
            record: Arc::new(record),
            ready: true,
            pid,
            stopped: false,
        }
    }
}

impl Cri {
    /// The pod's corrald container (with `record` as it stands and the pause `spec`) and its
    /// snapshot on the sandbox image: what the pause's task is created from.
    async fn pause_record(
        &self,
        id: &str,
        record: &SandboxRecord,
        spec: serde_json::Value,
        image: &crate::image::Image,
        runtime_type: &str,
    ) -> Result<()> {
        let mut labels = HashMap::new();
        labels.insert(records::KIND_LABEL.into(), records::KIND_SANDBOX.into());
        let mut extensions = HashMap::new();
        extensions.insert(records::SANDBOX_EXT.into(), records::pack_sandbox(record));
        self.corrald
            .create_container(Container {
                id: id.to_string(),
                labels,
                image: image.name.clone(),
                runtime: Some(container::Runtime {
                    name: runtime_type.to_string(),
                    options: None,
                }),
                spec: Some(any::pack_raw(any::OCI_SPEC, spec.to_string().into_bytes())),
                snapshotter: self.corrald.snapshotter().to_string(),
                snapshot_key: id.to_string(),
                extensions,
                ..Default::default()
            })
            .await?;
        self.corrald.prepare_snapshot(id, &image.chain_id).await?;
        Ok(())
    }

    /// The pause's task, created from [`Cri::pause_record`] (runc create done, not started); the
    /// pause process's pid.
    async fn create_pause_task(&self, id: &str) -> Result<u32> {
        self.corrald
            .create_task(CreateTaskRequest {
                container_id: id.to_string(),
                ..Default::default()
            })
            .await
    }
}

/// What RunPodSandbox refuses before doing anything: values that would otherwise be cut to fit
/// (a port above 65535 taken modulo 2^16), silently replaced (an unknown protocol as TCP), or
/// fail late with a plugin's or the shim's message instead of one naming the field.
fn validate(config: &PodSandboxConfig) -> Result<()> {
    let bad = |what: String| Err(Error::invalid(format!("RunPodSandbox: {what}")));
    if !config.log_directory.is_empty()
        && !std::path::Path::new(&config.log_directory).is_absolute()
    {
        return bad(format!(
            "config.log_directory {:?} is not an absolute path",
            config.log_directory
        ));
    }
    for (i, p) in config.port_mappings.iter().enumerate() {
        let at = format!("config.port_mappings[{i}]");
        if Protocol::try_from(p.protocol).is_err() {
            return bad(format!(
                "{at}.protocol {} is not TCP (0), UDP (1) or SCTP (2)",
                p.protocol
            ));
        }
        if !(0..=65535).contains(&p.host_port) {
            return bad(format!("{at}.host_port {} is not in 0-65535", p.host_port));
        }
        // A mapping without a host port is only informational (kubelet lists every port of
        // the pod); one with a host port needs a real container port to forward to.
        if p.host_port > 0 && !(1..=65535).contains(&p.container_port) {
            return bad(format!(
                "{at}.container_port {} is not in 1-65535",
                p.container_port
            ));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return bad(format!("{at}.host_ip {:?} is not an IP address", p.host_ip));
        }
    }
    Ok(())
}

/// What CNI needs to know of a pod.
pub fn pod_network(id: &str, netns: &std::path::Path, config: &PodSandboxConfig) -> PodNetwork {
    let mut pod = PodNetwork::new(id, netns);
    if let Some(m) = &config.metadata {
        pod.namespace = m.namespace.clone();
        pod.name = m.name.clone();
        pod.uid = m.uid.clone();
    }
    pod.port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port as u16,
            container_port: p.container_port as u16,
            protocol: match Protocol::try_from(p.protocol) {
                Ok(Protocol::Udp) => "udp",
                Ok(Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_string(),
            host_ip: p.host_ip.clone(),
        })
        .collect();
    if let Some(d) = &config.dns_config {
        pod.dns = Some(Dns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        });
    }
    pod.annotations = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pod
}
