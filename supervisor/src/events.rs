//! The event exchange: everything published in corrald (its own events and those shims
//! forward) fans out to every subscription whose filters match it.
//!
//! Each subscription has its own bounded outbox ([`SUBSCRIBER_BACKLOG`] events and
//! [`SUBSCRIBER_BACKLOG_BYTES`] bytes): publishing never waits for a subscriber. A subscriber
//! whose outbox overflows (a client that stopped reading) is dropped: its outbox is freed, it
//! gets no more events, and its stream ends with ResourceExhausted saying so, so that it
//! subscribes again and lists the current state instead of silently missing events. containerd
//! queues without bound for such a client (its exchange's per-subscriber queue), which grows
//! the daemon's memory for as long as events flow. Events are shared (`Arc`) between outboxes:
//! 200 subscribers cost 200 pointers per event, not 200 copies.
//!
//! ```text
//!  publish / forward ──► Exchange ──(filters match)──► outbox A ──► Subscribe stream A
//!                            │                        outbox B ──► Subscribe stream B
//!                            │                          (full: B dropped, stream ends with
//!                            │                           ResourceExhausted)
//!                            └── held task events of an outage (after a restart, see below)
//! ```
//!
//! After a restart that found tasks again, the task events of the outage are held for a while
//! ([`Exchange::hold_outage_events`]) and replayed to every client that subscribes in that
//! time, in the order they happened, before what it sees live. Events of the outage are those
//! that reach the exchange before corrald serves (what start-up learned, and what shims
//! deliver meanwhile) and those shims deliver later with a timestamp before the start-up. A
//! client that was subscribed before the daemon went down comes back only after its reconnect
//! backoff (dockerd: about a second, up to 3 s; it first polls the health service), while
//! shims deliver the exits they saw during the outage as soon as the daemon answers: without
//! the replay, dockerd never learns that such a container stopped, and a `ctr events` started
//! after the restart never sees it. containerd 1.6 has the same race and loses those exits now
//! and then. Replayed under the lock that registers the subscription, an event reaches each
//! subscriber exactly once: from the replay or live, never both.
//!
//! A /tasks/exit that reaches the exchange a second time (start-up synthesised it from a
//! shim's State, then the shim's own retry delivers it; or a retried Forward whose first try
//! did arrive) is dropped: exits are known by namespace, container, process, pid, status and
//! time.
//!
//! Also here: the exchange's rules for what may enter it (containerd's `validateTopic` and
//! `validateEnvelope`), and the filter fields of an envelope (`topic`, `namespace`,
//! `event.<field>`), so Subscribe filters work as on containerd.

use prost_types::{Any, Timestamp};
use protocol::Code;
use protocol::grpc::any;
use protocol::grpc::containerd::events as ev;
use protocol::grpc::containerd::services::events::v1::Envelope;
use protocol::grpc::containerd::services::images::v1 as images;
use protocol::grpc::prost::Message;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::metadata::Time;
use protocol::filters::{Fields, Filters};

/// Events a subscriber may have waiting (published, matched, not yet taken by its stream)
/// before it is dropped. A client that reads keeps its outbox near empty; this is room for
/// bursts (a wave of 50 containers starting and stopping is about 600 events).
pub const SUBSCRIBER_BACKLOG: usize = 4096;
/// Bytes (encoded envelopes) a subscriber may have waiting before it is dropped: what bounds a
/// stalled subscriber's memory when events are large (Publish takes up to the message limit).
/// One event larger than this still goes to a subscriber whose outbox is empty.
pub const SUBSCRIBER_BACKLOG_BYTES: usize = 16 << 20;
/// At most this many task events of the outage are held; past it the oldest go.
const HOLD_MAX: usize = 1024;
/// How long after start-up the task events of the outage are replayed to new subscribers:
/// well past the reconnect backoff of containerd's Go client (capped at 3 s) and the shims'
/// retries (ours back off to 2 s; containerd's gives up after about 20 s).
pub const HOLD_WINDOW: Duration = Duration::from_secs(60);
/// How many recent exits are remembered to drop a second copy of one.
const RECENT_EXITS: usize = 4096;

#[derive(Clone, Default)]
pub struct Exchange {
    /// The subscribers and the held events. Sending happens under this lock, so a new
    /// subscriber gets each event exactly once: replayed from the held ones, or live.
    clients: Arc<Mutex<Clients>>,
    /// OOM kills shims missed (see [`crate::oom`]).
    oom: Arc<crate::oom::OomCheck>,
}

#[derive(Default)]
struct Clients {
    subscribers: HashMap<u64, Subscriber>,
    next: u64,
    hold: Option<Held>,
    exits: RecentExits,
    /// Set at shutdown: subscriptions end (so that the server's graceful shutdown, which waits
    /// for open streams, is not held up by `ctr events`) and new ones end at once.
    closed: bool,
}

struct Subscriber {
    filters: Filters,
    /// What the client asked for, for the log line when it is dropped.
    desc: String,
    outbox: Arc<Mutex<Outbox>>,
}

struct Held {
    until: Instant,
    /// When this corrald started: a task event stamped earlier happened during the outage.
    started: (i64, i32),
    /// Start-up is still under way (nothing served yet): every task event is of the outage.
    starting: bool,
    /// Sorted by timestamp (arrival order among equals).
    events: Vec<Envelope>,
}

/// The exits seen lately, to tell a second copy of one.
#[derive(Default)]
struct RecentExits {
    order: VecDeque<String>,
    keys: std::collections::HashSet<String>,
}

impl RecentExits {
    /// False if `env` is an exit seen before (a copy to drop).
    fn first_time(&mut self, env: &Envelope) -> bool {
        let Some(k) = exit_key(env) else {
            return true;
        };
        if self.keys.contains(&k) {
            return false;
        }
        if self.order.len() == RECENT_EXITS
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        self.order.push_back(k.clone());
        self.keys.insert(k);
        true
    }
}

/// What makes an exit the same exit: namespace, container, process, pid, status and time.
fn exit_key(env: &Envelope) -> Option<String> {
    let ev = env
        .event
        .as_ref()
        .filter(|e| e.type_url == any::TASK_EXIT)?;
    let x: ev::TaskExit = decode(ev)?;
    let at = x.exited_at.unwrap_or_default();
    Some(format!(
        "{}\0{}\0{}\0{}\0{}\0{}.{:09}",
        env.namespace, x.container_id, x.id, x.pid, x.exit_status, at.seconds, at.nanos
    ))
}

fn stamp(env: &Envelope) -> (i64, i32) {
    env.timestamp
        .as_ref()
        .map_or((0, 0), |t| (t.seconds, t.nanos))
}

impl Clients {
    /// The held events, unless the window has passed (then they are dropped).
    fn held(&mut self) -> Option<&mut Held> {
        if self
            .hold
            .as_ref()
            .is_some_and(|h| Instant::now() >= h.until)
        {
            let h = self.hold.take();
            let n = h.map_or(0, |h| h.events.len());
            if n > 0 {
                log::info!("events: the {n} task events of the outage are no longer replayed");
            }
        }
        self.hold.as_mut()
    }
}

/// Why a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ended {
    /// The subscriber did not take its events and its outbox overflowed.
    #[error(
        "event subscriber dropped: {events} events ({bytes} bytes) were waiting, past the \
         backlog of {SUBSCRIBER_BACKLOG} events or {SUBSCRIBER_BACKLOG_BYTES} bytes; read \
         faster, or subscribe again and list the current state"
    )]
    Overflowed { events: usize, bytes: usize },
    /// The daemon is shutting down.
    #[error("the event exchange is closed (daemon shutting down)")]
    Closed,
}

impl Ended {
    pub fn code(&self) -> Code {
        match self {
            Ended::Overflowed { .. } => Code::ResourceExhausted,
            Ended::Closed => Code::Unavailable,
        }
    }
}

/// One subscriber's events between the exchange and its stream.
#[derive(Default)]
struct Outbox {
    /// Envelopes and their encoded sizes.
    events: VecDeque<(Arc<Envelope>, usize)>,
    bytes: usize,
    ended: Option<Ended>,
    waker: Option<Waker>,
}

impl Outbox {
    /// Queues `env` (`size` bytes encoded); false if that overflows the backlog, which ends
    /// the subscription and frees what was queued.
    fn push(&mut self, env: Arc<Envelope>, size: usize) -> bool {
        if self.ended.is_some() {
            return true;
        }
        let full = self.events.len() >= SUBSCRIBER_BACKLOG
            || (!self.events.is_empty() && self.bytes + size > SUBSCRIBER_BACKLOG_BYTES);
        if full {
            self.end(Ended::Overflowed {
                events: self.events.len(),
                bytes: self.bytes,
            });
            return false;
        }
        self.events.push_back((env, size));
        self.bytes += size;
        self.wake();
        true
    }

    fn end(&mut self, why: Ended) {
        if self.ended.is_none() {
            if matches!(why, Ended::Overflowed { .. }) {
                self.events = VecDeque::new();
                self.bytes = 0;
            }
            self.ended = Some(why);
        }
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn pop(&mut self) -> Option<Arc<Envelope>> {
        let (env, size) = self.events.pop_front()?;
        self.bytes -= size;
        Some(env)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A subscriber's view of the exchange: the held events it claimed, then everything published
/// from its subscription on that its filters match. A stream of envelopes that ends with
/// `Err(Ended::Overflowed)` when the subscriber fell too far behind, or without error at
/// shutdown. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    outbox: Arc<Mutex<Outbox>>,
    clients: Arc<Mutex<Clients>>,
    /// The stream has yielded its end.
    done: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.clients).subscribers.remove(&self.id);
    }
}

impl Subscription {
    /// The next event; Err once the subscription has ended (and on every call after).
    pub async fn recv(&mut self) -> Result<Envelope, Ended> {
        std::future::poll_fn(|cx| {
            let mut outbox = lock(&self.outbox);
            if let Some(env) = outbox.pop() {
                return Poll::Ready(Ok(Arc::unwrap_or_clone(env)));
            }
            if let Some(why) = &outbox.ended {
                return Poll::Ready(Err(why.clone()));
            }
            outbox.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The next event if one is waiting: None if none is, Some(Err) once ended.
    pub fn try_recv(&mut self) -> Option<Result<Envelope, Ended>> {
        let mut outbox = lock(&self.outbox);
        match outbox.pop() {
            Some(env) => Some(Ok(Arc::unwrap_or_clone(env))),
            None => outbox.ended.clone().map(Err),
        }
    }
}

impl tokio_stream::Stream for Subscription {
    type Item = Result<Envelope, Ended>;

    /// Events in order; then one `Err(Overflowed)` if the subscriber was dropped, or nothing
    /// at shutdown.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut outbox = lock(&self.outbox);
        if let Some(env) = outbox.pop() {
            return Poll::Ready(Some(Ok(Arc::unwrap_or_clone(env))));
        }
        match outbox.ended.clone() {
            Some(why) => {
                drop(outbox);
                self.done = true;
                Poll::Ready(match why {
                    Ended::Overflowed { .. } => Some(Err(why)),
                    Ended::Closed => None,
                })
            }
            None => {
                outbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
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

    /// Passes an envelope on unchanged (shim events keep their own timestamp). Envelopes from
    /// outside the daemon go through [`validate_envelope`] first. A copy of an exit already
    /// passed on is dropped.
    pub fn forward(&self, env: Envelope) {
        let mut clients = lock(&self.clients);
        if !clients.exits.first_time(&env) {
            log::debug!(
                "event {} {}: a copy of an exit already passed on; dropped",
                env.namespace,
                env.topic
            );
            return;
        }
        log::debug!("event {} {}", env.namespace, env.topic);
        let at = stamp(&env);
        if env.topic.starts_with("/tasks/")
            && let Some(held) = clients.held()
            && (held.starting || at < held.started)
        {
            if held.events.len() == HOLD_MAX {
                held.events.remove(0);
            }
            let i = held.events.partition_point(|e| stamp(e) <= at);
            held.events.insert(i, env.clone());
        }
        let fields = EnvelopeFields(&env);
        let matching: Vec<u64> = clients
            .subscribers
            .iter()
            .filter(|(_, s)| s.filters.matches(&fields))
            .map(|(id, _)| *id)
            .collect();
        if matching.is_empty() {
            // No subscriber is not an error.
            return;
        }
        let size = env.encoded_len();
        let env = Arc::new(env);
        for id in matching {
            let Some(sub) = clients.subscribers.get(&id) else {
                continue;
            };
            let mut outbox = lock(&sub.outbox);
            if !outbox.push(env.clone(), size) {
                let why = outbox.ended.clone();
                drop(outbox);
                let desc = clients
                    .subscribers
                    .remove(&id)
                    .map(|s| s.desc)
                    .unwrap_or_default();
                if let Some(why) = why {
                    log::warn!("events: subscriber {id} (filters {desc}) not reading: {why}");
                }
            }
        }
    }

    /// Passes on an envelope a shim forwarded, preceded by a /tasks/oom for an OOM kill the
    /// shim did not report when it is its task's exit (see [`crate::oom`]).
    pub async fn forward_from_shim(&self, env: Envelope) {
        for env in self.oom.filter(env).await {
            self.forward(env);
        }
    }

    /// Lets [`Exchange::forward_from_shim`] find task bundles (and so their cgroups) under
    /// `dir/<namespace>/<id>`.
    pub fn set_tasks_dir(&self, dir: std::path::PathBuf) {
        self.oom.set_tasks_dir(dir);
    }

    /// From now until `window` has passed, the task events of the outage are held and replayed
    /// to every stream that subscribes with matching filters (see the module docs). Called at
    /// start-up, before the shims are asked for their tasks.
    pub fn hold_outage_events(&self, window: Duration) {
        let now = Time::now();
        lock(&self.clients).hold = Some(Held {
            until: Instant::now() + window,
            started: (now.seconds, now.nanos),
            starting: true,
            events: Vec::new(),
        });
    }

    /// Start-up is done and corrald serves: from now on only task events stamped before the
    /// start-up are of the outage.
    pub fn serving(&self) {
        if let Some(h) = lock(&self.clients).hold.as_mut() {
            h.starting = false;
        }
    }

    /// Stops holding and drops what is held (start-up found no task to hold events for).
    pub fn stop_holding(&self) {
        lock(&self.clients).hold = None;
    }

    /// A subscription to every event, for the daemon's own use (and tests).
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_filtered(Filters::default(), "")
    }

    /// A client's subscription with `filters` (`desc`: as the client wrote them, for the
    /// log): it gets the held events of the outage its filters match (in the order they
    /// happened), then everything published from now on that they match.
    pub fn subscribe_filtered(&self, filters: Filters, desc: &str) -> Subscription {
        let mut outbox = Outbox::default();
        let mut clients = lock(&self.clients);
        if clients.closed {
            outbox.ended = Some(Ended::Closed);
        }
        let mut replayed = 0;
        if let Some(held) = clients.held() {
            let mine = held
                .events
                .iter()
                .filter(|e| filters.matches(&EnvelopeFields(e)))
                .cloned();
            for env in mine {
                replayed += 1;
                let size = env.encoded_len();
                outbox.events.push_back((Arc::new(env), size));
                outbox.bytes += size;
            }
        }
        let id = clients.next;
        clients.next += 1;
        let outbox = Arc::new(Mutex::new(outbox));
        clients.subscribers.insert(
            id,
            Subscriber {
                filters,
                desc: desc.to_string(),
                outbox: outbox.clone(),
            },
        );
        drop(clients);
        if replayed > 0 {
            log::info!("events: {replayed} task events of the outage replayed to a new subscriber");
        }
        Subscription {
            id,
            outbox,
            clients: self.clients.clone(),
            done: false,
        }
    }

    /// Ends every subscription (daemon shutdown); later ones end at once.
    pub fn close(&self) {
        let mut clients = lock(&self.clients);
        clients.closed = true;
        for s in clients.subscribers.values() {
            lock(&s.outbox).end(Ended::Closed);
        }
    }
}

/// Why an event was refused at the door. All are the sender's fault: InvalidArgument.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("event topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("event envelope has invalid namespace {0:?}")]
    Namespace(String),
    #[error("event is required on topic {0:?}")]
    MissingEvent(String),
    #[error("timestamp must be set on forwarded event (topic {0:?})")]
    MissingTimestamp(String),
}

impl Error {
    pub fn code(&self) -> Code {
        Code::InvalidArgument
    }
}

fn is_identifier(s: &str) -> bool {
    crate::services::check_identifier("", s).is_ok()
}

/// containerd's topic rule: `/` followed by one or more `/`-separated identifiers.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    let bad = |reason: String| Error::Topic {
        topic: topic.to_string(),
        reason,
    };
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(bad(if topic.is_empty() {
            "must not be empty".into()
        } else {
            "must start with '/'".into()
        }));
    };
    if rest.is_empty() {
        return Err(bad("must have at least one component".into()));
    }
    match rest.split('/').find(|c| !is_identifier(c)) {
        Some(c) => Err(bad(format!(
            "component {c:?} is not a valid identifier ([A-Za-z0-9]+([._-][A-Za-z0-9]+)*)"
        ))),
        None => Ok(()),
    }
}

/// What containerd checks before forwarding an envelope: namespace, topic, timestamp.
pub fn validate_envelope(env: &Envelope) -> Result<(), Error> {
    if !is_identifier(&env.namespace) {
        return Err(Error::Namespace(env.namespace.clone()));
    }
    validate_topic(&env.topic)?;
    match &env.timestamp {
        Some(t) if t.seconds != 0 || t.nanos != 0 => Ok(()),
        _ => Err(Error::MissingTimestamp(env.topic.clone())),
    }
}

/// An envelope seen through filters, as containerd's `Envelope.Field`: `topic`, `namespace`
/// (absent when empty) and `event.<path>` for the event types we know.
pub struct EnvelopeFields<'a>(pub &'a Envelope);

impl Fields for EnvelopeFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let env = self.0;
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "topic" => nonempty(&env.topic),
            "namespace" => nonempty(&env.namespace),
            "event" => event_field(env.event.as_ref()?, rest),
            _ => None,
        }
    }
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn decode<M: Message + Default>(a: &Any) -> Option<M> {
    M::decode(a.value.as_slice()).ok()
}

fn label(labels: &std::collections::HashMap<String, String>, key: &[&str]) -> Option<String> {
    // containerd joins the rest of the path: labels.a.b looks up the key "a.b".
    labels.get(&key.join(".")).cloned()
}

/// The value of field `path` of an event, decoded by its type URL. Strings are absent when
/// empty and label maps are looked up by key, as in containerd's generated `Field` methods.
/// Numbers and booleans are our extension (containerd has no field for them): decimal and
/// `true`/`false`. Unknown event types have no fields.
pub fn event_field(event: &Any, path: &[String]) -> Option<String> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let s = |v: &str| nonempty(v);
    let n = |v: u32| Some(v.to_string());
    match event.type_url.as_str() {
        any::TASK_CREATE => {
            let e: ev::TaskCreate = decode(event)?;
            let io = e.io.unwrap_or_default();
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["bundle"] => s(&e.bundle),
                ["checkpoint"] => s(&e.checkpoint),
                ["pid"] => n(e.pid),
                ["io", "stdin"] => s(&io.stdin),
                ["io", "stdout"] => s(&io.stdout),
                ["io", "stderr"] => s(&io.stderr),
                ["io", "terminal"] => Some(io.terminal.to_string()),
                _ => None,
            }
        }
        any::TASK_START => {
            let e: ev::TaskStart = decode(event)?;
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["pid"] => n(e.pid),
                _ => None,
            }
        }
        any::TASK_DELETE => {
            let e: ev::TaskDelete = decode(event)?;
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["id"] => s(&e.id),
                ["pid"] => n(e.pid),
                ["exit_status"] => n(e.exit_status),
                _ => None,
            }
        }
        any::TASK_EXIT => {
            let e: ev::TaskExit = decode(event)?;
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["id"] => s(&e.id),
                ["pid"] => n(e.pid),
                ["exit_status"] => n(e.exit_status),
                _ => None,
            }
        }
        any::TASK_OOM => match p[..] {
            ["container_id"] => s(&decode::<ev::TaskOom>(event)?.container_id),
            _ => None,
        },
        any::TASK_EXEC_ADDED => {
            let e: ev::TaskExecAdded = decode(event)?;
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["exec_id"] => s(&e.exec_id),
                _ => None,
            }
        }
        any::TASK_EXEC_STARTED => {
            let e: ev::TaskExecStarted = decode(event)?;
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["exec_id"] => s(&e.exec_id),
                ["pid"] => n(e.pid),
                _ => None,
            }
        }
        any::TASK_PAUSED => match p[..] {
            ["container_id"] => s(&decode::<ev::TaskPaused>(event)?.container_id),
            _ => None,
        },
        any::TASK_RESUMED => match p[..] {
            ["container_id"] => s(&decode::<ev::TaskResumed>(event)?.container_id),
            _ => None,
        },
        any::TASK_CHECKPOINTED => {
            let e: ev::TaskCheckpointed = decode(event)?;
            match p[..] {
                ["container_id"] => s(&e.container_id),
                ["checkpoint"] => s(&e.checkpoint),
                _ => None,
            }
        }
        any::CONTAINER_CREATE => {
            let e: ev::ContainerCreate = decode(event)?;
            match p[..] {
                ["id"] => s(&e.id),
                ["image"] => s(&e.image),
                ["runtime", "name"] => s(&e.runtime?.name),
                _ => None,
            }
        }
        any::CONTAINER_UPDATE => {
            let e: ev::ContainerUpdate = decode(event)?;
            match p[..] {
                ["id"] => s(&e.id),
                ["image"] => s(&e.image),
                ["snapshot_key"] => s(&e.snapshot_key),
                ["labels", ref key @ ..] if !key.is_empty() => label(&e.labels, key),
                _ => None,
            }
        }
        any::CONTAINER_DELETE => match p[..] {
            ["id"] => s(&decode::<ev::ContainerDelete>(event)?.id),
            _ => None,
        },
        any::CONTENT_DELETE => match p[..] {
            ["digest"] => s(&decode::<ev::ContentDelete>(event)?.digest),
            _ => None,
        },
        any::NAMESPACE_CREATE | any::NAMESPACE_UPDATE => {
            // Same layout: name=1, labels=2.
            let e: ev::NamespaceCreate = decode(event)?;
            match p[..] {
                ["name"] => s(&e.name),
                ["labels", ref key @ ..] if !key.is_empty() => label(&e.labels, key),
                _ => None,
            }
        }
        any::NAMESPACE_DELETE => match p[..] {
            ["name"] => s(&decode::<ev::NamespaceDelete>(event)?.name),
            _ => None,
        },
        any::SNAPSHOT_PREPARE => {
            let e: ev::SnapshotPrepare = decode(event)?;
            match p[..] {
                ["key"] => s(&e.key),
                ["parent"] => s(&e.parent),
                _ => None,
            }
        }
        any::SNAPSHOT_COMMIT => {
            let e: ev::SnapshotCommit = decode(event)?;
            match p[..] {
                ["key"] => s(&e.key),
                ["name"] => s(&e.name),
                _ => None,
            }
        }
        any::SNAPSHOT_REMOVE => match p[..] {
            ["key"] => s(&decode::<ev::SnapshotRemove>(event)?.key),
            _ => None,
        },
        any::IMAGE_CREATE | any::IMAGE_UPDATE => {
            // Same layout: name=1, labels=2.
            let e: images::ImageCreate = decode(event)?;
            match p[..] {
                ["name"] => s(&e.name),
                ["labels", ref key @ ..] if !key.is_empty() => label(&e.labels, key),
                _ => None,
            }
        }
        any::IMAGE_DELETE => match p[..] {
            ["name"] => s(&decode::<images::ImageDelete>(event)?.name),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::filters::Filters;

    fn env(ns: &str, topic: &str, event: Any) -> Envelope {
        Envelope {
            timestamp: Some(Timestamp {
                seconds: 1,
                nanos: 2,
            }),
            namespace: ns.into(),
            topic: topic.into(),
            event: Some(event),
        }
    }

    fn matches(filters: &[&str], e: &Envelope) -> bool {
        Filters::parse_all(filters)
            .unwrap()
            .matches(&EnvelopeFields(e))
    }

    #[test]
    fn topics_follow_containerds_rule() {
        for ok in ["/tasks/exit", "/tasks/exec-added", "/a", "/images/v1.x"] {
            validate_topic(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "tasks/exit",
            "/",
            "/tasks/",
            "//x",
            "/tasks/a b",
            "/tasks/-x",
        ] {
            let e = validate_topic(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn envelopes_need_namespace_topic_and_timestamp() {
        let good = env(
            "ns",
            "/tasks/oom",
            any::pack(any::TASK_OOM, &ev::TaskOom::default()),
        );
        validate_envelope(&good).unwrap();
        let mut e = good.clone();
        e.namespace = "bad/ns".into();
        assert!(matches!(validate_envelope(&e), Err(Error::Namespace(_))));
        let mut e = good.clone();
        e.topic = "tasks".into();
        assert!(matches!(validate_envelope(&e), Err(Error::Topic { .. })));
        let mut e = good;
        e.timestamp = None;
        assert!(matches!(
            validate_envelope(&e),
            Err(Error::MissingTimestamp(_))
        ));
    }

    #[test]
    fn envelope_fields_decode_known_events() {
        let exit = env(
            "k8s.io",
            "/tasks/exit",
            any::pack(
                any::TASK_EXIT,
                &ev::TaskExit {
                    container_id: "c1".into(),
                    id: "e1".into(),
                    pid: 42,
                    exit_status: 137,
                    exited_at: None,
                },
            ),
        );
        assert!(matches(&["topic==\"/tasks/exit\""], &exit));
        assert!(matches(
            &["namespace==k8s.io,event.container_id==c1"],
            &exit
        ));
        assert!(matches(&["event.id==e1,event.exit_status==137"], &exit));
        assert!(!matches(&["event.container_id==c2"], &exit));
        assert!(!matches(&["event.bundle"], &exit), "no such field");
        assert!(matches(&[r#"topic~="^/tasks/""#], &exit));

        let ns = env(
            "n1",
            "/namespaces/update",
            any::pack(
                any::NAMESPACE_UPDATE,
                &ev::NamespaceUpdate {
                    name: "n1".into(),
                    labels: [("a.b".to_string(), "v".to_string())].into(),
                },
            ),
        );
        assert!(matches(&["event.name==n1"], &ns));
        assert!(matches(&["event.labels.a.b==v"], &ns));
        assert!(matches(&[r#"event.labels."a.b"==v"#], &ns));
        assert!(!matches(&["event.labels.a"], &ns));

        let img = env(
            "n1",
            "/images/create",
            any::pack(
                any::IMAGE_CREATE,
                &images::ImageCreate {
                    name: "docker.io/library/busybox:latest".into(),
                    labels: Default::default(),
                },
            ),
        );
        assert!(matches(&[r#"topic~="/images/""#], &img), "CRI's filter");
        assert!(matches(&["event.name~=busybox"], &img));
    }

    #[test]
    fn unknown_or_garbled_events_have_only_topic_and_namespace() {
        let e = env(
            "n1",
            "/x/y",
            any::pack_raw("example.Unknown", vec![1, 2, 3]),
        );
        assert!(matches(&["topic==\"/x/y\",namespace==n1"], &e));
        assert!(!matches(&["event.name"], &e));
        let bad = env(
            "n1",
            "/tasks/exit",
            any::pack_raw(any::TASK_EXIT, vec![0xff]),
        );
        assert!(!matches(&["event.container_id"], &bad));
        assert!(matches(&["event.container_id!=c1"], &bad));
    }

    /// An exit of `id` in `ns` that happened at `at` seconds (the envelope stamped then).
    fn exit_at(ns: &str, id: &str, at: i64) -> Envelope {
        let t = Timestamp {
            seconds: at,
            nanos: 0,
        };
        let mut e = env(
            ns,
            "/tasks/exit",
            any::pack(
                any::TASK_EXIT,
                &ev::TaskExit {
                    container_id: id.into(),
                    id: id.into(),
                    pid: 10,
                    exit_status: 1,
                    exited_at: Some(t),
                },
            ),
        );
        e.timestamp = Some(t);
        e
    }

    fn exit_of(ns: &str, id: &str) -> Envelope {
        exit_at(ns, id, 1)
    }

    fn filters(f: &[&str]) -> Filters {
        Filters::parse_all(f).unwrap()
    }

    fn ids(events: &[Envelope]) -> Vec<String> {
        events
            .iter()
            .map(|e| event_field(e.event.as_ref().unwrap(), &["container_id".into()]).unwrap())
            .collect()
    }

    /// The events waiting in `s`'s outbox now.
    fn waiting(s: &mut Subscription) -> Vec<Envelope> {
        std::iter::from_fn(|| s.try_recv().and_then(Result::ok)).collect()
    }

    fn sub(x: &Exchange, f: &[&str]) -> Subscription {
        x.subscribe_filtered(filters(f), &format!("{f:?}"))
    }

    /// The exits of an outage reach the exchange in whatever order the shims come back; every
    /// subscriber that comes after the restart gets each once, in the order they happened,
    /// whether it subscribed before they arrived (live) or after (replayed).
    #[tokio::test]
    async fn outage_events_are_replayed_to_every_subscriber_in_order() {
        let x = Exchange::default();
        x.hold_outage_events(Duration::from_secs(60));
        x.forward(exit_at("moby", "b", 20));
        x.forward(exit_at("k8s.io", "k", 15));
        x.forward(exit_at("moby", "a", 10));
        // Not a task event: never held.
        x.publish("moby", "/containers/delete", Any::default());
        x.serving();
        let mut early = sub(&x, &[r#"namespace==moby,topic~="^/tasks/""#]);
        assert_eq!(
            ids(&waiting(&mut early)),
            ["a", "b"],
            "in the order they happened"
        );
        // A shim that comes back late still delivers an exit of the outage: live to those
        // subscribed, held for those to come.
        x.forward(exit_at("moby", "c", 30));
        assert_eq!(ids(&[early.recv().await.unwrap()]), ["c"]);
        // Something that happens now is not of the outage.
        let now = Time::now().seconds;
        x.forward(exit_at("moby", "new", now + 1));
        assert_eq!(ids(&[early.recv().await.unwrap()]), ["new"]);
        assert!(early.try_recv().is_none());

        let mut late = sub(&x, &["namespace==moby"]);
        assert_eq!(ids(&waiting(&mut late)), ["a", "b", "c"]);
        let mut all = x.subscribe();
        assert_eq!(ids(&waiting(&mut all)), ["a", "k", "b", "c"]);
    }

    /// A second copy of an exit (start-up learned it from the shim's State, then the shim
    /// delivered it; or a Forward retried after its reply was lost) is dropped.
    #[tokio::test]
    async fn a_copy_of_an_exit_is_dropped() {
        let x = Exchange::default();
        let mut rx = x.subscribe();
        x.forward(exit_at("ns", "a", 5));
        x.forward(exit_at("ns", "a", 5));
        let mut again = exit_at("ns", "a", 6);
        x.forward(again.clone());
        // The same exit in another namespace is another exit.
        again.namespace = "other".into();
        x.forward(again);
        let got: Vec<_> = waiting(&mut rx)
            .iter()
            .map(|e| (e.namespace.clone(), stamp(e).0))
            .collect();
        assert_eq!(
            got,
            [("ns".into(), 5), ("ns".into(), 6), ("other".into(), 6)],
            "a copy went through, or an exit was lost"
        );
    }

    #[tokio::test]
    async fn nothing_is_held_without_a_restart_or_after_the_window() {
        let fresh = Exchange::default();
        fresh.forward(exit_of("moby", "a"));
        assert!(waiting(&mut fresh.subscribe()).is_empty());

        let x = Exchange::default();
        x.hold_outage_events(Duration::ZERO);
        x.forward(exit_of("moby", "a"));
        assert!(waiting(&mut x.subscribe()).is_empty());

        let y = Exchange::default();
        y.hold_outage_events(Duration::from_secs(60));
        y.forward(exit_of("moby", "a"));
        y.stop_holding();
        assert!(waiting(&mut y.subscribe()).is_empty());
    }

    #[tokio::test]
    async fn the_hold_is_bounded() {
        let x = Exchange::default();
        x.hold_outage_events(Duration::from_secs(60));
        for i in 0..HOLD_MAX + 3 {
            x.forward(exit_at("moby", &format!("c{i}"), i as i64 + 1));
        }
        let got = waiting(&mut x.subscribe());
        assert_eq!(got.len(), HOLD_MAX);
        assert_eq!(ids(&got[..1]), ["c3"], "the oldest went");
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_is_dropped_and_others_keep_theirs() {
        use tokio_stream::StreamExt;
        let x = Exchange::default();
        let mut stalled = x.subscribe();
        let mut reader = sub(&x, &["namespace==ns"]);
        let mut unmatched = sub(&x, &["namespace==elsewhere"]);
        for i in 0..SUBSCRIBER_BACKLOG {
            x.publish("ns", &format!("/t/{i}"), Any::default());
            // The reader keeps up.
            assert_eq!(reader.recv().await.unwrap().topic, format!("/t/{i}"));
        }
        assert_eq!(lock(&x.clients).subscribers.len(), 3);
        // One past the backlog: dropped, and what it had is freed.
        x.publish("ns", "/t/last", Any::default());
        assert_eq!(lock(&x.clients).subscribers.len(), 2);
        assert_eq!(lock(&stalled.outbox).events.len(), 0);
        let end = stalled.next().await.expect("the stream ends with an error");
        let why = end.unwrap_err();
        assert!(
            matches!(why, Ended::Overflowed { events, .. } if events == SUBSCRIBER_BACKLOG),
            "{why:?}"
        );
        assert_eq!(why.code(), Code::ResourceExhausted);
        assert!(why.to_string().contains("subscribe again"), "{why}");
        assert!(stalled.next().await.is_none(), "nothing after the error");
        // The others are unaffected; nothing more goes to the dropped one.
        assert_eq!(reader.recv().await.unwrap().topic, "/t/last");
        x.publish("ns", "/t/after", Any::default());
        assert_eq!(reader.recv().await.unwrap().topic, "/t/after");
        assert!(unmatched.try_recv().is_none());
        assert_eq!(stalled.try_recv(), Some(Err(why)));
    }

    #[tokio::test]
    async fn large_events_are_bounded_by_bytes() {
        let x = Exchange::default();
        let mut stalled = x.subscribe();
        let big = |n: usize| Any {
            type_url: "example.Big".into(),
            value: vec![7; n],
        };
        // One event larger than the byte backlog still goes to an empty outbox.
        x.publish("ns", "/big/0", big(SUBSCRIBER_BACKLOG_BYTES + 1));
        assert_eq!(stalled.recv().await.unwrap().topic, "/big/0");
        let chunk = SUBSCRIBER_BACKLOG_BYTES / 4;
        for i in 0..3 {
            x.publish("ns", &format!("/big/{i}"), big(chunk));
        }
        assert!(lock(&stalled.outbox).bytes > 3 * chunk);
        x.publish("ns", "/big/3", big(chunk));
        match stalled.try_recv() {
            Some(Err(Ended::Overflowed { events: 3, bytes })) => assert!(bytes > 3 * chunk),
            other => panic!("expected an overflow, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn close_ends_every_subscription_without_error() {
        use tokio_stream::StreamExt;
        let x = Exchange::default();
        let mut a = x.subscribe();
        x.publish("ns", "/t/1", Any::default());
        let waiter = tokio::spawn(async move {
            let first = a.next().await;
            (first, a.next().await)
        });
        x.close();
        let (first, end) = waiter.await.unwrap();
        assert_eq!(first.unwrap().unwrap().topic, "/t/1", "queued events first");
        assert!(end.is_none());
        let mut late = x.subscribe();
        assert!(late.next().await.is_none(), "subscribed after close");
        assert_eq!(late.recv().await.unwrap_err(), Ended::Closed);
    }
}
