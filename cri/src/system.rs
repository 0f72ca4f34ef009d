//! Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the runtime is and whether it
//! can take pods.

use std::collections::HashMap;

use protocol::grpc::runtime::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigResponse,
    RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse, VersionResponse,
};
use serde_json::json;

use crate::config::CORRAL_RUNTIME_TYPE;
use crate::core::Cri;
use crate::error::{Error, Result};

/// The CRI version we speak.
pub const CRI_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "corral";
/// kubelet's `version` field: the CRI API's own version (what containerd sends too).
pub const KUBE_API_VERSION: &str = "0.1.0";

impl Cri {
    pub fn version(&self) -> VersionResponse {
        VersionResponse {
            version: KUBE_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        }
    }

    /// RuntimeReady says whether corrald answers; NetworkReady whether a CNI config is there.
    pub async fn status(&self, r: StatusRequest) -> Result<StatusResponse> {
        let corrald = self.corrald.version().await;
        let runtime = match &corrald {
            Ok(_) => condition("RuntimeReady", true, "", ""),
            Err(e) => condition(
                "RuntimeReady",
                false,
                "CorraldUnreachable",
                &format!("corrald at {}: {e}", self.cfg.address.display()),
            ),
        };
        let network = match self.cni.status() {
            Ok(_) => condition("NetworkReady", true, "", ""),
            Err(e) => condition(
                "NetworkReady",
                false,
                crate::network::NETWORK_NOT_READY_REASON,
                &format!("Network plugin returns error: {e}"),
            ),
        };
        let mut info = HashMap::new();
        if r.verbose {
            let v = json!({
                "corrald": self.cfg.address,
                "corraldVersion": corrald.ok(),
                "namespace": self.cfg.namespace,
                "sandboxImage": self.cfg.sandbox_image,
                "cniConfDir": self.cfg.cni.conf_dir,
                "cniBinDirs": self.cfg.cni.bin_dirs,
                "root": self.cfg.root,
                // critest checks that the file system holding this directory's parent can be
                // idmapped (containerd's CRI state directory holds the rootfs mount points).
                // Ours holds the pods' files; the layers are in corrald's root, by default
                // its sibling (/var/lib/corral beside /var/lib/corral-cri).
                "stateDir": self.cfg.root,
                "runtimes": self.cfg.runtimes.iter()
                    .map(|(k, v)| (k.clone(), v.runtime_type.clone()))
                    .collect::<HashMap<_, _>>(),
            });
            info.insert("config".to_string(), v.to_string());
        }
        let features = |runtime_type: &str| RuntimeHandlerFeatures {
            recursive_read_only_mounts: self.node.recursive_read_only,
            user_namespaces: self.userns_capable(runtime_type),
        };
        let mut runtime_handlers: Vec<RuntimeHandler> = self
            .cfg
            .runtimes
            .iter()
            .map(|(name, r)| RuntimeHandler {
                name: name.clone(),
                features: Some(features(&r.runtime_type)),
            })
            .collect();
        // The default handler is also reachable as "" (what kubelet sends without a
        // RuntimeClass).
        let default_type = self
            .cfg
            .runtime("")
            .map(|r| r.runtime_type.clone())
            .unwrap_or_default();
        runtime_handlers.insert(
            0,
            RuntimeHandler {
                name: String::new(),
                features: Some(features(&default_type)),
            },
        );
        Ok(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers,
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                // A pod in a user namespace needs a network namespace its user namespace owns
                // (`spec::pod_userns`).
                user_namespaces_host_network: false,
            }),
        })
    }

    /// Whether pods of a runtime type can have user namespaces: runc 1.1.5 cannot idmap, so
    /// only a shim that idmaps the root filesystem and binds itself (ours) can, on a kernel
    /// that allows it (`host::node`).
    pub fn userns_capable(&self, runtime_type: &str) -> bool {
        self.node.user_namespaces && runtime_type == CORRAL_RUNTIME_TYPE
    }

    /// Why [`Cri::userns_capable`] says no, for an error message.
    pub fn userns_unsupported_why(&self, runtime_type: &str) -> String {
        if runtime_type != CORRAL_RUNTIME_TYPE {
            format!(
                "only {CORRAL_RUNTIME_TYPE} idmaps container root filesystems (runc 1.1.5 \
                 cannot, and {runtime_type} leaves it to runc)"
            )
        } else {
            "this kernel cannot give pods user namespaces with idmapped layers (see \
             corral-cri's start-up log)"
                .to_string()
        }
    }

    pub fn runtime_config(&self) -> RuntimeConfigResponse {
        let driver = if self.cfg.cgroup_driver == "systemd" {
            CgroupDriver::Systemd
        } else {
            CgroupDriver::Cgroupfs
        };
        RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }
    }

    /// kubelet's pod CIDR: written into a CNI config from `[cni] conf_template`, if set.
    pub async fn update_runtime_config(
        &self,
        r: UpdateRuntimeConfigRequest,
    ) -> Result<UpdateRuntimeConfigResponse> {
        let cidr = r
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if cidr.is_empty() || self.cfg.cni.conf_template.as_os_str().is_empty() {
            return Ok(UpdateRuntimeConfigResponse {});
        }
        match self
            .cni
            .write_conf_from_template(&self.cfg.cni.conf_template, &cidr)
        {
            Ok(Some(path)) => log::info!("pod CIDR {cidr}: wrote {}", path.display()),
            Ok(None) => {}
            Err(e) => {
                return Err(Error::new(e.code(), format!("pod CIDR {cidr}: {e}")));
            }
        }
        Ok(UpdateRuntimeConfigResponse {})
    }
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.into(),
        status: ok,
        reason: reason.into(),
        message: message.into(),
    }
}
