//! containerd.services.namespaces.v1.Namespaces.
//!
//! Get never answers NotFound: an unknown name comes back with empty labels, because ctr reads
//! the `containerd.io/defaults/*` labels of any namespace it works in. Update of an unknown
//! namespace creates it with the labels given, as containerd's does (its label store makes the
//! namespace's bucket on the first label set); the Go client's `SetLabel`, and `ctr namespaces
//! label`, depend on that. Delete refuses a namespace that still holds objects
//! (FailedPrecondition).

use std::collections::HashMap;

use protocol::Code;
use protocol::grpc::any::{NAMESPACE_CREATE, NAMESPACE_DELETE, NAMESPACE_UPDATE, pack};
use protocol::grpc::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use protocol::grpc::containerd::services::namespaces::v1::namespaces_server::Namespaces;
use protocol::grpc::containerd::services::namespaces::v1::*;
use tonic::{Request, Response, Status};

use super::{Shared, blocking, check_identifier, db_err};
use crate::metadata::{Labels, NAMESPACES, Namespace as Record, Time};

pub struct NamespacesService {
    pub daemon: Shared,
}

fn to_wire(name: &str, rec: &Record) -> Namespace {
    Namespace {
        name: name.to_string(),
        labels: rec.labels.clone().into_iter().collect(),
    }
}

/// Applies an update mask (`labels`, `labels.<key>`) to `labels`. As in containerd, a label
/// set to the empty string is removed.
pub fn apply_label_mask(
    current: &mut Labels,
    new: &HashMap<String, String>,
    paths: &[String],
) -> Result<(), Status> {
    let all = || {
        new.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if paths.is_empty() {
        *current = all();
        return Ok(());
    }
    for p in paths {
        if p == "labels" {
            *current = all();
        } else if let Some(k) = p.strip_prefix("labels.") {
            match new.get(k).filter(|v| !v.is_empty()) {
                Some(v) => {
                    current.insert(k.to_string(), v.clone());
                }
                None => {
                    current.remove(k);
                }
            }
        } else {
            return Err(Code::InvalidArgument
                .grpc_status(format!("cannot update {p:?}: only labels may be updated")));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(
        &self,
        req: Request<GetNamespaceRequest>,
    ) -> Result<Response<GetNamespaceResponse>, Status> {
        let name = req.into_inner().name;
        check_identifier("namespace", &name)?;
        let d = self.daemon.clone();
        let rec = blocking(move || {
            d.db.get::<Record>(NAMESPACES, &name)
                .map_err(db_err)
                .map(|r| to_wire(&name, &r.unwrap_or_default()))
        })
        .await?;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(rec),
        }))
    }

    async fn list(
        &self,
        _: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let d = self.daemon.clone();
        let namespaces = blocking(move || {
            let all = d.db.all::<Record>(NAMESPACES).map_err(db_err)?;
            Ok(all.iter().map(|(k, r)| to_wire(k, r)).collect())
        })
        .await?;
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let ns = req
            .into_inner()
            .namespace
            .ok_or_else(|| Code::InvalidArgument.grpc_status("namespace is required"))?;
        check_identifier("namespace", &ns.name)?;
        let d = self.daemon.clone();
        let wire = ns.clone();
        blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            if tx
                .get::<Record>(NAMESPACES, &ns.name)
                .map_err(db_err)?
                .is_some()
            {
                return Err(Code::AlreadyExists
                    .grpc_status(format!("namespace {}: already exists", ns.name)));
            }
            let rec = Record {
                labels: ns.labels.into_iter().collect(),
                created_at: Time::now(),
            };
            tx.put(NAMESPACES, &ns.name, &rec).map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await?;
        self.daemon.events.publish(
            &wire.name,
            "/namespaces/create",
            pack(
                NAMESPACE_CREATE,
                &NamespaceCreate {
                    name: wire.name.clone(),
                    labels: wire.labels.clone(),
                },
            ),
        );
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(wire),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let req = req.into_inner();
        let ns = req
            .namespace
            .ok_or_else(|| Code::InvalidArgument.grpc_status("namespace is required"))?;
        check_identifier("namespace", &ns.name)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let d = self.daemon.clone();
        let name = ns.name.clone();
        let updated = blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            let existing = tx.get::<Record>(NAMESPACES, &ns.name).map_err(db_err)?;
            if existing.is_none() && paths.is_empty() && ns.labels.is_empty() {
                // Nothing to set: containerd neither creates the namespace nor complains.
                return Ok(to_wire(&ns.name, &Record::default()));
            }
            let mut rec = existing.unwrap_or_else(|| Record {
                labels: Labels::new(),
                created_at: Time::now(),
            });
            apply_label_mask(&mut rec.labels, &ns.labels, &paths)?;
            tx.put(NAMESPACES, &ns.name, &rec).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(to_wire(&ns.name, &rec))
        })
        .await?;
        self.daemon.events.publish(
            &name,
            "/namespaces/update",
            pack(
                NAMESPACE_UPDATE,
                &NamespaceUpdate {
                    name: name.clone(),
                    labels: updated.labels.clone(),
                },
            ),
        );
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(updated),
        }))
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let name = req.into_inner().name;
        check_identifier("namespace", &name)?;
        let d = self.daemon.clone();
        let n = name.clone();
        blocking(move || {
            let tx = d.db.write().map_err(db_err)?;
            if let Some(what) = tx.namespace_in_use(&n).map_err(db_err)? {
                return Err(Code::FailedPrecondition.grpc_status(format!(
                    "namespace {n} must be empty, but it still has {what}"
                )));
            }
            if !tx.delete(NAMESPACES, &n).map_err(db_err)? {
                return Err(Code::NotFound.grpc_status(format!("namespace {n}: not found")));
            }
            tx.commit().map_err(db_err)
        })
        .await?;
        self.daemon.events.publish(
            &name,
            "/namespaces/delete",
            pack(NAMESPACE_DELETE, &NamespaceDelete { name: name.clone() }),
        );
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_masks() {
        let mut cur: Labels = [("a", "1"), ("b", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let new: HashMap<String, String> = [("a".to_string(), "9".to_string())].into();
        apply_label_mask(&mut cur, &new, &["labels.a".into(), "labels.b".into()]).unwrap();
        assert_eq!(cur.get("a").unwrap(), "9");
        assert!(
            !cur.contains_key("b"),
            "a masked key absent from the update is removed"
        );
        let empty: HashMap<String, String> = [("a".to_string(), String::new())].into();
        apply_label_mask(&mut cur, &empty, &["labels.a".into()]).unwrap();
        assert!(!cur.contains_key("a"), "an empty value removes the label");
        let mixed: HashMap<String, String> = [
            ("c".to_string(), "3".to_string()),
            ("d".to_string(), String::new()),
        ]
        .into();
        apply_label_mask(&mut cur, &mixed, &[]).unwrap();
        assert_eq!(
            cur.keys().collect::<Vec<_>>(),
            ["c"],
            "empty values are not stored"
        );
        let e = apply_label_mask(&mut cur, &new, &["name".into()]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
