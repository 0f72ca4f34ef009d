//! The connection to corrald: one gRPC channel over its unix socket, and requests that carry
//! the namespace (and, inside a lease, the lease) as containerd metadata.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use protocol::grpc::containerd::services::leases::v1 as leases;
use protocol::grpc::tonic::{Code, Status};

/// The snapshotter images are unpacked into and containers are prepared on.
pub const SNAPSHOTTER: &str = "overlayfs";

/// The namespaced client of `protocol` (requests, service clients), plus the socket path for
/// messages and `corral info`.
#[derive(Clone)]
pub struct Client {
    inner: protocol::grpc::client::Client,
    pub address: PathBuf,
}

impl std::ops::Deref for Client {
    type Target = protocol::grpc::client::Client;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// Turns a gRPC status into an error whose text is the daemon's message (the code is kept
/// for callers that branch on it, see [`code_of`]).
pub fn rpc_err(s: Status) -> anyhow::Error {
    anyhow::Error::new(RpcError(s))
}

#[derive(Debug)]
pub struct RpcError(pub Status);

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self.0.message();
        match self.0.code() {
            Code::Unavailable if msg.is_empty() || msg.contains("transport") => {
                write!(f, "corrald is not reachable ({msg})")
            }
            Code::Unimplemented => write!(f, "corrald does not support this ({msg})"),
            _ if msg.is_empty() => write!(f, "{}", self.0.code()),
            _ => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for RpcError {}

/// The gRPC code of an error made by [`rpc_err`], if it is one.
pub fn code_of(e: &anyhow::Error) -> Option<Code> {
    e.chain()
        .find_map(|c| c.downcast_ref::<RpcError>())
        .map(|r| r.0.code())
}

pub fn is_not_found(e: &anyhow::Error) -> bool {
    code_of(e) == Some(Code::NotFound)
}

impl Client {
    pub async fn connect(address: PathBuf, namespace: String) -> Result<Client> {
        let inner = protocol::grpc::client::Client::connect(&address, namespace)
            .await
            .map_err(|e| {
                let why = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                anyhow!("{why}")
            })
            .with_context(|| format!("cannot connect to corrald at {}", address.display()))?;
        Ok(Client { inner, address })
    }

    /// Creates a lease that expires on its own after `expire` (so a crashed client leaves
    /// nothing pinned for long) and returns a client whose requests carry it.
    pub async fn with_lease(&self, expire: Duration) -> Result<Client> {
        let until = SystemTime::now() + expire;
        let mut labels = std::collections::HashMap::new();
        labels.insert("containerd.io/gc.expire".to_string(), rfc3339(until));
        let id = format!("corral-{}-{}", std::process::id(), nanos());
        let lease = self
            .leases()
            .create(self.req(leases::CreateRequest { id, labels }))
            .await
            .map_err(rpc_err)
            .context("cannot create a lease")?
            .into_inner()
            .lease
            .ok_or_else(|| anyhow!("the daemon returned no lease"))?;
        Ok(Client {
            inner: self.inner.with_lease(lease.id),
            address: self.address.clone(),
        })
    }

    /// Deletes this client's lease (what it protected is then up to the other references).
    pub async fn end_lease(&self) -> Result<()> {
        let Some(id) = self.lease() else {
            return Ok(());
        };
        let plain = self.without_lease();
        plain
            .leases()
            .delete(plain.req(leases::DeleteRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot delete lease {id}"))?;
        Ok(())
    }
}

pub fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time after the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` from seconds since the epoch.
pub fn format_utc(secs: i64) -> String {
    protocol::logfmt::rfc3339_seconds(secs)
}

/// The time of a protobuf timestamp, as text (empty when unset).
pub fn format_ts(ts: Option<&protocol::grpc::prost_types::Timestamp>) -> String {
    match ts {
        Some(t) if t.seconds > 0 => format_utc(t.seconds),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
