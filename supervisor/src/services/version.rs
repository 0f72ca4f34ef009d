//! containerd.services.version.v1.Version.

use protocol::grpc::containerd::services::version::v1::VersionResponse;
use protocol::grpc::containerd::services::version::v1::version_server::Version;
use tonic::{Request, Response, Status};

pub struct VersionService;

/// The version ctr shows; the revision is the crate version until builds carry a git hash.
pub const VERSION: &str = concat!("corral ", env!("CARGO_PKG_VERSION"));

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}
