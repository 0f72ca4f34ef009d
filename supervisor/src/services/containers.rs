//! containerd.services.containers.v1.Containers: container records per namespace. The rules
//! (validation, update masks, filters) are in `metadata::containers`; here are the wire
//! conversions and the `/containers/create|update|delete` events.
//!
//! `ctr containers ls` calls ListStream and falls back to List only on Unimplemented; both
//! are served. Delete starts garbage collection: the container's snapshot may be garbage now.

use protocol::Code;
use protocol::grpc::any::{CONTAINER_CREATE, CONTAINER_DELETE, CONTAINER_UPDATE, pack};
use protocol::grpc::containerd::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, container_create,
};
use protocol::grpc::containerd::services::containers::v1::containers_server::{
    Containers, ContainersServer,
};
use protocol::grpc::containerd::services::containers::v1::{container::Runtime as WireRuntime, *};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{Shared, blocking, namespace};
use crate::metadata::containers as store;
use crate::metadata::{AnyValue, Container as Record, Runtime, Time};

pub struct ContainersService {
    pub daemon: Shared,
}

pub fn server(daemon: Shared) -> ContainersServer<ContainersService> {
    ContainersServer::new(ContainersService { daemon })
}

fn err(e: store::Error) -> Status {
    if let store::Error::Db(e) = &e {
        log::error!("metadata: {e}");
    }
    e.code().grpc_status(e.to_string())
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

fn any_to_wire(a: &AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

fn any_from_wire(a: prost_types::Any) -> AnyValue {
    AnyValue {
        type_url: a.type_url,
        value: a.value,
    }
}

fn to_wire(id: &str, r: &Record) -> Container {
    Container {
        id: id.to_string(),
        labels: r.labels.clone().into_iter().collect(),
        image: r.image.clone(),
        runtime: Some(WireRuntime {
            name: r.runtime.name.clone(),
            options: r.runtime.options.as_ref().map(any_to_wire),
        }),
        spec: r.spec.as_ref().map(any_to_wire),
        snapshotter: r.snapshotter.clone(),
        snapshot_key: r.snapshot_key.clone(),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        extensions: r
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), any_to_wire(v)))
            .collect(),
    }
}

/// The request's container as a record, and its id. Timestamps are the server's.
fn from_wire(c: Container) -> (String, Record) {
    let runtime = c.runtime.unwrap_or_default();
    let rec = Record {
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: Runtime {
            name: runtime.name,
            options: runtime.options.map(any_from_wire),
        },
        spec: c.spec.map(any_from_wire),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_from_wire(v)))
            .collect(),
        created_at: Time::default(),
        updated_at: Time::default(),
    };
    (c.id, rec)
}

fn required(c: Option<Container>) -> Result<Container, Status> {
    c.ok_or_else(|| Code::InvalidArgument.grpc_status("container is required"))
}

impl ContainersService {
    async fn list_wire(&self, ns: String, filters: Vec<String>) -> Result<Vec<Container>, Status> {
        let filters = protocol::filters::Filters::parse_all(&filters)
            .map_err(|e| e.code().grpc_status(e.to_string()))?;
        let d = self.daemon.clone();
        blocking(move || {
            Ok(store::list(&d.db, &ns, &filters)
                .map_err(err)?
                .iter()
                .map(|(id, r)| to_wire(id, r))
                .collect())
        })
        .await
    }
}

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(
        &self,
        req: Request<GetContainerRequest>,
    ) -> Result<Response<GetContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let d = self.daemon.clone();
        let container = blocking(move || {
            let r = store::get(&d.db, &ns, &id).map_err(err)?;
            Ok(to_wire(&id, &r))
        })
        .await?;
        Ok(Response::new(GetContainerResponse {
            container: Some(container),
        }))
    }

    async fn list(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let ns = namespace(&req)?;
        let containers = self.list_wire(ns, req.into_inner().filters).await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn list_stream(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<BoxStream<ListContainerMessage>>, Status> {
        let ns = namespace(&req)?;
        let containers = self.list_wire(ns, req.into_inner().filters).await?;
        // One message per container, so a long list never hits the message size limit.
        let stream = tokio_stream::iter(
            containers
                .into_iter()
                .map(|c| Ok(ListContainerMessage { container: Some(c) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let (id, rec) = from_wire(required(req.into_inner().container)?);
        let d = self.daemon.clone();
        let n = ns.clone();
        let wire = blocking(move || {
            let r = store::create(&d.db, &n, &id, rec).map_err(err)?;
            Ok(to_wire(&id, &r))
        })
        .await?;
        let runtime = wire.runtime.clone().unwrap_or_default();
        self.daemon.events.publish(
            &ns,
            "/containers/create",
            pack(
                CONTAINER_CREATE,
                &ContainerCreate {
                    id: wire.id.clone(),
                    image: wire.image.clone(),
                    runtime: Some(container_create::Runtime {
                        name: runtime.name,
                        options: runtime.options,
                    }),
                },
            ),
        );
        Ok(Response::new(CreateContainerResponse {
            container: Some(wire),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (id, new) = from_wire(required(r.container)?);
        if id.is_empty() {
            return Err(Code::InvalidArgument.grpc_status("Container.ID required"));
        }
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let d = self.daemon.clone();
        let n = ns.clone();
        let wire = blocking(move || {
            let r = store::update(&d.db, &n, &id, new, &paths).map_err(err)?;
            Ok(to_wire(&id, &r))
        })
        .await?;
        self.daemon.events.publish(
            &ns,
            "/containers/update",
            pack(
                CONTAINER_UPDATE,
                &ContainerUpdate {
                    id: wire.id.clone(),
                    image: wire.image.clone(),
                    labels: wire.labels.clone(),
                    snapshot_key: wire.snapshot_key.clone(),
                },
            ),
        );
        Ok(Response::new(UpdateContainerResponse {
            container: Some(wire),
        }))
    }

    async fn delete(&self, req: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let d = self.daemon.clone();
        let (n, i) = (ns.clone(), id.clone());
        blocking(move || store::delete(&d.db, &n, &i).map_err(err)).await?;
        // Its snapshot is no longer held by the container (containerd marks the store dirty).
        crate::gc::trigger(self.daemon.clone());
        self.daemon.events.publish(
            &ns,
            "/containers/delete",
            pack(CONTAINER_DELETE, &ContainerDelete { id }),
        );
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn wire_round_trip_keeps_every_field() {
        let any = |t: &str| prost_types::Any {
            type_url: t.into(),
            value: vec![1, 2, 3],
        };
        let c = Container {
            id: "c1".into(),
            labels: [("a".to_string(), "1".to_string())].into(),
            image: "img".into(),
            runtime: Some(WireRuntime {
                name: "io.containerd.runc.v2".into(),
                options: Some(any("containerd.runc.v1.Options")),
            }),
            spec: Some(any(
                "types.containerd.io/opencontainers/runtime-spec/1/Spec",
            )),
            snapshotter: "overlayfs".into(),
            snapshot_key: "c1".into(),
            // The client's zero time is ignored; the server sets both.
            created_at: Some(prost_types::Timestamp {
                seconds: -62135596800,
                nanos: 0,
            }),
            updated_at: None,
            extensions: [("ext".to_string(), any("x"))].into(),
        };
        let (id, rec) = from_wire(c.clone());
        assert_eq!(id, "c1");
        assert_eq!(rec.created_at, Time::default());
        assert_eq!(
            rec.labels.clone().into_iter().collect::<HashMap<_, _>>(),
            c.labels
        );
        let back = to_wire(&id, &rec);
        assert_eq!(
            Container {
                created_at: None,
                updated_at: None,
                ..back
            },
            Container {
                created_at: None,
                ..c
            }
        );
    }

    fn daemon(dir: &std::path::Path) -> Shared {
        std::sync::Arc::new(super::super::Daemon {
            db: crate::metadata::Db::open(&dir.join("meta.redb")).unwrap(),
            events: crate::events::Exchange::default(),
            root: dir.to_path_buf(),
            content: std::sync::Arc::new(::content::LocalStore::open(dir.join("content")).unwrap()),
            snapshotters: Default::default(),
            gc: Default::default(),
        })
    }

    fn req<T>(ns: &str, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(super::super::NAMESPACE_HEADER, ns.parse().unwrap());
        r
    }

    fn wire(id: &str, label: &str) -> Container {
        Container {
            id: id.into(),
            labels: [("l".to_string(), label.to_string())].into(),
            runtime: Some(WireRuntime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: protocol::grpc::any::OCI_SPEC.into(),
                value: b"{}".to_vec(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn service_streams_lists_and_publishes() {
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let svc = ContainersService {
            daemon: daemon(dir.path()),
        };
        let mut events = svc.daemon.events.subscribe();
        for (id, l) in [("b", "2"), ("a", "1")] {
            let c = Some(wire(id, l));
            svc.create(req("ns", CreateContainerRequest { container: c }))
                .await
                .unwrap();
        }
        let e = events.recv().await.unwrap();
        assert_eq!(
            (e.namespace.as_str(), e.topic.as_str()),
            ("ns", "/containers/create")
        );
        let ev: ContainerCreate =
            protocol::grpc::any::unpack(e.event.as_ref().unwrap(), CONTAINER_CREATE).unwrap();
        assert_eq!(ev.id, "b");
        assert_eq!(ev.runtime.unwrap().name, "io.containerd.runc.v2");

        // ListStream: one message per container, in id order, filtered.
        let list = |f: Vec<String>| ListContainersRequest { filters: f };
        let stream = svc
            .list_stream(req("ns", list(vec![])))
            .await
            .unwrap()
            .into_inner();
        let got: Vec<String> = stream
            .map(|m| m.unwrap().container.unwrap().id)
            .collect()
            .await;
        assert_eq!(got, ["a", "b"]);
        let stream = svc
            .list_stream(req("ns", list(vec!["labels.l==2".into()])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.collect::<Vec<_>>().await.len(), 1);
        let none = svc.list(req("ns", list(vec!["labels.l==3".into()])));
        assert!(none.await.unwrap().into_inner().containers.is_empty());
        let e = svc
            .list(req("ns", list(vec!["==".into()])))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let other = svc.list(req("other", list(vec![]))).await.unwrap();
        assert!(other.into_inner().containers.is_empty());

        // Update: the runtime is immutable, by mask and without one.
        let upd = |c: Container, paths: &[&str]| UpdateContainerRequest {
            container: Some(c),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        let mut c = wire("a", "9");
        c.runtime.as_mut().unwrap().name = "io.containerd.corral.v1".into();
        let e = svc
            .update(req("ns", upd(c.clone(), &["runtime"])))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = svc.update(req("ns", upd(c, &[]))).await.unwrap_err();
        assert_eq!(e.message(), "container.Runtime.Name field is immutable");
        let u = svc
            .update(req("ns", upd(wire("a", "9"), &["labels.l"])))
            .await
            .unwrap()
            .into_inner()
            .container
            .unwrap();
        assert_eq!(u.labels["l"], "9");
        let e = svc
            .update(req("ns", upd(wire("", "9"), &[])))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let e = svc
            .get(req("ns", GetContainerRequest { id: "zz".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let mut nospec = wire("c", "1");
        nospec.spec = None;
        let e = svc
            .create(req(
                "ns",
                CreateContainerRequest {
                    container: Some(nospec),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("container.Spec must be set"),
            "{}",
            e.message()
        );
        let e = svc
            .create(req(
                "ns",
                CreateContainerRequest {
                    container: Some(wire("a", "1")),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        // A namespace is required.
        let e = svc
            .get(Request::new(GetContainerRequest { id: "a".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);

        svc.delete(req("ns", DeleteContainerRequest { id: "a".into() }))
            .await
            .unwrap();
        let e = svc
            .delete(req("ns", DeleteContainerRequest { id: "a".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let topics: Vec<String> = std::iter::from_fn(|| events.try_recv().and_then(Result::ok))
            .map(|e| e.topic)
            .collect();
        assert_eq!(
            topics,
            [
                "/containers/create",
                "/containers/update",
                "/containers/delete"
            ]
        );
    }

    #[test]
    fn missing_container_is_invalid_argument() {
        let e = required(None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
