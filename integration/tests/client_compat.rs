//! What containerd's own Go client and its integration suite (v1.6.20 `integration/client`)
//! rely on beyond what ctr exercises elsewhere (issue 13), against containerd 1.6 (the
//! reference) and corrald: a label set on a missing namespace creates it; a Write stream for
//! a ref whose previous writer was just closed is served, not refused; the legacy
//! `io.containerd.runtime.v1.linux` runtime; user-namespaced containers.

use std::time::{Duration, Instant};

use integration::containerd::Options;
use integration::{Containerd, Daemon, Runtime, Target, daemon_tests, require_root};
use protocol::grpc::client::Client;
use protocol::grpc::containerd::services::content::v1::{
    AbortRequest, StatusRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use protocol::grpc::tonic;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A daemon without the test image: these tests only use its API.
fn start_bare(daemon: Daemon) -> Containerd {
    Containerd::start_with(
        Target {
            daemon,
            runtime: Runtime::Runc,
        },
        Options {
            import_image: false,
            ..Options::default()
        },
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The row of `ctr namespaces ls` naming `name`.
fn namespace_row(ctr: &integration::Ctr, name: &str) -> Option<String> {
    ctr.ok(&["namespaces", "ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_string)
}

/// `ctr namespaces label` (the Go client's `SetLabel`, an Update with mask `labels.<key>`) on
/// a namespace that does not exist creates it with the label; the client suite's set-up labels
/// its namespace that way before anything else.
fn label_creates_a_missing_namespace(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = start_bare(daemon);
    let ctr = d.ctr();
    let name = format!("{}-labelled", d.namespace());
    assert_eq!(namespace_row(ctr, &name), None, "{name} exists already");

    ctr.ok(&["namespaces", "label", &name, "team=a"]);
    let row = namespace_row(ctr, &name).unwrap_or_else(|| panic!("{name} not created"));
    assert!(row.contains("team=a"), "{row}");

    // An empty value removes the label; the namespace stays.
    ctr.ok(&["namespaces", "label", &name, "team="]);
    let row = namespace_row(ctr, &name).unwrap_or_else(|| panic!("{name} gone"));
    assert!(!row.contains("team"), "{row}");

    ctr.ok(&["namespaces", "rm", &name]);
    assert_eq!(namespace_row(ctr, &name), None);
}

/// An open Write stream as the Go client's content proxy holds it: the request side (closed
/// by the writer's `Close`) and the response side.
struct RemoteWriter {
    requests: mpsc::Sender<WriteContentRequest>,
    responses: tonic::Streaming<WriteContentResponse>,
}

/// What the Go client's `Writer` does: open a Write stream with a Stat of `reference` and wait
/// for the answer. Returns the writer and the ingest's offset.
async fn open_writer(c: &Client, reference: &str) -> Result<(RemoteWriter, i64), tonic::Status> {
    let (requests, rx) = mpsc::channel(4);
    requests
        .send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            ..WriteContentRequest::default()
        })
        .await
        .expect("queue the stat");
    let mut req = c.req(ReceiverStream::new(rx));
    req.set_timeout(Duration::from_secs(60));
    let mut responses = c.content().write(req).await?.into_inner();
    let stat = responses
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("write stream ended without answering the stat"))?;
    Ok((
        RemoteWriter {
            requests,
            responses,
        },
        stat.offset,
    ))
}

impl RemoteWriter {
    /// Sends a Write of `data` at `offset` without waiting for its answer.
    async fn send_write(&self, offset: i64, data: &[u8]) {
        self.requests
            .send(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: data.to_vec().into(),
                ..WriteContentRequest::default()
            })
            .await
            .expect("queue the write");
    }

    /// The Go client's `Close`: closes the request side only and returns the response side,
    /// which the caller drops when it likes (the Go client leaves it to the stream's context).
    fn close(self) -> tonic::Streaming<WriteContentResponse> {
        drop(self.requests);
        self.responses
    }
}

/// The Go client's writer `Close` only closes its side of the stream and returns; the server
/// drops the writer (and releases the ref) a moment later. A writer for the same ref opened at
/// once must be served (after the release), not refused — 100 times over. To widen the race,
/// each writer is closed right after a 256 KiB Write is sent, while the server is still
/// writing (and hashing) it; the next writer then resumes after it.
fn reopening_a_just_closed_ref_is_served(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = start_bare(daemon);
    let address = d.address();
    let ns = d.namespace().to_string();
    runtime().block_on(async move {
        let c = Client::connect(&address, ns).await.expect("connect");
        let reference = "compat-resume";
        let chunk: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8).collect();
        let (mut w, offset) = open_writer(&c, reference).await.expect("first writer");
        assert_eq!(offset, 0);
        let mut expected = 0;
        for round in 0..100 {
            w.send_write(expected, &chunk).await;
            expected += chunk.len() as i64;
            let previous = w.close();
            let (next, offset) = open_writer(&c, reference)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {:?}: {}", e.code(), e.message()));
            assert_eq!(
                offset, expected,
                "round {round}: the ingest resumes after the last write"
            );
            drop(previous);
            w = next;
        }
        drop(w);
        let abort = || async {
            c.content()
                .abort(c.req(AbortRequest {
                    r#ref: reference.to_string(),
                }))
                .await
        };
        if daemon == Daemon::Corrald {
            // Abort races the release the same way, and waits for it too.
            abort().await.expect("abort right after close");
        } else {
            // containerd's Abort takes no lock: racing the closing writer it may fail to
            // remove the ingest directory ("directory not empty"). Retry until it is released.
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = abort().await {
                assert!(Instant::now() < deadline, "abort: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let e = c
            .content()
            .status(c.req(StatusRequest {
                r#ref: reference.to_string(),
            }))
            .await
            .expect_err("status of an aborted ref");
        assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    });
}

/// A ref held by an open writer is still refused with Unavailable, once the retries are over
/// (corrald's pauses add up to 511 ms; containerd's are random).
fn a_held_ref_is_unavailable(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = start_bare(daemon);
    let address = d.address();
    let ns = d.namespace().to_string();
    runtime().block_on(async move {
        let c = Client::connect(&address, ns).await.expect("connect");
        let reference = "compat-held";
        let (held, _) = open_writer(&c, reference).await.expect("first writer");
        let t0 = Instant::now();
        let e = match open_writer(&c, reference).await {
            Ok(_) => panic!("a second writer of a held ref was opened"),
            Err(e) => e,
        };
        let waited = t0.elapsed();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
        if daemon == Daemon::Corrald {
            assert!(
                waited >= Duration::from_millis(500),
                "refused after {waited:?}, without retrying"
            );
        }
        drop(held);
    });
}

daemon_tests!(
    label_creates_a_missing_namespace,
    reopening_a_just_closed_ref_is_served,
    a_held_ref_is_unavailable,
);
