//! containerd.services.events.v1.Events: Subscribe (filtered stream), Publish, Forward.
//!
//! Each Subscribe stream is fed by its own task reading the exchange, so a slow client only
//! delays itself; one that falls more than the exchange's backlog behind skips the missed
//! events (logged) instead of holding anyone up.

use std::pin::Pin;

use protocol::Code;
use protocol::grpc::containerd::services::events::v1::events_server::Events;
use protocol::grpc::containerd::services::events::v1::*;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, namespace};
use crate::events::{Subscription, validate_envelope, validate_topic};
use protocol::filters::Filters;

/// Envelopes queued per subscriber between its feeding task and the gRPC stream.
const STREAM_QUEUE: usize = 64;

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
        let sub = self.daemon.events.subscribe_filtered(parsed);
        let (tx, out) = mpsc::channel(STREAM_QUEUE);
        let closed = self.daemon.events.closed();
        tokio::spawn(feed(sub, tx, filters, closed));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// Copies the replayed events of the outage, then matching envelopes from the
/// exchange, to one subscriber until it goes away.
async fn feed(
    mut sub: Subscription,
    tx: mpsc::Sender<Result<Envelope, Status>>,
    desc: Vec<String>,
    closed: impl Future<Output = ()>,
) {
    for env in std::mem::take(&mut sub.replay) {
        if tx.send(Ok(env)).await.is_err() {
            return;
        }
    }
    tokio::pin!(closed);
    loop {
        let env = tokio::select! {
            r = sub.rx.recv() => r,
            // The client hung up: stop now rather than at the next event.
            _ = tx.closed() => return,
            // Daemon shutdown: end the stream so the server can finish.
            _ = &mut closed => return,
        };
        match env {
            Ok(env) => {
                if sub.filters.matches(&crate::events::EnvelopeFields(&env))
                    && tx.send(Ok(env)).await.is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                log::warn!("event subscriber (filters {desc:?}) too slow: skipped {n} events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
