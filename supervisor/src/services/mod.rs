//! Thin gRPC adapters: request in, metadata or store call, response out. The rules live in
//! `metadata` and the stores; here are only wire conversions and the namespace header.

pub mod containers;
pub mod content;
pub mod diff;
pub mod events;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod snapshots;
pub mod tasks;
pub mod transfer;
pub mod version;

use std::sync::Arc;

use protocol::Code;
use tonic::{Request, Status};

use crate::events::Exchange;
use crate::metadata::Db;

/// What every service shares.
pub struct Daemon {
    pub db: Db,
    pub events: Exchange,
    pub root: std::path::PathBuf,
    /// Blobs, shared by all namespaces (visibility and labels are in `db`).
    pub content: Arc<::content::LocalStore>,
    /// Snapshotters by name (`overlayfs`, the default, and `native`); keys are namespaced in
    /// `db` and map to backend keys.
    pub snapshotters: std::collections::BTreeMap<String, Arc<dyn snapshotter::Snapshotter>>,
    /// Garbage collections asked for and running (see [`crate::gc::trigger`]).
    pub gc: crate::gc::Scheduler,
}

pub type Shared = Arc<Daemon>;

/// containerd's gRPC metadata keys.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
pub const LEASE_HEADER: &str = "containerd-lease";

/// The namespace of a call: required, and a valid identifier.
pub fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = req
        .metadata()
        .get(NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ns.is_empty() {
        return Err(Code::FailedPrecondition.grpc_status("namespace is required"));
    }
    check_identifier("namespace", ns)?;
    Ok(ns.to_string())
}

/// The lease a call runs under, if any.
pub fn lease<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// containerd's identifier rule: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters.
pub fn check_identifier(what: &str, s: &str) -> Result<(), Status> {
    let ok = !s.is_empty()
        && s.len() <= 76
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Code::InvalidArgument.grpc_status(format!(
            "{what} {s:?}: invalid identifier, must match [A-Za-z0-9]+([._-][A-Za-z0-9]+)* and be at most 76 characters"
        )))
    }
}

/// Maps a metadata error to its status.
pub fn db_err(e: crate::metadata::Error) -> Status {
    log::error!("metadata: {e}");
    e.code().grpc_status(e.to_string())
}

/// How many metadata and snapshot operations run on the blocking pool at once. Their writes
/// take turns on the database's write lock and the disk anyway; without a bound, 50 clients
/// starting containers at once had tokio start some 35 threads that mostly waited on that
/// lock, and their stacks stayed resident (1.6 MB of corrald's 17 MB with 50 tasks).
const STORE_WORKERS: usize = 4;

static STORE_TURNS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(STORE_WORKERS));

/// Runs blocking store work (metadata, snapshots) off the async threads, at most
/// [`STORE_WORKERS`] at a time. Work that may wait on something else (a client reading a blob,
/// a layer's bytes) goes through [`blocking_long`] instead, so it can never hold a turn that
/// the work it waits for needs.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let _turn = STORE_TURNS
        .acquire()
        .await
        .map_err(|e| Code::Internal.grpc_status(format!("store workers: {e}")))?;
    blocking_long(f).await
}

/// Runs blocking work off the async threads without taking a store turn (layer applies).
pub async fn blocking_long<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Code::Internal.grpc_status(format!("worker failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["default", "k8s.io", "a-b_c.d", "t123-4"] {
            assert!(check_identifier("namespace", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a/b", "a b", "ü"] {
            let e = check_identifier("namespace", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn namespace_header_is_required() {
        let req = Request::new(());
        assert_eq!(
            namespace(&req).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, "ns1".parse().unwrap());
        assert_eq!(namespace(&req).unwrap(), "ns1");
    }
}
