//! Publishing task events to the daemon, in order, across daemon outages.
//!
//! Events go through one FIFO queue to `containerd.services.events.ttrpc.v1.Events/Forward` on
//! the daemon's ttrpc address (`TTRPC_ADDRESS`). One sender task delivers them strictly in
//! order: an event that cannot be delivered stays at the head and is retried (with a capped
//! backoff, reconnecting each time) until the daemon is back, so a restart of any length loses
//! nothing as long as the queue does not overflow. containerd's own shim gives up after about
//! 15 s. The queue is bounded: past [`CAPACITY`] the oldest event is dropped, with a warning.
//!
//! The order in which the task service calls [`Publisher::publish`] is the order on the wire;
//! that is how /tasks/start is guaranteed to precede /tasks/exit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message;
use protobuf::well_known_types::any::Any;
use protocol::events::{Envelope, ForwardRequest};
use protocol::events_ttrpc::EventsClient;
use tokio::sync::Notify;

use crate::util;

pub const CAPACITY: usize = 4096;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Queue {
    /// Events with their sequence number, oldest first.
    items: VecDeque<(u64, Envelope)>,
    next: u64,
    dropped: u64,
}

#[derive(Clone)]
pub struct Publisher {
    namespace: String,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    /// Signalled each time the queue becomes empty.
    drained: Arc<Notify>,
    /// Failed delivery attempts so far (each is retried: none is given up).
    failures: Arc<std::sync::atomic::AtomicU64>,
}

/// A task event: its topic and its message.
pub trait Event: Message {
    const TOPIC: &'static str;
    /// The bare full name, as containerd's typeurl registry knows it.
    const TYPE_URL: &'static str;
}

macro_rules! topics {
    ($($t:ident => $topic:literal),* $(,)?) => {
        $(impl Event for protocol::task_events::$t {
            const TOPIC: &'static str = $topic;
            const TYPE_URL: &'static str = concat!("containerd.events.", stringify!($t));
        })*
    };
}

topics!(
    TaskCreate => "/tasks/create",
    TaskStart => "/tasks/start",
    TaskExit => "/tasks/exit",
    TaskDelete => "/tasks/delete",
    TaskExecAdded => "/tasks/exec-added",
    TaskExecStarted => "/tasks/exec-started",
    TaskPaused => "/tasks/paused",
    TaskResumed => "/tasks/resumed",
    TaskOOM => "/tasks/oom",
    TaskCheckpointed => "/tasks/checkpointed",
);

impl Publisher {
    pub fn new(namespace: &str) -> Publisher {
        Publisher {
            namespace: namespace.to_string(),
            queue: Arc::new(Mutex::new(Queue {
                items: VecDeque::new(),
                next: 0,
                dropped: 0,
            })),
            wake: Arc::new(Notify::new()),
            drained: Arc::new(Notify::new()),
            failures: Arc::default(),
        }
    }

    /// Queues an event, stamped now. Never blocks.
    pub fn publish<E: Event>(&self, event: &E) {
        let mut any = Any::new();
        // containerd decodes by the bare full name (no type.googleapis.com/ prefix). A constant
        // rather than reflection: reflection would load every file descriptor into memory.
        any.type_url = E::TYPE_URL.to_string();
        any.value = event.write_to_bytes().unwrap_or_default();
        let mut env = Envelope::new();
        env.timestamp = protobuf::MessageField::some(util::now());
        env.namespace = self.namespace.clone();
        env.topic = E::TOPIC.to_string();
        env.event = protobuf::MessageField::some(any);
        self.push(env);
    }

    fn push(&self, env: Envelope) {
        let mut q = self.queue.lock().unwrap();
        if q.items.len() >= CAPACITY {
            q.items.pop_front();
            q.dropped += 1;
            if q.dropped == 1 || q.dropped.is_multiple_of(1000) {
                log::warn!("event queue full: dropped {} oldest events", q.dropped);
            }
        }
        q.next += 1;
        let seq = q.next;
        q.items.push_back((seq, env));
        drop(q);
        self.wake.notify_one();
    }

    /// Topics of the queued events, oldest first.
    #[cfg(test)]
    pub fn topics(&self) -> Vec<String> {
        let q = self.queue.lock().unwrap();
        q.items.iter().map(|(_, e)| e.topic.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().items.len()
    }

    /// Waits until every queued event was delivered, at most `limit`.
    pub async fn flush(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let drained = self.drained.notified();
                if self.len() == 0 {
                    return;
                }
                drained.await;
            }
        })
        .await
        .is_ok()
    }

    /// Delivers queued events to `address` (a socket path) forever.
    pub async fn run(self, address: String) {
        if address.is_empty() {
            log::warn!("no TTRPC_ADDRESS: task events are not published");
            return;
        }
        let mut client: Option<EventsClient> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let head = {
                let wake = self.wake.notified();
                let head = self.queue.lock().unwrap().items.front().cloned();
                match head {
                    Some(h) => h,
                    None => {
                        self.drained.notify_waiters();
                        wake.await;
                        continue;
                    }
                }
            };
            let (seq, env) = head;
            match self.forward(&mut client, &address, env).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    // Pop only our head: a full queue may have dropped it meanwhile.
                    let mut q = self.queue.lock().unwrap();
                    if q.items.front().is_some_and(|(s, _)| *s == seq) {
                        q.items.pop_front();
                    }
                }
                Err(e) => {
                    let n = self
                        .failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n.is_multiple_of(100) {
                        log::warn!(
                            "forward event to {address}: {e}; retrying (failure {})",
                            n + 1
                        );
                    }
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn forward(
        &self,
        client: &mut Option<EventsClient>,
        address: &str,
        env: Envelope,
    ) -> Result<(), String> {
        if client.is_none() {
            let c = ttrpc::r#async::Client::connect(&format!("unix://{address}"))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            *client = Some(EventsClient::new(c));
        }
        let c = client.as_ref().expect("connected above");
        let mut req = ForwardRequest::new();
        req.envelope = protobuf::MessageField::some(env);
        let mut md = HashMap::new();
        md.insert(
            "containerd-namespace-ttrpc".to_string(),
            vec![self.namespace.clone()],
        );
        let mut ctx = ttrpc::context::with_metadata(md);
        ctx.timeout_nano = FORWARD_TIMEOUT.as_nanos() as i64;
        tokio::time::timeout(FORWARD_TIMEOUT, c.forward(ctx, &req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::task_events::{TaskExit, TaskStart};

    #[test]
    fn events_carry_topic_namespace_and_bare_type_url() {
        let p = Publisher::new("ns1");
        let mut start = TaskStart::new();
        start.container_id = "c1".into();
        start.pid = 42;
        p.publish(&start);
        let mut exit = TaskExit::new();
        exit.container_id = "c1".into();
        p.publish(&exit);
        let q = p.queue.lock().unwrap();
        assert_eq!(q.items.len(), 2);
        let env = &q.items[0].1;
        assert_eq!(env.topic, "/tasks/start");
        assert_eq!(env.namespace, "ns1");
        assert_eq!(env.event.type_url, "containerd.events.TaskStart");
        let back = TaskStart::parse_from_bytes(&env.event.value).unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(q.items[1].1.topic, "/tasks/exit");
    }

    /// The daemon is down for longer than containerd's own shim would retry (more than five
    /// failed attempts): every event still arrives, in order, once it is back.
    #[test]
    fn events_survive_a_daemon_outage_in_order() {
        use protocol::events_ttrpc::{Events, create_events};
        use ttrpc::r#async::TtrpcContext;

        struct Sink(Arc<Mutex<Vec<(String, u32)>>>);
        #[async_trait::async_trait]
        impl Events for Sink {
            async fn forward(
                &self,
                ctx: &TtrpcContext,
                req: ForwardRequest,
            ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
                assert_eq!(
                    ctx.metadata.get("containerd-namespace-ttrpc"),
                    Some(&vec!["ns".to_string()])
                );
                let env = req.envelope.unwrap();
                let pid = TaskStart::parse_from_bytes(&env.event.value).unwrap().pid;
                self.0.lock().unwrap().push((env.topic, pid));
                Ok(Default::default())
            }
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("events.sock");
            let p = Publisher::new("ns");
            tokio::spawn(p.clone().run(sock.to_string_lossy().into_owned()));
            for pid in 0..20 {
                let mut s = TaskStart::new();
                s.pid = pid;
                p.publish(&s);
            }
            tokio::time::timeout(Duration::from_secs(30), async {
                while p.failures.load(std::sync::atomic::Ordering::Relaxed) < 6 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("publisher kept retrying");
            assert_eq!(
                p.len(),
                20,
                "nothing may be dropped while the daemon is down"
            );

            let got = Arc::new(Mutex::new(Vec::new()));
            let listener = tokio::net::UnixListener::bind(&sock).unwrap();
            let mut server = ttrpc::r#async::Server::new()
                .add_listener(listener.into())
                .register_service(create_events(Arc::new(Sink(got.clone()))));
            server.start().await.unwrap();
            assert!(p.flush(Duration::from_secs(30)).await, "queue not drained");
            let got = got.lock().unwrap().clone();
            let want: Vec<_> = (0..20).map(|i| ("/tasks/start".to_string(), i)).collect();
            assert_eq!(got, want);
            server.shutdown().await.unwrap();
        });
    }

    #[test]
    fn queue_is_bounded_and_drops_the_oldest() {
        let p = Publisher::new("ns");
        for i in 0..(CAPACITY + 10) {
            let mut s = TaskStart::new();
            s.pid = i as u32;
            p.publish(&s);
        }
        let q = p.queue.lock().unwrap();
        assert_eq!(q.items.len(), CAPACITY);
        assert_eq!(q.dropped, 10);
        let first = TaskStart::parse_from_bytes(&q.items[0].1.event.value).unwrap();
        assert_eq!(first.pid, 10);
    }
}
