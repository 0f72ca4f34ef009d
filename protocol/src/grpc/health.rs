//! The standard gRPC health service (`grpc.health.v1.Health`), as clients built on grpc-go
//! expect it: containerd's Go client (`IsServing`), dockerd (which polls it before it
//! subscribes to events again after the daemon restarted) and probes of the CRI socket.
//!
//! One status for the whole server: SERVING from when it serves until it begins to shut
//! down, NOT_SERVING after. The empty service name and the names given at construction
//! answer it; Check answers NotFound for other names and Watch SERVICE_UNKNOWN, as the health
//! protocol specifies.
//!
//! ```no_run
//! # async fn f() {
//! let (health, serving) = protocol::grpc::health::Health::new(&["runtime.v1.RuntimeService"]);
//! // Server::builder().add_service(health.server())...
//! serving.send_replace(false); // shutting down: NOT_SERVING from now on
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::grpc::health::v1::health_check_response::ServingStatus;
use super::grpc::health::v1::health_server::{Health as HealthService, HealthServer};
use super::grpc::health::v1::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};

#[derive(Clone)]
pub struct Health {
    serving: watch::Receiver<bool>,
    services: Arc<Vec<String>>,
}

impl Health {
    /// A health service answering for the server as a whole ("") and for `services`, SERVING
    /// until `false` is sent on the returned sender.
    pub fn new(services: &[&str]) -> (Health, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(true);
        let health = Health {
            serving: rx,
            services: Arc::new(services.iter().map(|s| s.to_string()).collect()),
        };
        (health, tx)
    }

    pub fn server(self) -> HealthServer<Health> {
        HealthServer::new(self)
    }

    fn known(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }
}

fn answer(serving: bool) -> HealthCheckResponse {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthService for Health {
    async fn check(
        &self,
        r: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = r.into_inner().service;
        if !self.known(&service) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        Ok(Response::new(answer(*self.serving.borrow())))
    }

    async fn list(
        &self,
        _: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let now = answer(*self.serving.borrow());
        let statuses = std::iter::once(String::new())
            .chain(self.services.iter().cloned())
            .map(|s| (s, now))
            .collect();
        Ok(Response::new(HealthListResponse { statuses }))
    }

    async fn watch(&self, r: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let service = r.into_inner().service;
        if !self.known(&service) {
            let unknown = HealthCheckResponse {
                status: ServingStatus::ServiceUnknown as i32,
            };
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(unknown)))));
        }
        // The current status, then each change; the stream ends with the server.
        let changes = tokio_stream::wrappers::WatchStream::new(self.serving.clone())
            .map(|serving| Ok(answer(serving)));
        Ok(Response::new(Box::pin(changes)))
    }
}
