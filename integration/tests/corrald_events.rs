//! corrald's events seen through the real ctr 1.6: `ctr events` with and without filters, the
//! daemon's own namespace events, `corrald publish`, and a shim-style Forward over the
//! `<address>.ttrpc` socket arriving unchanged.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration::events::{Event, EventStream};
use integration::{Corrald, require_root};
use protocol::Code;
use protocol::events::{Envelope, ForwardRequest};
use protocol::events_ttrpc::EventsClient;
use protocol::protobuf::well_known_types::{any::Any, timestamp::Timestamp};
use protocol::protobuf::{Message, MessageField};
use protocol::task_events::{TaskExit, TaskOOM};

const WAIT: Duration = Duration::from_secs(20);

/// `ctr events [filters]` against a corrald (the harness's [`EventStream`]). `start` returns
/// once the subscription is live: it creates and removes marker namespaces until a marker's
/// `/namespaces/delete` shows up (so every filter used here must let `/namespaces/delete`
/// through).
struct CtrEvents {
    stream: EventStream,
}

impl CtrEvents {
    fn start(d: &Corrald, filters: &[&str]) -> CtrEvents {
        let me = CtrEvents {
            stream: EventStream::spawn(d.ctr(), filters),
        };
        for attempt in 0..40 {
            let marker = format!("{}-mark{attempt}", d.namespace());
            d.ctr().ok(&["namespaces", "create", &marker]);
            d.ctr().ok(&["namespaces", "rm", &marker]);
            if me.try_wait(Duration::from_millis(500), |e| {
                e.topic == "/namespaces/delete" && e.payload["name"] == marker.as_str()
            }) {
                return me;
            }
        }
        panic!("`ctr events` did not deliver a marker /namespaces/delete within 20 s");
    }

    fn events(&self) -> Vec<Event> {
        self.stream.events()
    }

    fn try_wait(&self, timeout: Duration, f: impl Fn(&Event) -> bool) -> bool {
        self.stream
            .try_wait_for(timeout, |evs| evs.iter().any(&f).then_some(()))
            .is_some()
    }

    /// Waits for the first event that satisfies `f`; panics with what was seen on timeout.
    fn wait(&self, what: &str, f: impl Fn(&Event) -> bool) -> Event {
        if self.try_wait(WAIT, &f) {
            return self.events().into_iter().find(|e| f(e)).unwrap();
        }
        let seen: Vec<String> = self
            .events()
            .iter()
            .map(|e| format!("{} {} {} {}", e.timestamp, e.namespace, e.topic, e.payload))
            .collect();
        panic!(
            "timed out waiting for {what}; ctr events printed:\n{}",
            seen.join("\n")
        );
    }
}

fn is_marker(e: &Event) -> bool {
    e.payload["name"]
        .as_str()
        .is_some_and(|n| n.contains("-mark"))
}

fn name_of(e: &Event) -> String {
    e.payload["name"].as_str().unwrap_or_default().to_string()
}

#[test]
fn ctr_events_shows_namespace_create_and_delete() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let evs = CtrEvents::start(&d, &[]);
    let name = format!("{}-x", d.namespace());
    d.ctr().ok(&["namespaces", "create", &name, "team=a"]);
    d.ctr().ok(&["namespaces", "rm", &name]);
    let create = evs.wait("/namespaces/create", |e| {
        e.topic == "/namespaces/create" && name_of(e) == name
    });
    assert_eq!(
        create.payload["labels"]["team"], "a",
        "{:?}",
        create.payload
    );
    evs.wait("/namespaces/delete", |e| {
        e.topic == "/namespaces/delete" && name_of(e) == name
    });
    // In order: the create was printed before the delete.
    let all = evs.events();
    let pos = |topic: &str| {
        all.iter()
            .position(|e| e.topic == topic && name_of(e) == name)
            .unwrap()
    };
    assert!(pos("/namespaces/create") < pos("/namespaces/delete"));
}

#[test]
fn filtered_subscription_shows_only_matching_events() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let keep = format!("{}-keep", d.namespace());
    let skip = format!("{}-skip", d.namespace());
    // Two filters, OR-ed; inside the second, `,` is AND and `~=` a regular expression.
    let second = format!(r#"topic~="^/namespaces/cr",event.name=="{keep}""#);
    let evs = CtrEvents::start(&d, &[r#"topic=="/namespaces/delete""#, &second]);
    for n in [&skip, &keep] {
        d.ctr().ok(&["namespaces", "create", n]);
    }
    for n in [&skip, &keep] {
        d.ctr().ok(&["namespaces", "rm", n]);
    }
    evs.wait("the last delete", |e| {
        e.topic == "/namespaces/delete" && name_of(e) == keep
    });
    // Events arrive in order, so anything the filters let through is there by now.
    let seen: Vec<(String, String)> = evs
        .events()
        .iter()
        .filter(|e| !is_marker(e))
        .map(|e| (e.topic.clone(), name_of(e)))
        .collect();
    let want = vec![
        ("/namespaces/create".to_string(), keep.clone()),
        ("/namespaces/delete".to_string(), skip.clone()),
        ("/namespaces/delete".to_string(), keep.clone()),
    ];
    assert_eq!(seen, want);
    assert!(
        evs.events()
            .iter()
            .all(|e| e.topic == "/namespaces/delete" || !is_marker(e)),
        "a marker's /namespaces/create passed the filter"
    );

    // A filter that does not parse is refused, naming it.
    let bad = d.ctr().run(&["events", "topic=="]);
    assert!(!bad.success(), "{}", bad.describe());
    assert!(
        bad.stderr.contains("invalid filter") && bad.stderr.contains("topic=="),
        "{}",
        bad.describe()
    );
}

fn any_of(type_url: &str, msg: &impl Message) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: msg.write_to_bytes().unwrap(),
        ..Default::default()
    }
}

fn corrald_publish(address: &std::path::Path, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut c = Command::new(integration::corrald::corrald_path());
    c.arg("--address").arg(address).arg("publish").args(args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("cannot run corrald publish");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn corrald_publish_reaches_ctr_events() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let evs = CtrEvents::start(&d, &[]);
    let ns = d.namespace().to_string();
    let mut oom = TaskOOM::new();
    oom.container_id = "oom-c1".into();
    let event = any_of("containerd.events.TaskOOM", &oom)
        .write_to_bytes()
        .unwrap();
    let (ok, err) = corrald_publish(
        &d.address(),
        &["--topic", "/tasks/oom", "--namespace", &ns],
        &event,
    );
    assert!(ok, "corrald publish failed: {err}");
    let e = evs.wait("/tasks/oom", |e| e.topic == "/tasks/oom");
    assert_eq!(e.namespace, ns);
    assert_eq!(e.container_id(), Some("oom-c1"));

    // Refusals: each exits non-zero and says why.
    let cases: [(&[&str], &[u8], &str); 4] = [
        (
            &["--topic", "tasks/oom", "--namespace", &ns],
            &event,
            "must start with '/'",
        ),
        (
            &["--topic", "/tasks/oom", "--namespace", "bad/ns"],
            &event,
            "invalid",
        ),
        (
            &["--topic", "/tasks/oom", "--namespace", &ns],
            b"\xff\xff\xff",
            "not a marshaled",
        ),
        (
            &["--topic", "/tasks/oom", "--namespace", &ns],
            b"",
            "no event on stdin",
        ),
    ];
    for (args, stdin, want) in cases {
        let (ok, err) = corrald_publish(&d.address(), args, stdin);
        assert!(
            !ok && err.contains(want),
            "{args:?}: want {want:?} in {err:?}"
        );
    }
    let (ok, err) = corrald_publish(
        &d.root().join("nobody.sock"),
        &["--topic", "/tasks/oom", "--namespace", &ns],
        &event,
    );
    assert!(!ok && err.contains("connect to"), "{err}");
    assert_eq!(
        evs.events()
            .iter()
            .filter(|e| e.topic == "/tasks/oom")
            .count(),
        1,
        "a refused event was published"
    );
}

#[test]
fn shim_forward_over_ttrpc_arrives_unchanged() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let evs = CtrEvents::start(&d, &[]);
    let ns = d.namespace().to_string();
    let mut ttrpc_path = d.address().into_os_string();
    ttrpc_path.push(".ttrpc");
    let ttrpc_path = std::path::PathBuf::from(ttrpc_path);

    let mut exit = TaskExit::new();
    exit.container_id = "fwd-c1".into();
    exit.id = "fwd-e1".into();
    exit.pid = 4242;
    exit.exit_status = 137;
    exit.exited_at = MessageField::some(Timestamp {
        seconds: 1_700_000_001,
        nanos: 500_000_000,
        ..Default::default()
    });
    let envelope = |ns: &str, topic: &str| {
        let mut env = Envelope::new();
        env.timestamp = MessageField::some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
            ..Default::default()
        });
        env.namespace = ns.into();
        env.topic = topic.into();
        env.event = MessageField::some(any_of("containerd.events.TaskExit", &exit));
        env
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let c = ttrpc::r#async::Client::connect(&format!("unix://{}", ttrpc_path.display()))
            .await
            .expect("connect to corrald's ttrpc socket");
        let c = EventsClient::new(c);
        let mut out = Vec::new();
        for (ns, topic) in [
            (ns.as_str(), "/tasks/exit"),
            ("bad/ns", "/tasks/exit"),
            (ns.as_str(), "/tasks/"),
        ] {
            let mut req = ForwardRequest::new();
            req.envelope = MessageField::some(envelope(ns, topic));
            let mut md = HashMap::new();
            md.insert(
                "containerd-namespace-ttrpc".to_string(),
                vec![ns.to_string()],
            );
            let mut ctx = ttrpc::context::with_metadata(md);
            ctx.timeout_nano = 5_000_000_000;
            out.push(c.forward(ctx, &req).await.map(drop));
        }
        out
    });
    results[0].as_ref().expect("forward of a valid envelope");
    for r in &results[1..] {
        let e = r.as_ref().unwrap_err();
        assert_eq!(Code::of_ttrpc(e), Code::InvalidArgument, "{e:?}");
    }

    let e = evs.wait("/tasks/exit", |e| e.topic == "/tasks/exit");
    // The shim's own timestamp, not the daemon's; ctr could decode the event, so its type URL
    // arrived as sent.
    assert_eq!(e.timestamp, "2023-11-14 22:13:20.123456789 +0000 UTC");
    assert_eq!(e.namespace, ns);
    assert_eq!(e.container_id(), Some("fwd-c1"));
    assert_eq!(e.payload["id"], "fwd-e1");
    assert_eq!(e.u64_field("pid"), 4242);
    assert_eq!(e.u64_field("exit_status"), 137);
    assert_eq!(e.payload["exited_at"], "2023-11-14T22:13:21.5Z");
    assert_eq!(
        evs.events()
            .iter()
            .filter(|e| e.topic.starts_with("/tasks/"))
            .count(),
        1,
        "a refused envelope was published"
    );
}

fn ttrpc_address(d: &Corrald) -> std::path::PathBuf {
    let mut p = d.address().into_os_string();
    p.push(".ttrpc");
    p.into()
}

/// Connects to corrald's ttrpc socket and forwards one TaskOOM as a shim would.
fn forward_oom(d: &Corrald, container: &str) -> Result<(), ttrpc::Error> {
    let mut oom = TaskOOM::new();
    oom.container_id = container.into();
    let mut env = Envelope::new();
    env.timestamp = MessageField::some(Timestamp {
        seconds: 1_700_000_000,
        ..Default::default()
    });
    env.namespace = d.namespace().into();
    env.topic = "/tasks/oom".into();
    env.event = MessageField::some(any_of("containerd.events.TaskOOM", &oom));
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(env);
    let path = ttrpc_address(d);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let c = ttrpc::r#async::Client::connect(&format!("unix://{}", path.display())).await?;
            EventsClient::new(c)
                .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                .await
                .map(drop)
        })
}

#[test]
fn ttrpc_socket_lives_and_dies_with_the_daemon() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !require_root() {
        return;
    }
    let mut d = Corrald::start();
    let m = std::fs::metadata(ttrpc_address(&d)).expect("the ttrpc socket exists");
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o777, 0o600, "only root's shims may forward");

    // kill -9 leaves both sockets behind; a restart replaces the stale ttrpc one.
    d.kill_9();
    assert!(ttrpc_address(&d).exists());
    d.restart();
    let evs = CtrEvents::start(&d, &[]);
    forward_oom(&d, "after-restart").expect("forward after restart");
    let e = evs.wait("/tasks/oom", |e| e.topic == "/tasks/oom");
    assert_eq!(e.container_id(), Some("after-restart"));

    // SIGTERM with a subscriber attached: the stream ends, the daemon exits and removes both
    // sockets (an open `ctr events` must not hold the graceful shutdown up).
    let pid = d.pid().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on the daemon's pid, which the harness has not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    integration::wait_until(
        "corrald removes its sockets",
        Duration::from_secs(8),
        || (!d.address().exists() && !ttrpc_address(&d).exists()).then_some(()),
    );
    drop(evs);
}

/// The daemon's own events for images, snapshots and content, as ctr shows them: an import
/// publishes /images/create and the unpack's /snapshot/prepare and /snapshot/commit; a blob
/// removed by hand publishes /content/delete, removing the image /images/delete.
#[test]
fn image_snapshot_and_content_events() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let events = CtrEvents::start(&d, &[]);
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("img.tar");
    std::fs::write(&tar, integration::image::test_image_tar()).unwrap();
    d.ctr().ok(&["images", "import", tar.to_str().unwrap()]);
    let image = integration::IMAGE_REF;
    events.wait("/images/create", |e| {
        e.topic == "/images/create" && e.payload["name"] == image
    });
    events.wait("/snapshot/prepare", |e| e.topic == "/snapshot/prepare");
    let commit = events.wait("/snapshot/commit", |e| e.topic == "/snapshot/commit");
    assert!(
        commit.payload["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("sha256:")),
        "{}",
        commit.payload
    );

    // Removed by hand while the image still exists (GC would collect it silently later).
    let blob = d.ctr().ok(&["content", "ls", "-q"]);
    let digest = blob.lines().next().expect("imported content").to_string();
    d.ctr().ok(&["content", "rm", &digest]);
    events.wait("/content/delete", |e| {
        e.topic == "/content/delete" && e.payload["digest"] == digest.as_str()
    });
    d.ctr().ok(&["images", "rm", image]);
    events.wait("/images/delete", |e| {
        e.topic == "/images/delete" && e.payload["name"] == image
    });
}
