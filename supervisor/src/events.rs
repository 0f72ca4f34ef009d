//! The event exchange: everything published in corrald (its own events and those shims
//! forward) fans out to every Subscribe stream. Slow subscribers lose the oldest events
//! (a bounded broadcast channel) rather than slow the daemon down.

use prost_types::{Any, Timestamp};
use protocol::grpc::containerd::services::events::v1::Envelope;
use tokio::sync::broadcast;

use crate::metadata::Time;

const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Exchange {
    tx: broadcast::Sender<Envelope>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Exchange {
    /// Publishes an event of the daemon's own, stamped now.
    pub fn publish(&self, namespace: &str, topic: &str, event: Any) {
        let now = Time::now();
        self.forward(Envelope {
            timestamp: Some(Timestamp {
                seconds: now.seconds,
                nanos: now.nanos,
            }),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(event),
        });
    }

    /// Passes an envelope on unchanged (shim events keep their own timestamp).
    pub fn forward(&self, env: Envelope) {
        log::debug!("event {} {}", env.namespace, env.topic);
        // No subscriber is not an error.
        let _ = self.tx.send(env);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.tx.subscribe()
    }
}
