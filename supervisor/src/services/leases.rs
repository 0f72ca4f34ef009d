//! containerd.services.leases.v1.Leases: leases and the resources they hold (see
//! `metadata/leases.rs` for the resource types). Clients create a lease around work that must not
//! be garbage collected half-way (import, pull, unpack, run) and send its id in the
//! `containerd-lease` header; objects created under it are attached by the services that create
//! them.

use std::io::Read;

use protocol::Code;
use protocol::filters::{Fields, Filters};
use protocol::grpc::containerd::services::leases::v1::leases_server::{Leases, LeasesServer};
use protocol::grpc::containerd::services::leases::v1::*;
use tonic::{Request, Response, Status};

use super::content::timestamp;
use super::{Shared, blocking, db_err, namespace};
use crate::metadata::{LEASES, Lease as Record, Time, check_resource_type, key};

pub struct LeasesService {
    pub daemon: Shared,
}

pub fn server(daemon: Shared) -> LeasesServer<LeasesService> {
    LeasesServer::new(LeasesService { daemon })
}

/// A fresh lease id as containerd generates them: `<unix nanos>-<4 random characters>`.
pub fn generate_id() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let now = Time::now();
    let mut rnd = [0u8; 4];
    let got = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut rnd));
    if got.is_err() {
        // Uniqueness comes mostly from the nanoseconds; mix them in if urandom is unavailable.
        rnd = (now.nanos as u32 ^ std::process::id()).to_le_bytes();
    }
    let suffix: String = rnd
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect();
    let nanos = now.seconds as i128 * 1_000_000_000 + now.nanos as i128;
    format!("{nanos}-{suffix}")
}

fn to_wire(id: &str, r: &Record) -> Lease {
    Lease {
        id: id.to_string(),
        created_at: Some(timestamp(r.created_at)),
        labels: r.labels.clone().into_iter().collect(),
    }
}

struct LeaseFields<'a>(&'a str, &'a Record);

impl Fields for LeaseFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.0.to_string()),
            [f, k @ ..] if f == "labels" && !k.is_empty() => {
                self.1.labels.get(&k.join(".")).cloned()
            }
            _ => None,
        }
    }
}

fn resource(r: Option<Resource>) -> Result<Resource, Status> {
    let r = r.ok_or_else(|| Code::InvalidArgument.grpc_status("resource is required"))?;
    check_resource_type(&r.r#type).map_err(|m| Code::InvalidArgument.grpc_status(m))?;
    if r.id.is_empty() || r.id.contains('\0') {
        return Err(Code::InvalidArgument.grpc_status(format!(
            "resource id {:?} of type {}: must be non-empty and without NUL",
            r.id, r.r#type
        )));
    }
    if r.r#type == "content" {
        content::Digest::parse(&r.id)
            .map_err(|e| Code::InvalidArgument.grpc_status(e.to_string()))?;
    }
    Ok(r)
}

fn lease_not_found(id: &str) -> Status {
    Code::NotFound.grpc_status(format!("lease {id}: not found"))
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let id = if req.id.is_empty() {
            generate_id()
        } else {
            req.id
        };
        // containerd does not hold lease ids to the identifier rule: its Go client generates
        // `<nanos>-<base64url>`, which may contain `--` or `_`. Only NUL (our key separator)
        // is refused.
        if id.contains('\0') {
            return Err(Code::InvalidArgument.grpc_status(format!("lease id {id:?} contains NUL")));
        }
        let labels = req.labels.into_iter().collect();
        content::validate_labels(&labels)
            .map_err(|e| Code::InvalidArgument.grpc_status(e.to_string()))?;
        let d = self.daemon.clone();
        let lease = blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            let k = key(&ns, &[&id]);
            if tx.get::<Record>(LEASES, &k).map_err(db_err)?.is_some() {
                return Err(Code::AlreadyExists.grpc_status(format!("lease {id}: already exists")));
            }
            tx.ensure_namespace(&ns).map_err(db_err)?;
            let rec = Record {
                labels,
                created_at: Time::now(),
            };
            tx.put(LEASES, &k, &rec).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(to_wire(&id, &rec))
        })
        .await?;
        Ok(Response::new(CreateResponse { lease: Some(lease) }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let DeleteRequest { id, sync } = req.into_inner();
        let d = self.daemon.clone();
        blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            let Some(ingests) = tx.delete_lease(&ns, &id).map_err(db_err)? else {
                return Err(lease_not_found(&id));
            };
            tx.commit().map_err(db_err)?;
            crate::services::content::abort_ingests(&d, &ns, &ingests);
            Ok(())
        })
        .await?;
        // What the lease held may be garbage now. `sync` asks for it to be gone on return.
        let d = self.daemon.clone();
        if sync {
            blocking(move || {
                crate::gc::collect(&d, std::time::SystemTime::now())
                    .map(|_| ())
                    .map_err(|e| e.code().grpc_status(e.to_string()))
            })
            .await?;
        } else {
            crate::gc::trigger(d);
        }
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(&req)?;
        let filters = Filters::parse_all(&req.into_inner().filters)
            .map_err(|e| Code::InvalidArgument.grpc_status(e.to_string()))?;
        let d = self.daemon.clone();
        let leases = blocking(move || {
            let all = d.db.list::<Record>(LEASES, &ns).map_err(db_err)?;
            Ok(all
                .iter()
                .filter_map(|(k, r)| {
                    let id = k.get(ns.len() + 1..)?;
                    filters.matches(&LeaseFields(id, r)).then(|| to_wire(id, r))
                })
                .collect())
        })
        .await?;
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, req: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        let d = self.daemon.clone();
        blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            tx.add_lease_resource(&ns, &req.id, &r.r#type, &r.id)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        let d = self.daemon.clone();
        blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            tx.delete_lease_resource(&ns, &req.id, &r.r#type, &r.id)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let d = self.daemon.clone();
        let resources = blocking(move || {
            // A read needs no write transaction, but the helpers live on Tx; it is dropped
            // uncommitted.
            let tx = d.db.write().map_err(db_err)?;
            if tx
                .get::<Record>(LEASES, &key(&ns, &[&id]))
                .map_err(db_err)?
                .is_none()
            {
                return Err(lease_not_found(&id));
            }
            let rs = tx.lease_resources(&ns, &id).map_err(db_err)?;
            Ok(rs
                .into_iter()
                .map(|(r#type, id)| Resource { id, r#type })
                .collect())
        })
        .await?;
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_identifiers_and_differ() {
        let a = generate_id();
        let b = generate_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            super::super::check_identifier("lease", id).unwrap();
            let (nanos, suffix) = id.split_once('-').unwrap();
            assert!(nanos.parse::<u128>().unwrap() > 1_600_000_000_000_000_000);
            assert_eq!(suffix.len(), 4, "{id}");
        }
    }

    #[test]
    fn resources_are_checked() {
        let r = |t: &str, id: &str| {
            resource(Some(Resource {
                id: id.into(),
                r#type: t.into(),
            }))
        };
        assert!(r("content", "sha256:nothex").is_err());
        assert!(r("images", "x").is_err());
        assert!(r("snapshots/overlayfs", "").is_err());
        assert!(r("snapshots/overlayfs", "extract-1 sha256:aa").is_ok());
        assert!(resource(None).is_err());
    }
}
