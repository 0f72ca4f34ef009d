//! What containerd's own Go client and its integration suite (v1.6.20 `integration/client`)
//! rely on beyond what ctr exercises elsewhere (issue 13), against containerd 1.6 (the
//! reference) and corrald: a label set on a missing namespace creates it; a Write stream for
//! a ref whose previous writer was just closed is served, not refused; the legacy
//! `io.containerd.runtime.v1.linux` runtime; user-namespaced containers.

use std::time::{Duration, Instant};

use integration::containerd::Options;
use integration::{
    Containerd, Daemon, IMAGE_REF, Runtime, Target, daemon_tests, require_root, runtime_tests,
    wait_until,
};
use protocol::grpc::client::Client;
use protocol::grpc::containerd::services::containers::v1::container::Runtime as ContainerRuntime;
use protocol::grpc::containerd::services::containers::v1::{
    CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
};
use protocol::grpc::containerd::services::content::v1::{
    AbortRequest, StatusRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use protocol::grpc::containerd::services::snapshots::v1::MountsRequest;
use protocol::grpc::containerd::services::tasks::v1::CreateTaskRequest;
use protocol::grpc::prost_types;
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

/// `client.IsServing` (and dockerd before it resubscribes): the standard health Check of the
/// whole server answers SERVING; an unknown service name is NotFound.
fn health_check_is_serving(daemon: Daemon) {
    use protocol::grpc::grpc::health::v1::HealthCheckRequest;
    use protocol::grpc::grpc::health::v1::health_check_response::ServingStatus;
    use protocol::grpc::grpc::health::v1::health_client::HealthClient;
    if !require_root() {
        return;
    }
    let d = start_bare(daemon);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = protocol::grpc::unix::connect(d.address()).await.unwrap();
        let mut health = HealthClient::new(channel);
        let whole = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("Check")
            .into_inner();
        assert_eq!(whole.status(), ServingStatus::Serving);
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    });
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
/// each writer is closed right after a 64 KiB Write is sent, while the server is still
/// writing (and hashing) it; the next writer then resumes after it. (containerd's own pauses
/// are random, 0 to 2^n ms, so on a very loaded machine its retries can run out first.)
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
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let (mut w, offset) = open_writer(&c, reference).await.expect("first writer");
        assert_eq!(offset, 0);
        let mut expected = 0;
        for round in 0..100 {
            w.send_write(expected, &chunk).await;
            expected += chunk.len() as i64;
            let previous = w.close();
            let deadline = Instant::now() + Duration::from_secs(30);
            let (next, offset) = loop {
                match open_writer(&c, reference).await {
                    Ok(v) => break v,
                    // containerd's retries inside the server (random pauses, 0 to 2^n ms) can
                    // run out on a loaded machine: its answer is then Unavailable, which the
                    // Go client retries too. corrald waits for the release and must not.
                    Err(e)
                        if daemon == Daemon::Containerd
                            && e.code() == tonic::Code::Unavailable
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err(e) => panic!("round {round}: {:?}: {}", e.code(), e.message()),
                }
            };
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

/// The legacy runtime containerd 1.6 still serves (deprecated; its own `containerd-shim`).
const RUNTIME_V1: &str = "io.containerd.runtime.v1.linux";

/// `containerd.linux.runc.RuncOptions{runtime: <binary>}`, the v1 runtime's options (field 1,
/// a string: tag 0x0a, length, bytes).
fn v1_runc_options(binary: &str) -> prost_types::Any {
    assert!(binary.len() < 128, "one-byte length only");
    let mut value = vec![0x0a, binary.len() as u8];
    value.extend_from_slice(binary.as_bytes());
    prost_types::Any {
        type_url: "containerd.linux.runc.RuncOptions".into(),
        value,
    }
}

/// containerd's TestContainerRuntimeOptionsv1: a container of the v1 runtime whose runc
/// options name a binary that does not exist. Creating its task fails, and the error names
/// the missing binary in quotes (the Go client suite looks for `"no-runc"`); nothing is left
/// behind.
fn v1_runtime_with_a_missing_runc_names_it(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(Target {
        daemon,
        runtime: Runtime::Runc,
    });
    // A container made by ctr lends its spec and snapshot.
    let src = d.new_id("src");
    d.ctr().ok(&["containers", "create", IMAGE_REF, &src]);
    let id = d.new_id("v1");
    let address = d.address();
    let ns = d.namespace().to_string();
    let err = runtime().block_on(async {
        let c = Client::connect(&address, ns).await.expect("connect");
        let base = c
            .containers()
            .get(c.req(GetContainerRequest { id: src.clone() }))
            .await
            .expect("get the ctr-made container")
            .into_inner()
            .container
            .expect("container");
        let mut container = base.clone();
        container.id = id.clone();
        container.runtime = Some(ContainerRuntime {
            name: RUNTIME_V1.into(),
            options: Some(v1_runc_options("no-runc")),
        });
        container.created_at = None;
        container.updated_at = None;
        c.containers()
            .create(c.req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .expect("create the v1 container");
        let rootfs = c
            .snapshots()
            .mounts(c.req(MountsRequest {
                snapshotter: base.snapshotter.clone(),
                key: base.snapshot_key.clone(),
            }))
            .await
            .expect("mounts of the snapshot")
            .into_inner()
            .mounts;
        let created = c
            .tasks()
            .create(c.req(CreateTaskRequest {
                container_id: id.clone(),
                rootfs,
                ..CreateTaskRequest::default()
            }))
            .await;
        c.containers()
            .delete(c.req(DeleteContainerRequest { id: id.clone() }))
            .await
            .expect("delete the v1 container");
        match created {
            Ok(_) => panic!("a task with runc binary \"no-runc\" was created"),
            Err(e) => e,
        }
    });
    // containerd: `OCI runtime create failed: unable to retrieve OCI runtime error (open
    // <bundle>/log.json: no such file or directory): exec: "no-runc": executable file not
    // found in $PATH: unknown`.
    assert_eq!(err.code(), tonic::Code::Unknown, "{}", err.message());
    assert!(
        err.message().contains("\"no-runc\""),
        "the error does not name the missing binary: {:?}: {}",
        err.code(),
        err.message()
    );
    d.ctr().ok(&["containers", "rm", &src]);
    d.assert_no_leaks();
}

/// A container of the v1 runtime with no options runs (with runc) and reports its exit status.
fn v1_runtime_runs_a_container(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(Target {
        daemon,
        runtime: Runtime::Runc,
    });
    let id = d.new_id("v1run");
    let fifo = d.dir().join("fifo").display().to_string();
    let out = d.ctr().run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME_V1,
        "--fifo-dir",
        &fifo,
        IMAGE_REF,
        &id,
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.code(), Some(7), "{}", out.describe());
    d.assert_no_leaks();
}

/// The id range of the user namespace: container ids 0..65536 are host ids 100000…
const USERNS_HOST_ID: u32 = 100_000;
const USERNS_MAPPING: &str = "0:100000:65536";

/// containerd's TestUserNamespaces: a container with uid/gid mappings (`ctr run --uidmap
/// --gidmap`, which also makes a copy of the image's snapshot chowned into the range) runs in
/// its user namespace as the remapped root, and can write its rootfs. runc mounts
/// `<bundle>/rootfs` from inside the namespace, so the bundle must be group-owned by the
/// remapped root with mode 0710; corrald made it 0700 root and runc failed with "permission
/// denied".
fn user_namespace_container_runs(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start(t);
    // The harness's temp dir is 0700 (tempfile's default), which no remapped root could
    // traverse to reach the bundle; containerd's default state dir, /run/containerd, is 0711.
    std::fs::set_permissions(d.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .expect("chmod the daemon's dir");
    let userns = ["--uidmap", USERNS_MAPPING, "--gidmap", USERNS_MAPPING];

    // Exit 7 only if the namespace maps as asked and the remapped rootfs is writable.
    let check = "read c h n < /proc/self/uid_map; [ \"$c $h $n\" = '0 100000 65536' ] || exit 1; \
                 touch /written || exit 2; exit 7";
    let id = d.new_id("userns");
    let mut flags = vec!["--rm"];
    flags.extend(userns);
    let out = d.ctr_run(&flags, &id, &["sh", "-c", check]);
    assert_eq!(out.code(), Some(7), "{}", out.describe());

    // While one runs, its bundle is reachable by the remapped root and no one else.
    let id = d.new_id("userns-bundle");
    let mut flags = vec!["-d"];
    flags.extend(userns);
    let out = d.ctr_run(&flags, &id, &["sleep", "1000"]);
    assert!(out.success(), "{}", out.describe());
    wait_until("the task to run", Duration::from_secs(30), || {
        d.ctr()
            .tasks()
            .iter()
            .any(|t| t.id == id && t.status == "RUNNING")
            .then_some(())
    });
    let meta = std::fs::metadata(d.bundle(&id)).expect("stat the bundle");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o710, 0, USERNS_HOST_ID),
        "bundle mode, owner, group"
    );
    d.ctr().ok(&["tasks", "kill", "-s", "KILL", &id]);
    wait_until("the task to stop", Duration::from_secs(30), || {
        d.ctr()
            .tasks()
            .iter()
            .any(|t| t.id == id && t.status == "STOPPED")
            .then_some(())
    });
    d.ctr().ok(&["tasks", "rm", &id]);
    d.ctr().ok(&["containers", "rm", &id]);
    d.assert_no_leaks();
}

runtime_tests!(user_namespace_container_runs);

daemon_tests!(
    health_check_is_serving,
    v1_runtime_with_a_missing_runc_names_it,
    v1_runtime_runs_a_container,
    label_creates_a_missing_namespace,
    reopening_a_just_closed_ref_is_served,
    a_held_ref_is_unavailable,
);
