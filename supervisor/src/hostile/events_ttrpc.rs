//! Hostile ttrpc frames into corrald's event socket (target `events_ttrpc`), where shims
//! forward their events (`containerd.services.events.ttrpc.v1.Events/Forward`).
//!
//! Property: every answer is a well-formed response on a stream the client opened, with OK or
//! InvalidArgument (Unimplemented for other methods); the server answers the next client;
//! nothing reaches subscribers that `validate_envelope` refuses (a namespace that is not an
//! identifier, a bad topic, no timestamp); memory stays bounded.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use protocol::Code;
use protocol::events::Envelope as TtrpcEnvelope;
use protocol::events::ForwardRequest;
use protocol::fuzzing::TempDir;
use protocol::fuzzing::ttrpc_wire::{self, check_responses};
use protocol::protobuf::Message;
use protocol::protobuf::well_known_types::any::Any;
use protocol::protobuf::well_known_types::timestamp::Timestamp;

use crate::events::{Exchange, Subscription, validate_envelope};
use crate::ttrpc_events::TtrpcEvents;

const EVENTS: &str = "containerd.services.events.ttrpc.v1.Events";
const SENTINEL_TOPIC: &str = "/fuzz/sentinel";

struct Harness {
    socket: PathBuf,
    published: Mutex<Subscription>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = TempDir::new("corral-events-fuzz");
        let socket = dir.path().join("corral.sock.ttrpc");
        let exchange = Exchange::default();
        let published = Mutex::new(exchange.subscribe());
        let (tx, rx) = std::sync::mpsc::channel();
        let sock = socket.clone();
        std::thread::Builder::new()
            .name("events-ttrpc".into())
            .spawn(move || {
                let _dir = dir;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let _server = TtrpcEvents::start(&sock, exchange).await.expect("start");
                    tx.send(()).expect("started");
                    std::future::pending::<()>().await;
                });
            })
            .expect("spawn the server thread");
        rx.recv().expect("the server starts");
        Harness { socket, published }
    })
}

/// A Forward of a valid envelope on the sentinel stream.
fn sentinel() -> Vec<u8> {
    let mut env = TtrpcEnvelope::new();
    env.namespace = "fuzz".into();
    env.topic = SENTINEL_TOPIC.into();
    let mut ts = Timestamp::new();
    ts.seconds = 1_700_000_000;
    env.timestamp = Some(ts).into();
    let mut any = Any::new();
    any.type_url = "containerd.events.TaskStart".into();
    env.event = Some(any).into();
    let mut req = ForwardRequest::new();
    req.envelope = Some(env).into();
    let payload = req.write_to_bytes().expect("encode");
    ttrpc_wire::request(ttrpc_wire::SENTINEL_STREAM, EVENTS, "Forward", &payload)
}

pub fn events_ttrpc(data: &[u8]) {
    let h = harness();
    let out = ttrpc_wire::exchange(&h.socket, data, &sentinel(), Duration::from_secs(20));
    check_responses(
        data,
        &out,
        &[
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::DeadlineExceeded,
        ],
    );
    let mut rx = h.published.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(next) = rx.try_recv() {
        // Drained after every case, the subscription never falls a backlog behind; if it
        // did, the check would see nothing from then on.
        let env = next.unwrap_or_else(|e| panic!("the harness's subscription ended: {e}"));
        if let Err(e) = validate_envelope(&env) {
            panic!("an envelope the door refuses reached subscribers: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::fuzzing::{Target, run};

    #[test]
    fn events_ttrpc() {
        run(
            &Target {
                name: "events_ttrpc",
                cases: 2000,
                max_alloc: 32 << 20,
                dict: &[
                    b"containerd.services.events.ttrpc.v1.Events",
                    b"Forward",
                    b"/tasks/exit",
                    b"/tasks/oom",
                    b"containerd.events.TaskExit",
                    b"k8s.io",
                    &[0xff, 0xff, 0xff, 0xff],
                    &[1, 0],
                ],
            },
            super::events_ttrpc,
        );
    }
}
