//! containerd.services.introspection.v1.Introspection: what this daemon serves, and its uuid.

use protocol::grpc::containerd::services::introspection::v1::introspection_server::Introspection;
use protocol::grpc::containerd::services::introspection::v1::{
    Plugin, PluginsRequest, PluginsResponse, ServerResponse,
};
use protocol::grpc::containerd::types::Platform;
use tonic::{Request, Response, Status};

use super::{Shared, blocking, db_err};

pub struct IntrospectionService {
    pub daemon: Shared,
    /// Exported by the runtime plugin (`default`), with corrald's root (`root`).
    pub default_runtime: String,
}

/// The plugins a containerd client may look for, under containerd's type names.
fn plugins() -> Vec<Plugin> {
    let p = |t: &str, id: &str| Plugin {
        r#type: t.to_string(),
        id: id.to_string(),
        platforms: if t.starts_with("io.containerd.snapshotter") {
            vec![Platform {
                os: "linux".into(),
                architecture: std::env::consts::ARCH.replace("x86_64", "amd64"),
                variant: String::new(),
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    vec![
        p("io.containerd.content.v1", "content"),
        p("io.containerd.snapshotter.v1", "overlayfs"),
        p("io.containerd.snapshotter.v1", "native"),
        p("io.containerd.metadata.v1", "redb"),
        p("io.containerd.grpc.v1", "version"),
        p("io.containerd.grpc.v1", "introspection"),
        p("io.containerd.grpc.v1", "namespaces"),
        p("io.containerd.grpc.v1", "content"),
        p("io.containerd.grpc.v1", "leases"),
        p("io.containerd.lease.v1", "manager"),
        p("io.containerd.grpc.v1", "snapshots"),
        p("io.containerd.grpc.v1", "diff"),
        p("io.containerd.differ.v1", "walking"),
        p("io.containerd.grpc.v1", "images"),
        p("io.containerd.service.v1", "containers-service"),
        p("io.containerd.grpc.v1", "containers"),
        p("io.containerd.runtime.v2", "task"),
        p("io.containerd.service.v1", "tasks-service"),
        p("io.containerd.grpc.v1", "tasks"),
        p("io.containerd.event.v1", "exchange"),
        p("io.containerd.grpc.v1", "events"),
    ]
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        req: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        // Filters on type and id, the fields `ctr plugins ls` filters by.
        let filters = req.into_inner().filters;
        let plugins = plugins()
            .into_iter()
            .map(|mut p| {
                if p.r#type == "io.containerd.runtime.v2" {
                    p.exports = [
                        ("default".to_string(), self.default_runtime.clone()),
                        ("root".to_string(), self.daemon.root.display().to_string()),
                    ]
                    .into();
                }
                p
            })
            .filter(|p| {
                filters.is_empty()
                    || filters.iter().any(|f| {
                        f.split(',').all(|sel| match sel.split_once("==") {
                            Some(("type", v)) => p.r#type == v.trim_matches('"'),
                            Some(("id", v)) => p.id == v.trim_matches('"'),
                            _ => true,
                        })
                    })
            })
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        let d = self.daemon.clone();
        let uuid = blocking(move || d.db.server_uuid(new_uuid).map_err(db_err)).await?;
        Ok(Response::new(ServerResponse { uuid }))
    }
}

/// A random (version 4) uuid from the kernel.
fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:032x}", std::process::id()))
}
