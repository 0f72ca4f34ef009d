//! A client of the daemon API scoped to one namespace (and optionally one lease), as every
//! containerd client library has: requests carry `containerd-namespace` (and
//! `containerd-lease`) metadata, and each service client shares one channel with ctr's message
//! limits. Used by the `corral` command line and by corral-cri, which both talk to corrald only
//! through this API.

use std::path::Path;

use tonic::Request;
use tonic::transport::Channel;

use super::containerd::services::containers::v1::containers_client::ContainersClient;
use super::containerd::services::content::v1::content_client::ContentClient;
use super::containerd::services::diff::v1::diff_client::DiffClient;
use super::containerd::services::events::v1::events_client::EventsClient;
use super::containerd::services::images::v1::images_client::ImagesClient;
use super::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use super::containerd::services::leases::v1::leases_client::LeasesClient;
use super::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use super::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use super::containerd::services::tasks::v1::tasks_client::TasksClient;
use super::containerd::services::version::v1::version_client::VersionClient;
use super::corral::services::transfer::v1::transfer_client::TransferClient;

/// The metadata key that scopes a request to a namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The metadata key that puts what a request creates under a lease.
pub const LEASE_HEADER: &str = "containerd-lease";
/// ctr's message limit, both ways.
pub const MAX_MESSAGE: usize = super::limits::DEFAULT_MAX_MESSAGE;

/// One channel to the daemon, one namespace, at most one lease. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    pub namespace: String,
    lease: Option<String>,
}

macro_rules! service {
    ($name:ident, $client:ident) => {
        pub fn $name(&self) -> $client<Channel> {
            $client::new(self.channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        }
    };
}

impl Client {
    /// Dials the daemon's unix socket (see [`super::unix::connect`]).
    pub async fn connect(
        path: impl AsRef<Path>,
        namespace: impl Into<String>,
    ) -> Result<Client, tonic::transport::Error> {
        Ok(Client::new(super::unix::connect(path).await?, namespace))
    }

    /// A client over an existing channel.
    pub fn new(channel: Channel, namespace: impl Into<String>) -> Client {
        Client {
            channel,
            namespace: namespace.into(),
            lease: None,
        }
    }

    /// The same client, but whatever its requests create is held by lease `id`.
    pub fn with_lease(&self, id: impl Into<String>) -> Client {
        Client {
            lease: Some(id.into()),
            ..self.clone()
        }
    }

    /// The same client without a lease.
    pub fn without_lease(&self) -> Client {
        Client {
            lease: None,
            ..self.clone()
        }
    }

    pub fn lease(&self) -> Option<&str> {
        self.lease.as_deref()
    }

    /// A request in our namespace (and lease, if any).
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        // A namespace or lease that is not a valid header value is sent without the header;
        // the daemon then names the missing namespace in its error.
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        if let Some(Ok(v)) = self.lease.as_ref().map(|l| l.parse()) {
            r.metadata_mut().insert(LEASE_HEADER, v);
        }
        r
    }

    service!(version, VersionClient);
    service!(introspection, IntrospectionClient);
    service!(namespaces, NamespacesClient);
    service!(images, ImagesClient);
    service!(content, ContentClient);
    service!(snapshots, SnapshotsClient);
    service!(diff, DiffClient);
    service!(leases, LeasesClient);
    service!(containers, ContainersClient);
    service!(tasks, TasksClient);
    service!(events, EventsClient);
    service!(transfer, TransferClient);
}
