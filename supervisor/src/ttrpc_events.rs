//! The daemon's ttrpc socket (`<grpc address>.ttrpc`), where shims forward their events:
//! `containerd.services.events.ttrpc.v1.Events/Forward` (shared/protocol.md §3.3).
//!
//! A shim's envelope goes to the exchange unchanged (its own timestamp, namespace and type URL),
//! after the same checks as gRPC Forward. The socket is 0600: only root's shims may publish.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::Code;
use protocol::convert::to_prost;
use protocol::events::ForwardRequest;
use protocol::events_ttrpc::{Events, create_events};
use protocol::grpc::containerd::services::events::v1::Envelope;
use protocol::protobuf::well_known_types::empty::Empty;
use protocol::ttrpc::Result;
use protocol::ttrpc::r#async::{Server, TtrpcContext};

use crate::events::{Exchange, validate_envelope};

struct Forwarder {
    events: Exchange,
}

#[async_trait::async_trait]
impl Events for Forwarder {
    async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> Result<Empty> {
        let Some(env) = req.envelope.into_option() else {
            return Err(Code::InvalidArgument.ttrpc_status("envelope is required"));
        };
        let env: Envelope = to_prost(&env).map_err(|e| {
            log::error!("ttrpc forward: {e}");
            e.code().ttrpc_status(e.to_string())
        })?;
        if let Err(e) = validate_envelope(&env) {
            log::warn!("refused event from a shim: {e}");
            return Err(e.code().ttrpc_status(e.to_string()));
        }
        self.events.forward_from_shim(env).await;
        Ok(Empty::new())
    }
}

/// The running ttrpc server; [`TtrpcEvents::shutdown`] stops it and removes the socket.
pub struct TtrpcEvents {
    server: Server,
    path: PathBuf,
}

impl TtrpcEvents {
    /// Binds `path` (0600; a stale socket is replaced, a live one is an error) and starts
    /// serving Forward into `events`. Must run inside the tokio runtime.
    pub async fn start(path: &Path, events: Exchange) -> std::result::Result<Self, String> {
        let listener = bind(path)?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| format!("ttrpc socket {}: {e}", path.display()))?;
        let mut server = Server::new()
            .add_listener(listener.into())
            .register_service(protocol::bad_payloads_are_invalid_argument(create_events(
                Arc::new(Forwarder { events }),
            )));
        if let Err(e) = server.start().await {
            let _ = std::fs::remove_file(path);
            return Err(format!("start ttrpc server on {}: {e}", path.display()));
        }
        log::info!("serving ttrpc events on {}", path.display());
        Ok(TtrpcEvents {
            server,
            path: path.to_path_buf(),
        })
    }

    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown().await {
            log::warn!("ttrpc server shutdown: {e}");
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("remove {}: {e}", self.path.display());
        }
    }
}

fn bind(path: &Path) -> std::result::Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is in use by another daemon; refusing to start",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("remove stale {}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("ttrpc socket {}: {e}", path.display()))?;
    Ok(l)
}

// The generated client is what shims use; the tests speak through it too.
#[cfg(test)]
mod tests {
    use super::*;
    use protocol::events_ttrpc::EventsClient;
    use protocol::grpc::any;
    use protocol::grpc::containerd::events::TaskExit;
    use protocol::protobuf::well_known_types::{any::Any, timestamp::Timestamp};
    use protocol::protobuf::{Message, MessageField};
    use protocol::ttrpc;
    use std::os::unix::fs::MetadataExt;

    fn envelope(ns: &str, topic: &str) -> protocol::events::Envelope {
        let exit = any::pack(
            any::TASK_EXIT,
            &TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 7,
                exit_status: 3,
                exited_at: None,
            },
        );
        let mut env = protocol::events::Envelope::new();
        env.timestamp = MessageField::some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
            ..Default::default()
        });
        env.namespace = ns.into();
        env.topic = topic.into();
        env.event = MessageField::some(Any {
            type_url: exit.type_url,
            value: exit.value,
            ..Default::default()
        });
        env
    }

    #[tokio::test]
    async fn forwards_unchanged_and_refuses_bad_envelopes() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock.ttrpc");
        let x = Exchange::default();
        let mut rx = x.subscribe();
        let srv = TtrpcEvents::start(&sock, x.clone()).await.unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        let e = TtrpcEvents::start(&sock, x.clone()).await.err().unwrap();
        assert!(e.contains("in use"), "{e}");

        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", sock.display()))
            .await
            .unwrap();
        let c = EventsClient::new(c);
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(envelope("ns1", "/tasks/exit"));
        c.forward(ttrpc::context::with_timeout(5_000_000_000), &req)
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        let want = envelope("ns1", "/tasks/exit");
        assert_eq!(got.namespace, "ns1");
        assert_eq!(got.topic, "/tasks/exit");
        let ts = got.timestamp.unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
        let ev = got.event.unwrap();
        assert_eq!(ev.type_url, "containerd.events.TaskExit");
        assert_eq!(ev.value, want.event.value);
        assert_eq!(
            protocol::grpc::prost::Message::encode_to_vec(&Envelope {
                timestamp: Some(ts),
                namespace: got.namespace,
                topic: got.topic,
                event: Some(ev),
            }),
            want.write_to_bytes().unwrap(),
            "byte for byte what the shim sent"
        );

        for (ns, topic) in [("bad/ns", "/tasks/exit"), ("ns1", "tasks/exit")] {
            req.envelope = MessageField::some(envelope(ns, topic));
            let err = c
                .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                .await
                .unwrap_err();
            assert_eq!(Code::of_ttrpc(&err), Code::InvalidArgument, "{err:?}");
        }
        assert!(rx.try_recv().is_none(), "refused envelopes were published");

        srv.shutdown().await;
        assert!(!sock.exists(), "socket removed on shutdown");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.ttrpc");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let srv = TtrpcEvents::start(&sock, Exchange::default())
            .await
            .unwrap();
        srv.shutdown().await;
    }
}
