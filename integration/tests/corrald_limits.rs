//! Bounds on what one client can make the daemon hold (issue 14 §4).
//!
//! Message limits as containerd's: 16 MiB each way by default, `[grpc] max_recv_message_size`
//! and `max_send_message_size` in the config; past them the call fails with ResourceExhausted
//! and grpc-go's message. Checked with clients we did not write (ctr, grpcio) against containerd
//! 1.6 (the reference) and corrald, and with our own tonic client for the streaming cases.
//!
//! An event subscriber that never reads is dropped once its backlog is full, with an error it
//! sees when it reads again, while corrald's memory stays bounded and the subscribers that do
//! read get every event.

use std::collections::HashMap;
use std::time::Duration;

use integration::containerd::Options;
use integration::{
    Containerd, Corrald, Daemon, EventStream, Runtime, Target, daemon_tests, procstat,
    require_root, wait_until,
};
use protocol::grpc::client::NAMESPACE_HEADER;
use protocol::grpc::containerd::services::content::v1 as content;
use protocol::grpc::containerd::services::events::v1 as events;
use protocol::grpc::containerd::services::namespaces::v1 as namespaces;
use protocol::grpc::tonic;
use protocol::grpc::{prost, prost_types};
use tonic::transport::Channel;

const CLIENT: &str = include_str!("grpcio/client.py");
/// The limits of the daemons started with small limits, each way.
const SMALL: usize = 16 * 1024;

fn small_limits(daemon: Daemon) -> Containerd {
    Containerd::start_with(
        Target {
            daemon,
            runtime: Runtime::Runc,
        },
        Options {
            // The test image's layers would not get through 16 KiB messages.
            import_image: false,
            message_limits: Some((SMALL, SMALL)),
            ..Options::default()
        },
    )
}

/// `count` labels of 4000 bytes (containerd refuses a label over 4 KiB).
fn label_args(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("l{i}={}", "x".repeat(4000)))
        .collect()
}

/// ctr (grpc-go) past a small configured limit, each way: a namespace whose labels make the
/// request too large, and a list whose answer is too large. Same code and message as
/// containerd; nothing is created by the refused request and the daemon keeps serving.
fn ctr_past_the_configured_limits(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = small_limits(daemon);
    let ctr = d.ctr();
    let big = format!("{}-big", d.namespace());
    let mut args = vec!["namespaces".to_string(), "create".into(), big.clone()];
    args.extend(label_args(5));
    // ctr turns codes it has no errdefs class for into "unknown": grpc-go's text is what
    // shows the limit (grpcio below sees the code itself).
    let out = ctr.run(&args);
    assert!(!out.success(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("grpc: received message larger than max (")
            && out.stderr.contains(&format!(" vs. {SMALL})")),
        "{}",
        out.stderr
    );
    let names = ctr.ok(&["namespaces", "ls", "-q"]);
    assert!(!names.lines().any(|l| l == big), "{names}");

    // Each create is under the limit; the list of all of them is not.
    for i in 0..3 {
        let mut args = vec![
            "namespaces".to_string(),
            "create".into(),
            format!("{}-n{i}", d.namespace()),
        ];
        args.extend(label_args(2));
        ctr.ok(&args);
    }
    let out = ctr.run(&["namespaces", "ls"]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr
            .contains("grpc: trying to send message larger than max (")
            && out.stderr.contains(&format!(" vs. {SMALL})")),
        "{}",
        out.describe()
    );
    ctr.ok(&["version"]);
}

/// grpcio (grpc C-core) with its default channel against the default 16 MiB limit: a Publish
/// of 15 MiB goes through, one just over 16 MiB gets ResourceExhausted with grpc-go's text.
fn grpcio_past_the_default_limit(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = Containerd::start_with(
        Target {
            daemon,
            runtime: Runtime::Runc,
        },
        Options {
            import_image: false,
            ..Options::default()
        },
    );
    let got = integration::grpcio::run_script(
        CLIENT,
        &["limits", d.address().to_str().unwrap(), d.namespace()],
    );
    assert_eq!(got["under"]["code"], "OK", "{got}");
    assert_eq!(got["over"]["code"], "RESOURCE_EXHAUSTED", "{got}");
    let size = got["over"]["size"].as_u64().unwrap();
    assert!(size > 16 << 20, "{got}");
    assert_eq!(
        got["over"]["details"],
        format!("grpc: received message larger than max ({size} vs. 16777216)"),
        "{got}"
    );
    d.ctr().ok(&["version"]);
}

daemon_tests!(
    ctr_past_the_configured_limits,
    grpcio_past_the_default_limit
);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(NAMESPACE_HEADER, ns.parse().unwrap());
    r.set_timeout(Duration::from_secs(60));
    r
}

/// Our own client, which could send more than the server takes: a unary request and one
/// message of a Content.Write stream past the limit, and a unary answer past it. The write
/// stream's error comes in its answer stream, and the ingest keeps only what came before it.
#[test]
fn tonic_client_past_the_configured_limits() {
    if !require_root() {
        return;
    }
    let d = small_limits(Daemon::Corrald);
    let ns = d.namespace().to_string();
    runtime().block_on(async {
        let ch = protocol::grpc::unix::connect(d.address()).await.unwrap();
        let mut nsc = namespaces::namespaces_client::NamespacesClient::new(ch.clone())
            .max_encoding_message_size(usize::MAX);
        let labels = |n: usize| -> HashMap<String, String> {
            (0..n)
                .map(|i| (format!("l{i}"), "x".repeat(4000)))
                .collect()
        };
        let create = |name: String, n: usize| namespaces::CreateNamespaceRequest {
            namespace: Some(namespaces::Namespace {
                name,
                labels: labels(n),
            }),
        };
        let e = nsc
            .create(request(&ns, create(format!("{ns}-big"), 5)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message()
                .starts_with("grpc: received message larger than max (")
                && e.message().ends_with(&format!(" vs. {SMALL})")),
            "{e:?}"
        );

        // A write stream: 1000 bytes, then a message past the limit.
        let mut cc = content::content_client::ContentClient::new(ch.clone())
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let write = |offset: i64, len: usize| content::WriteContentRequest {
            action: content::WriteAction::Write as i32,
            r#ref: "limits-ingest".into(),
            offset,
            data: vec![b'a'; len].into(),
            ..Default::default()
        };
        tx.send(write(0, 1000)).await.unwrap();
        let mut answers = cc
            .write(request(
                &ns,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
            .unwrap()
            .into_inner();
        let first = answers.message().await.unwrap().unwrap();
        assert_eq!(first.offset, 1000);
        tx.send(write(1000, 2 * SMALL)).await.unwrap();
        let e = answers.message().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("larger than max"), "{e:?}");
        drop(tx);
        let status = cc
            .status(request(
                &ns,
                content::StatusRequest {
                    r#ref: "limits-ingest".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            status.offset, 1000,
            "nothing of the refused message was written"
        );

        // Answers: each create is under the limit, the list is not.
        for i in 0..3 {
            nsc.create(request(&ns, create(format!("{ns}-n{i}"), 2)))
                .await
                .unwrap();
        }
        let e = nsc
            .list(request(&ns, namespaces::ListNamespacesRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message()
                .starts_with("grpc: trying to send message larger than max ("),
            "{e:?}"
        );
        // The same connection still works.
        nsc.get(request(
            &ns,
            namespaces::GetNamespaceRequest {
                name: format!("{ns}-n0"),
            },
        ))
        .await
        .unwrap();
    });
}

/// Events of this size make up the flow in the subscriber test.
const BIG_EVENT: usize = 128 * 1024;
/// How many: 250 MiB in all, far more than the backlog (16 MiB).
const BIG_EVENTS: usize = 2000;
/// How much corrald's memory may grow while they flow: the stalled subscriber's backlog (16
/// MiB), what is in flight, and the allocator's slack. Measured: +12 MiB; before subscribers
/// were bounded, +244 MiB (the shared ring kept 4096 events for the stalled one).
const RSS_GROWTH_MAX_KIB: u64 = 48 * 1024;

fn blob(topic_index: usize, size: usize) -> prost_types::Any {
    let mut value = (topic_index as u64).to_le_bytes().to_vec();
    value.resize(size, 0);
    prost_types::Any {
        type_url: "corral.test/Blob".into(),
        value,
    }
}

async fn publish(ch: &Channel, ns: &str, topic: &str, event: prost_types::Any) {
    events::events_client::EventsClient::new(ch.clone())
        .max_encoding_message_size(usize::MAX)
        .publish(request(
            ns,
            events::PublishRequest {
                topic: topic.into(),
                event: Some(event),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("publish {topic}: {e:?}"));
}

/// A small event `ctr events` can print (a type it knows).
fn small(n: usize) -> prost_types::Any {
    use prost::Message;
    let e = protocol::grpc::containerd::events::NamespaceCreate {
        name: format!("small-{n}"),
        labels: Default::default(),
    };
    prost_types::Any {
        type_url: protocol::grpc::any::NAMESPACE_CREATE.into(),
        value: e.encode_to_vec(),
    }
}

/// One subscriber subscribes and never reads while 250 MiB of events flow; another (ours)
/// reads them all, and `ctr events` reads the small ones among them. The stalled one is
/// dropped while the events flow (corrald logs it), sees ResourceExhausted when it reads
/// at last, and corrald's RSS grows by less than [`RSS_GROWTH_MAX_KIB`]; the readers miss
/// nothing.
#[test]
fn a_subscriber_that_never_reads_is_dropped_and_memory_stays_bounded() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let pid = d.pid().unwrap();
    let ns = d.namespace().to_string();
    let ctr_events = EventStream::spawn(d.ctr(), &[r#"topic=="/corral-test/small""#]);
    runtime().block_on(async {
        let connect = || protocol::grpc::unix::connect(d.address());
        let publisher = connect().await.unwrap();

        // ctr's subscription is live once it prints one of ours: it gets every one from the
        // first it printed on.
        let mut smalls = 0;
        loop {
            publish(&publisher, &ns, "/corral-test/small", small(smalls)).await;
            smalls += 1;
            let seen = ctr_events.try_wait_for(Duration::from_millis(200), |evs| {
                (!evs.is_empty()).then_some(())
            });
            if seen.is_some() {
                break;
            }
            assert!(smalls < 100, "`ctr events` never delivered an event");
        }

        // Our reader: every big event, in order.
        let mut reader = events::events_client::EventsClient::new(connect().await.unwrap())
            .max_decoding_message_size(usize::MAX)
            .subscribe(request(
                &ns,
                events::SubscribeRequest {
                    filters: vec![r#"topic=="/corral-test/big""#.into()],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let reading = tokio::spawn(async move {
            let mut n = 0usize;
            while n < BIG_EVENTS {
                let env = reader.message().await.unwrap().unwrap();
                let value = env.event.unwrap().value;
                assert_eq!(value.len(), BIG_EVENT);
                assert_eq!(
                    value[..8],
                    (n as u64).to_le_bytes(),
                    "event {n} out of order"
                );
                n += 1;
            }
            n
        });

        // Warm up (buffers, allocator) before the baseline.
        for i in 0..20 {
            publish(&publisher, &ns, "/corral-test/warmup", blob(i, BIG_EVENT)).await;
        }
        let start = procstat::of(pid).unwrap();

        let mut stalled = events::events_client::EventsClient::new(connect().await.unwrap())
            .max_decoding_message_size(usize::MAX)
            .subscribe(request(&ns, events::SubscribeRequest::default()))
            .await
            .unwrap()
            .into_inner();

        let mut peak = start;
        for i in 0..BIG_EVENTS {
            publish(&publisher, &ns, "/corral-test/big", blob(i, BIG_EVENT)).await;
            if i % 100 == 99 {
                publish(&publisher, &ns, "/corral-test/small", small(smalls)).await;
                smalls += 1;
            }
            if i % 25 == 0 {
                let now = procstat::of(pid).unwrap();
                peak.rss_kib = peak.rss_kib.max(now.rss_kib);
            }
        }
        eprintln!(
            "corrald with a stalled subscriber: {start} before {BIG_EVENTS} events of \
             {BIG_EVENT} bytes, peak RSS {:.1} MiB",
            peak.rss_kib as f64 / 1024.0
        );
        assert!(
            peak.rss_kib <= start.rss_kib + RSS_GROWTH_MAX_KIB,
            "corrald's RSS grew from {start} to {:.1} MiB",
            peak.rss_kib as f64 / 1024.0
        );
        assert_eq!(reading.await.unwrap(), BIG_EVENTS);

        // Dropped while the events flowed, not when it finally reads.
        let log = std::fs::read_to_string(d.log_path()).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("level=warning") && l.contains("not reading")),
            "no warning about the stalled subscriber in corrald's log"
        );
        let mut received = 0usize;
        let err = loop {
            match stalled.message().await {
                Ok(Some(_)) => received += 1,
                Ok(None) => panic!("the stalled stream ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("subscribe again"), "{err:?}");
        assert!(received < BIG_EVENTS / 2, "{received} events reached it");

        // ctr read every small event from its first on, in order.
        let name = |e: &integration::Event| e.payload["name"].as_str().unwrap_or("").to_string();
        let first = name(&ctr_events.events()[0]);
        let from: usize = first.trim_start_matches("small-").parse().unwrap();
        let want: Vec<String> = (from..smalls).map(|n| format!("small-{n}")).collect();
        let got = ctr_events.wait_for("every small event", Duration::from_secs(30), |evs| {
            (evs.len() >= want.len()).then(|| evs.iter().map(name).collect::<Vec<_>>())
        });
        assert_eq!(got, want);
    });
    wait_until("corrald still answers", Duration::from_secs(10), || {
        d.ctr().run(&["version"]).success().then_some(())
    });
}
