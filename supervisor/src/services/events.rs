//! containerd.services.events.v1.Events: Subscribe (filtered stream), Publish, Forward.
//!
//! A Subscribe stream is the exchange's [`crate::events::Subscription`] itself: no task or
//! queue of its own. The transport takes events from it as fast as the client reads; a client
//! that stops reading is dropped by the exchange once its backlog is full, and its stream ends
//! with ResourceExhausted (see [`crate::events`]).

use std::pin::Pin;

use protocol::Code;
use protocol::grpc::containerd::services::events::v1::events_server::Events;
use protocol::grpc::containerd::services::events::v1::*;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{Shared, namespace};
use crate::events::{validate_envelope, validate_topic};
use protocol::filters::Filters;

pub struct EventsService {
    pub daemon: Shared,
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

fn invalid(e: impl std::fmt::Display) -> Status {
    Code::InvalidArgument.grpc_status(e.to_string())
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        validate_topic(&req.topic).map_err(|e| e.code().grpc_status(e.to_string()))?;
        let event = req.event.ok_or_else(|| {
            Code::InvalidArgument.grpc_status(format!("event is required on topic {:?}", req.topic))
        })?;
        self.daemon.events.publish(&ns, &req.topic, event);
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| invalid("envelope is required"))?;
        validate_envelope(&env).map_err(|e| e.code().grpc_status(e.to_string()))?;
        self.daemon.events.forward_from_shim(env).await;
        Ok(Response::new(()))
    }

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<EnvelopeStream>, Status> {
        let filters = req.into_inner().filters;
        let parsed =
            Filters::parse_all(&filters).map_err(|e| e.code().grpc_status(e.to_string()))?;
        // Subscribe before answering: whatever is published after the call returns is seen.
        let sub = self
            .daemon
            .events
            .subscribe_filtered(parsed, &format!("{filters:?}"));
        Ok(Response::new(Box::pin(sub.map(|r| {
            r.map_err(|e| e.code().grpc_status(e.to_string()))
        }))))
    }
}
