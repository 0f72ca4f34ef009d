//! The event exchange: everything published in corrald (its own events and those shims
//! forward) fans out to every Subscribe stream. Slow subscribers lose the oldest events
//! (a bounded broadcast channel) rather than slow the daemon down.
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
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::metadata::Time;
use protocol::filters::{Fields, Filters};

const BACKLOG: usize = 4096;
/// At most this many task events of the outage are held; past it the oldest go.
const HOLD_MAX: usize = 1024;
/// How long after start-up the task events of the outage are replayed to new subscribers:
/// well past the reconnect backoff of containerd's Go client (capped at 3 s) and the shims'
/// retries (ours back off to 2 s; containerd's gives up after about 20 s).
pub const HOLD_WINDOW: Duration = Duration::from_secs(60);
/// How many recent exits are remembered to drop a second copy of one.
const RECENT_EXITS: usize = 4096;

#[derive(Clone)]
pub struct Exchange {
    tx: broadcast::Sender<Envelope>,
    /// Set at shutdown: subscriptions end, so that the server's graceful shutdown, which
    /// waits for open streams, is not held up by `ctr events`.
    closed: Arc<watch::Sender<bool>>,
    /// Subscribe streams' filters and the held events. Sending happens under this lock, so a
    /// new subscriber gets each event exactly once: replayed from the held ones, or live.
    clients: Arc<Mutex<Clients>>,
    /// OOM kills shims missed (see [`crate::oom`]).
    oom: Arc<crate::oom::OomCheck>,
}

#[derive(Default)]
struct Clients {
    hold: Option<Held>,
    exits: RecentExits,
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

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            tx: broadcast::channel(BACKLOG).0,
            closed: Arc::new(watch::channel(false).0),
            clients: Arc::default(),
            oom: Arc::default(),
        }
    }
}

/// A Subscribe stream's view of the exchange: the held events of the outage its filters
/// match, then everything published from its subscription on.
pub struct Subscription {
    pub replay: Vec<Envelope>,
    pub rx: broadcast::Receiver<Envelope>,
    pub filters: Filters,
}

fn lock(m: &Mutex<Clients>) -> std::sync::MutexGuard<'_, Clients> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        if env.topic.starts_with("/tasks/")
            && let Some(held) = clients.held()
            && (held.starting || stamp(&env) < held.started)
        {
            if held.events.len() == HOLD_MAX {
                held.events.remove(0);
            }
            let at = stamp(&env);
            let i = held.events.partition_point(|e| stamp(e) <= at);
            held.events.insert(i, env.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(env);
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

    /// A new receiver for the daemon's own use, seeing what is published from now on. A
    /// receiver that falls more than the backlog behind gets `RecvError::Lagged` and skips
    /// ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.tx.subscribe()
    }

    /// A client's subscription with `filters`: it gets the held events of the outage its
    /// filters match (in the order they happened), then everything published from now on.
    pub fn subscribe_filtered(&self, filters: Filters) -> Subscription {
        let mut clients = lock(&self.clients);
        let rx = self.tx.subscribe();
        let mut replay = Vec::new();
        if let Some(held) = clients.held() {
            replay = held
                .events
                .iter()
                .filter(|e| filters.matches(&EnvelopeFields(e)))
                .cloned()
                .collect();
        }
        drop(clients);
        if !replay.is_empty() {
            log::info!(
                "events: {} task events of the outage replayed to a new subscriber",
                replay.len()
            );
        }
        Subscription {
            replay,
            rx,
            filters,
        }
    }

    /// Ends every subscription (daemon shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`Exchange::close`] was called.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
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
        let mut early = x.subscribe_filtered(filters(&[r#"namespace==moby,topic~="^/tasks/""#]));
        assert_eq!(ids(&early.replay), ["a", "b"], "in the order they happened");
        // A shim that comes back late still delivers an exit of the outage: live to those
        // subscribed, held for those to come.
        x.forward(exit_at("moby", "c", 30));
        assert_eq!(ids(&[early.rx.recv().await.unwrap()]), ["c"]);
        // Something that happens now is not of the outage.
        let now = Time::now().seconds;
        x.forward(exit_at("moby", "new", now + 1));
        assert_eq!(ids(&[early.rx.recv().await.unwrap()]), ["new"]);

        let late = x.subscribe_filtered(filters(&["namespace==moby"]));
        assert_eq!(ids(&late.replay), ["a", "b", "c"]);
        let all = x.subscribe_filtered(Filters::default());
        assert_eq!(ids(&all.replay), ["a", "k", "b", "c"]);
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
        let got: Vec<_> = (0..3)
            .map(|_| rx.try_recv().unwrap())
            .map(|e| (e.namespace.clone(), stamp(&e).0))
            .collect();
        assert_eq!(
            got,
            [("ns".into(), 5), ("ns".into(), 6), ("other".into(), 6)]
        );
        assert!(rx.try_recv().is_err(), "a copy went through");
    }

    #[tokio::test]
    async fn nothing_is_held_without_a_restart_or_after_the_window() {
        let fresh = Exchange::default();
        fresh.forward(exit_of("moby", "a"));
        assert!(
            fresh
                .subscribe_filtered(Filters::default())
                .replay
                .is_empty()
        );

        let x = Exchange::default();
        x.hold_outage_events(Duration::ZERO);
        x.forward(exit_of("moby", "a"));
        assert!(x.subscribe_filtered(Filters::default()).replay.is_empty());

        let y = Exchange::default();
        y.hold_outage_events(Duration::from_secs(60));
        y.forward(exit_of("moby", "a"));
        y.stop_holding();
        assert!(y.subscribe_filtered(Filters::default()).replay.is_empty());
    }

    #[tokio::test]
    async fn the_hold_is_bounded() {
        let x = Exchange::default();
        x.hold_outage_events(Duration::from_secs(60));
        for i in 0..HOLD_MAX + 3 {
            x.forward(exit_at("moby", &format!("c{i}"), i as i64 + 1));
        }
        let s = x.subscribe_filtered(Filters::default());
        assert_eq!(s.replay.len(), HOLD_MAX);
        assert_eq!(ids(&s.replay[..1]), ["c3"], "the oldest went");
    }

    #[tokio::test]
    async fn a_lagging_subscriber_skips_ahead() {
        let x = Exchange::default();
        let mut slow = x.subscribe();
        for i in 0..(BACKLOG + 5) {
            x.publish("ns", &format!("/t/{i}"), Any::default());
        }
        match slow.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(slow.recv().await.unwrap().topic, "/t/5");
    }
}
