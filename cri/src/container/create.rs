//! CreateContainer: the container's spec, record and snapshot in corrald. No task yet — as in
//! containerd, the task (and runc's create) comes with StartContainer, so a created container
//! costs no shim.
//!
//! ```text
//!  sandbox READY? ─▶ reserve name ─▶ local image (+ its /etc/passwd, /etc/group, cached)
//!    ─▶ host facts (mount sources made if missing, symlinks resolved, device nodes stat'ed,
//!       the seccomp profile file, a TARGET container's pid)
//!    ─▶ spec (joins the pause's namespaces, pod files bind-mounted)
//!    ─▶ corrald container <id> (ContainerRecord + empty status) ─▶ snapshot <id> on the image
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use protocol::grpc::any;
use protocol::grpc::containerd::services::containers::v1::{
    Container as CorraldContainer, container,
};
use protocol::grpc::corral::cri::v1::{ContainerRecord, ContainerStatusRecord};
use protocol::grpc::runtime::v1::{
    ContainerConfig, ContainerEventType, ContainerUser, CreateContainerRequest,
    CreateContainerResponse, LinuxContainerUser, NamespaceMode,
};

use crate::core::Cri;
use crate::corrald::now_nanos;
use crate::error::{Error, Result};
use crate::records;
use crate::spec;
use crate::store::{Container, State};

impl Cri {
    pub async fn create_container(
        &self,
        r: CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        let config = r
            .config
            .ok_or_else(|| Error::invalid("CreateContainer: config is required"))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid("CreateContainer: config.metadata is required"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid(
                "CreateContainer: config.metadata.name is empty",
            ));
        }
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::invalid("CreateContainer: config.image.image is empty"))?;
        check_log_path(&config.log_path)?;
        let sandbox = self.store.find_sandbox(&r.pod_sandbox_id)?;
        if !sandbox.ready {
            return Err(Error::precondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let pod_config = r
            .sandbox_config
            .or_else(|| sandbox.record.config.clone())
            .unwrap_or_default();
        let pod_meta = pod_config.metadata.clone().unwrap_or_default();
        let id = crate::ids::new_id();
        let name = crate::ids::container_name(&meta, &pod_meta);
        self.store.reserve_name(&name, &id)?;
        let created = self
            .create_container_parts(&id, &name, &sandbox, &pod_config, config, &image_ref)
            .await;
        match created {
            Ok(c) => {
                self.store.put_container(c);
                self.emit_container(&id, ContainerEventType::ContainerCreatedEvent);
                Ok(CreateContainerResponse { container_id: id })
            }
            Err(e) => {
                if let Err(undo) = self.corrald.delete_container(&id).await {
                    log::warn!("container {id}: undo after a failed CreateContainer: {undo}");
                } else if let Err(undo) = self.corrald.remove_snapshot(&id).await {
                    log::warn!("container {id}: undo after a failed CreateContainer: {undo}");
                }
                self.store.release_name(&name, &id);
                Err(e.context(format!("create container {name}")))
            }
        }
    }

    async fn create_container_parts(
        &self,
        id: &str,
        name: &str,
        sandbox: &crate::store::Sandbox,
        pod_config: &protocol::grpc::runtime::v1::PodSandboxConfig,
        config: ContainerConfig,
        image_ref: &str,
    ) -> Result<Container> {
        let image = self
            .images
            .get(image_ref)
            .await?
            .ok_or_else(|| Error::not_found(format!("image {image_ref:?} not found")))?;
        let etc = self.images.etc(&image).await?;
        let files = crate::sandbox::files::paths(
            &self.sandbox_dir(&sandbox.id),
            !spec::host_ipc(pod_config),
        );
        let netns = (!sandbox.record.netns_path.is_empty())
            .then(|| std::path::PathBuf::from(&sandbox.record.netns_path));
        let target_pid = self.target_pid(&sandbox.id, &config)?;
        let userns = spec::pod_userns(pod_config)?.is_some();
        let runtime_type = self
            .cfg
            .runtime(&sandbox.record.runtime_handler)
            .map(|r| r.runtime_type.clone())
            .unwrap_or_default();
        let idmapped_mounts = config
            .mounts
            .iter()
            .any(|m| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty());
        if idmapped_mounts && !self.userns_capable(&runtime_type) {
            return Err(Error::unimplemented(format!(
                "CreateContainer: mounts with uid_mappings/gid_mappings (idmapped mounts) need a \
                 runtime that makes them; runtime handler {:?} ({runtime_type}) does not: {}",
                sandbox.record.runtime_handler,
                self.userns_unsupported_why(&runtime_type)
            )));
        }
        let pod_dir = userns.then(|| self.sandbox_dir(&sandbox.id));
        // The host's side of the spec: mount sources (created when missing), device nodes,
        // the seccomp profile file, and the node's hostname for a pod without its own.
        let (host, hostname) = {
            let config = config.clone();
            let pod_hostname = pod_config.hostname.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let hostname = if pod_hostname.is_empty() {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map_err(|e| Error::internal(format!("read the node's hostname: {e}")))?
                        .trim()
                        .to_string()
                } else {
                    pod_hostname
                };
                let facts = crate::host::container_facts(&config, pod_dir.as_deref())?;
                Ok((facts, hostname))
            })
            .await
            .map_err(|e| Error::internal(e.to_string()))??
        };
        let oci = spec::container(&spec::ContainerInput {
            id,
            sandbox_id: &sandbox.id,
            config: &config,
            sandbox: pod_config,
            sandbox_pid: sandbox.pid,
            target_pid,
            netns: netns.as_deref(),
            files: &files,
            image: &image.config,
            image_name: &image.name,
            etc: &etc,
            hostname: &hostname,
            cgroup_driver: &self.cfg.cgroup_driver,
            node: &self.node,
            host: &host,
        })?;
        let log_path = match (&pod_config.log_directory, &config.log_path) {
            (dir, path) if !dir.is_empty() && !path.is_empty() => std::path::Path::new(dir)
                .join(path)
                .to_string_lossy()
                .into_owned(),
            _ => String::new(),
        };
        let user = &oci["process"]["user"];
        let record = ContainerRecord {
            sandbox_id: sandbox.id.clone(),
            config: Some(config),
            created_at: now_nanos(),
            image_ref: image_ref.to_string(),
            image_name: image.name.clone(),
            image_id: image.id.clone(),
            log_path,
            stop_signal: image.config.stop_signal.clone(),
            user: Some(ContainerUser {
                linux: Some(LinuxContainerUser {
                    uid: user["uid"].as_i64().unwrap_or(0),
                    gid: user["gid"].as_i64().unwrap_or(0),
                    supplemental_groups: user["additionalGids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|g| g.as_i64()).collect())
                        .unwrap_or_default(),
                }),
            }),
        };
        let runtime = self
            .cfg
            .runtime(&sandbox.record.runtime_handler)
            .map(|r| r.runtime_type.clone())
            .ok_or_else(|| {
                Error::precondition(format!(
                    "the pod's runtime handler {:?} is no longer configured",
                    sandbox.record.runtime_handler
                ))
            })?;
        let mut labels = HashMap::new();
        labels.insert(records::KIND_LABEL.into(), records::KIND_CONTAINER.into());
        labels.insert(records::SANDBOX_ID_LABEL.into(), sandbox.id.clone());
        let status = ContainerStatusRecord::default();
        let mut extensions = HashMap::new();
        extensions.insert(
            records::CONTAINER_EXT.into(),
            records::pack_container(&record),
        );
        extensions.insert(records::STATUS_EXT.into(), records::pack_status(&status));
        self.corrald
            .create_container(CorraldContainer {
                id: id.to_string(),
                labels,
                image: image.name.clone(),
                runtime: Some(container::Runtime {
                    name: runtime,
                    options: None,
                }),
                spec: Some(any::pack_raw(any::OCI_SPEC, oci.to_string().into_bytes())),
                snapshotter: self.corrald.snapshotter().to_string(),
                snapshot_key: id.to_string(),
                extensions,
                ..Default::default()
            })
            .await?;
        self.corrald.prepare_snapshot(id, &image.chain_id).await?;
        Ok(Container {
            id: id.to_string(),
            name: name.to_string(),
            record: Arc::new(record),
            status,
            pid: 0,
        })
    }

    /// The init pid of the container whose pid namespace a TARGET container joins: one of the
    /// same pod, running (containerd's `validateTargetContainer`).
    fn target_pid(&self, sandbox_id: &str, config: &ContainerConfig) -> Result<Option<u32>> {
        let Some(ns) = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .filter(|ns| ns.pid == NamespaceMode::Target as i32)
        else {
            return Ok(None);
        };
        if ns.target_id.is_empty() {
            return Err(Error::invalid(
                "pid namespace TARGET without namespace_options.target_id",
            ));
        }
        let target = self
            .store
            .find_container(&ns.target_id)
            .map_err(|e| e.context("pid namespace TARGET"))?;
        if target.sandbox_id() != sandbox_id {
            return Err(Error::invalid(format!(
                "target container {} belongs to pod {}, not {sandbox_id}",
                target.id,
                target.sandbox_id()
            )));
        }
        if target.state() != State::Running || target.pid == 0 {
            return Err(Error::precondition(format!(
                "target container {} is not running",
                target.id
            )));
        }
        Ok(Some(target.pid))
    }
}

/// kubelet's log path is relative to the pod's log directory (`<name>/<attempt>.log`). An
/// absolute one, or one climbing out with `..`, would have the shim create and write a file
/// anywhere on the host.
fn check_log_path(path: &str) -> Result<()> {
    use std::path::{Component, Path};
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(Error::invalid(format!(
            "CreateContainer: config.log_path {path:?} is absolute; it must be relative to the \
             pod's log_directory"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(format!(
            "CreateContainer: config.log_path {path:?} leaves the pod's log_directory (\"..\")"
        )));
    }
    Ok(())
}
