//! Leases and the resources they hold, and the per-namespace visibility of blobs.
//!
//! A lease protects what a client is still working on (an import, a pull, an unpack) from
//! garbage collection until it is deleted or expires. Resources are rows
//! `lease_resources <ns>\0<lease>\0<type>\0<id>`, with types as containerd names them:
//!
//! | type | id |
//! |---|---|
//! | `content` | a blob digest (`sha256:…`) |
//! | `snapshots/<snapshotter>` | a namespaced snapshot key |
//! | `ingests` | an ingest ref |
//!
//! Services that create objects inside a lease (the `containerd-lease` header) attach them with
//! [`Tx::add_lease_resource`] in the same transaction that records the object.

use super::{CONTENT, Error, LEASE_RESOURCES, LEASES, Lease, NAMESPACES, Result, Tx, key};

/// Resource types a lease may hold.
pub fn check_resource_type(kind: &str) -> std::result::Result<(), String> {
    match kind {
        "content" | "ingests" => Ok(()),
        s if s
            .strip_prefix("snapshots/")
            .is_some_and(|name| !name.is_empty()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "unsupported resource type {kind:?}: expected content, ingests or snapshots/<snapshotter>"
        )),
    }
}

impl Tx {
    /// Attaches `(kind, id)` to lease `lease` of `ns`; NotFound if the lease does not exist.
    /// Attaching twice is a no-op.
    pub fn add_lease_resource(&self, ns: &str, lease: &str, kind: &str, id: &str) -> Result<()> {
        if self.get::<Lease>(LEASES, &key(ns, &[lease]))?.is_none() {
            return Err(Error::NotFound(format!("lease {lease}")));
        }
        self.put(LEASE_RESOURCES, &key(ns, &[lease, kind, id]), &())
    }

    /// Detaches `(kind, id)` from the lease; NotFound if the lease does not exist. Detaching what
    /// is not attached is a no-op (as in containerd).
    pub fn delete_lease_resource(&self, ns: &str, lease: &str, kind: &str, id: &str) -> Result<()> {
        if self.get::<Lease>(LEASES, &key(ns, &[lease]))?.is_none() {
            return Err(Error::NotFound(format!("lease {lease}")));
        }
        self.delete(LEASE_RESOURCES, &key(ns, &[lease, kind, id]))?;
        Ok(())
    }

    /// The `(type, id)` pairs held by a lease, in key order.
    pub fn lease_resources(&self, ns: &str, lease: &str) -> Result<Vec<(String, String)>> {
        let prefix = key(ns, &[lease]);
        Ok(self
            .keys_under(LEASE_RESOURCES, &prefix)?
            .into_iter()
            .filter_map(|k| {
                let rest = k.get(prefix.len() + 1..)?;
                let (kind, id) = rest.split_once('\0')?;
                Some((kind.to_string(), id.to_string()))
            })
            .collect())
    }

    /// Removes a lease and its resource rows; None if there was no such lease, else the
    /// ingests it held (the caller aborts them once this transaction is committed).
    pub fn delete_lease(&self, ns: &str, lease: &str) -> Result<Option<Vec<String>>> {
        let ingests: Vec<String> = self
            .lease_resources(ns, lease)?
            .into_iter()
            .filter(|(kind, _)| kind == "ingests")
            .map(|(_, id)| id)
            .collect();
        if !self.delete(LEASES, &key(ns, &[lease]))? {
            return Ok(None);
        }
        for k in self.keys_under(LEASE_RESOURCES, &key(ns, &[lease]))? {
            self.delete(LEASE_RESOURCES, &k)?;
        }
        Ok(Some(ingests))
    }

    /// True if any namespace holds a record of blob `digest` (then its bytes must stay on disk).
    pub fn blob_referenced(&self, digest: &str) -> Result<bool> {
        for ns in self.keys_all(NAMESPACES)? {
            if self
                .get::<serde_json::Value>(CONTENT, &key(&ns, &[digest]))?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Blob, Db, Labels, Time};
    use super::*;

    #[test]
    fn lease_resources_need_the_lease_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        let tx = db.write().unwrap();
        let err = tx
            .add_lease_resource("ns", "l1", "content", "sha256:aa")
            .unwrap_err();
        assert_eq!(err.code(), protocol::Code::NotFound, "{err}");
        assert!(err.to_string().contains("lease l1"), "{err}");
        tx.put(
            LEASES,
            &key("ns", &["l1"]),
            &Lease {
                labels: Labels::new(),
                created_at: Time::now(),
            },
        )
        .unwrap();
        tx.add_lease_resource("ns", "l1", "content", "sha256:aa")
            .unwrap();
        tx.add_lease_resource("ns", "l1", "snapshots/overlayfs", "k/with\tanything")
            .unwrap();
        tx.add_lease_resource("ns", "l1", "content", "sha256:aa")
            .unwrap();
        assert_eq!(
            tx.lease_resources("ns", "l1").unwrap(),
            [
                ("content".to_string(), "sha256:aa".to_string()),
                (
                    "snapshots/overlayfs".to_string(),
                    "k/with\tanything".to_string()
                )
            ]
        );
        assert!(tx.lease_resources("ns", "l").unwrap().is_empty());
        assert!(tx.delete_lease("ns", "l1").unwrap().is_some());
        assert!(tx.delete_lease("ns", "l1").unwrap().is_none());
        assert!(!tx.any_under(LEASE_RESOURCES, "ns").unwrap());
    }

    #[test]
    fn blob_reference_spans_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        let tx = db.write().unwrap();
        tx.ensure_namespace("a").unwrap();
        tx.ensure_namespace("b").unwrap();
        assert!(!tx.blob_referenced("sha256:aa").unwrap());
        let blob = Blob {
            size: 1,
            labels: Labels::new(),
            created_at: Time::now(),
            updated_at: Time::now(),
        };
        tx.put(CONTENT, &key("b", &["sha256:aa"]), &blob).unwrap();
        assert!(tx.blob_referenced("sha256:aa").unwrap());
        assert!(!tx.blob_referenced("sha256:bb").unwrap());
    }

    #[test]
    fn resource_types() {
        for ok in ["content", "ingests", "snapshots/overlayfs"] {
            assert!(check_resource_type(ok).is_ok(), "{ok}");
        }
        for bad in ["", "snapshots/", "images", "snapshot/overlayfs"] {
            assert!(check_resource_type(bad).is_err(), "{bad}");
        }
    }
}
