//! containerd.services.snapshots.v1.Snapshots: the namespaced snapshots of `crate::snapshots`
//! on the wire.
//!
//! Every request names its snapshotter (ctr resolves its default, `overlayfs`, client-side); an
//! unknown one is InvalidArgument "snapshotter not loaded: <name>", as containerd answers.
//! Prepare, Commit and Remove publish `/snapshot/prepare|commit|remove`; View publishes nothing
//! (containerd 1.6 does the same).

use std::sync::Arc;

use protocol::Code;
use protocol::grpc::any::{SNAPSHOT_COMMIT, SNAPSHOT_PREPARE, SNAPSHOT_REMOVE, pack};
use protocol::grpc::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use protocol::grpc::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use protocol::grpc::containerd::services::snapshots::v1::*;
use protocol::grpc::containerd::types::Mount as WireMount;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{Shared, blocking, lease, namespace};
use crate::metadata::{Labels, Time};
use crate::snapshots::{self, Busy, Namespaced};

/// Infos per List message (containerd batches its stream the same way).
const LIST_BATCH: usize = 100;

pub struct SnapshotsService {
    daemon: Shared,
    busy: Arc<Busy>,
}

impl SnapshotsService {
    pub fn new(daemon: Shared) -> SnapshotsService {
        SnapshotsService {
            daemon,
            busy: Arc::new(Busy::default()),
        }
    }

    /// Runs `f` on the namespaced view of the request's snapshotter, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        ns: String,
        snapshotter: String,
        lease: Option<String>,
        f: impl FnOnce(&Namespaced<'_>) -> snapshots::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let backend = self.backend(&snapshotter)?;
        let daemon = self.daemon.clone();
        let busy = self.busy.clone();
        blocking(move || {
            let view = Namespaced {
                db: &daemon.db,
                busy: &busy,
                ns: &ns,
                name: &snapshotter,
                backend: backend.as_ref(),
                lease: lease.as_deref(),
            };
            f(&view).map_err(status)
        })
        .await
    }

    /// The mounts of a namespaced snapshot (what Tasks.Create uses when a client sends no
    /// rootfs for a container with a snapshot).
    pub async fn mounts_of(
        &self,
        ns: String,
        snapshotter: String,
        key: String,
    ) -> Result<Vec<WireMount>, Status> {
        let mounts = self
            .with(ns, snapshotter, None, move |s| s.mounts(&key))
            .await?;
        Ok(mounts.into_iter().map(mount_to_wire).collect())
    }

    fn backend(&self, name: &str) -> Result<Arc<dyn snapshotter::Snapshotter>, Status> {
        if name.is_empty() {
            return Err(Code::InvalidArgument.grpc_status("snapshotter argument missing"));
        }
        self.daemon.snapshotters.get(name).cloned().ok_or_else(|| {
            Code::InvalidArgument.grpc_status(format!("snapshotter not loaded: {name}"))
        })
    }
}

fn status(e: snapshots::Error) -> Status {
    if e.code() == Code::Internal || e.code() == Code::DataLoss {
        log::error!("snapshots: {e}");
    }
    e.code().grpc_status(e.to_string())
}

/// A snapshotter's mount as `containerd.types.Mount`.
pub fn mount_to_wire(m: snapshotter::Mount) -> WireMount {
    WireMount {
        r#type: m.kind,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

/// A `containerd.types.Mount` as the snapshotter crate's mount.
pub fn mount_from_wire(m: WireMount) -> snapshotter::Mount {
    snapshotter::Mount {
        kind: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

fn kind_to_wire(k: snapshotter::Kind) -> Kind {
    match k {
        snapshotter::Kind::View => Kind::View,
        snapshotter::Kind::Active => Kind::Active,
        snapshotter::Kind::Committed => Kind::Committed,
    }
}

fn info_to_wire(i: snapshots::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_wire(i.kind) as i32,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        labels: i.labels.into_iter().collect(),
    }
}

fn labels<I: IntoIterator<Item = (String, String)>>(l: I) -> Labels {
    l.into_iter().collect()
}

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let (key, parent) = (r.key.clone(), r.parent.clone());
        let mounts = self
            .with(ns.clone(), r.snapshotter, lease, move |s| {
                s.prepare(&r.key, &r.parent, labels(r.labels), false)
            })
            .await?;
        self.daemon.events.publish(
            &ns,
            "/snapshot/prepare",
            pack(SNAPSHOT_PREPARE, &SnapshotPrepare { key, parent }),
        );
        Ok(Response::new(PrepareSnapshotResponse {
            mounts: mounts.into_iter().map(mount_to_wire).collect(),
        }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let mounts = self
            .with(ns, r.snapshotter, lease, move |s| {
                s.prepare(&r.key, &r.parent, labels(r.labels), true)
            })
            .await?;
        Ok(Response::new(ViewSnapshotResponse {
            mounts: mounts.into_iter().map(mount_to_wire).collect(),
        }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let mounts = self
            .with(ns, r.snapshotter, None, move |s| s.mounts(&r.key))
            .await?;
        Ok(Response::new(MountsResponse {
            mounts: mounts.into_iter().map(mount_to_wire).collect(),
        }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let (key, name) = (r.key.clone(), r.name.clone());
        self.with(ns.clone(), r.snapshotter, lease, move |s| {
            s.commit(&r.name, &r.key, labels(r.labels))
        })
        .await?;
        self.daemon.events.publish(
            &ns,
            "/snapshot/commit",
            pack(SNAPSHOT_COMMIT, &SnapshotCommit { key, name }),
        );
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let key = r.key.clone();
        self.with(ns.clone(), r.snapshotter, lease, move |s| s.remove(&r.key))
            .await?;
        self.daemon.events.publish(
            &ns,
            "/snapshot/remove",
            pack(SNAPSHOT_REMOVE, &SnapshotRemove { key }),
        );
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let info = self
            .with(ns, r.snapshotter, None, move |s| s.stat(&r.key))
            .await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info_to_wire(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Code::InvalidArgument.grpc_status("snapshot info is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .with(ns, r.snapshotter, None, move |s| {
                s.update(&info.name, &labels(info.labels), &paths)
            })
            .await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info_to_wire(info)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<BoxStream<ListSnapshotsResponse>>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let infos = self
            .with(ns, r.snapshotter, None, move |s| {
                let filters: Vec<&str> = r.filters.iter().map(String::as_str).collect();
                s.list(&filters)
            })
            .await?;
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(info_to_wire).peekable();
        while infos.peek().is_some() {
            batches.push(Ok(ListSnapshotsResponse {
                info: infos.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let u = self
            .with(ns, r.snapshotter, None, move |s| s.usage(&r.key))
            .await?;
        Ok(Response::new(UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.with(ns, r.snapshotter, None, |s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_convert_both_ways() {
        let m = snapshotter::Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["lowerdir=/a:/b".into(), "upperdir=/u".into()],
        };
        let w = mount_to_wire(m.clone());
        assert_eq!(w.r#type, "overlay");
        assert_eq!(w.options[0], "lowerdir=/a:/b");
        assert_eq!(mount_from_wire(w), m);
    }
}
