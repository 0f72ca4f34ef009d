//! Hostile gRPC messages into every corrald service (target `grpc_services`).
//!
//! The harness serves corrald's own router (`server::router`: every service, their message
//! limits, the HTTP/2 front) on a private root and socket, and calls it as a client would,
//! with raw bytes for messages. The input:
//!
//! ```text
//! byte 0   the method (an index into METHODS)
//! byte 1   bits 0-1: the namespace header (none, "fuzz", "other", "a/b");
//!          bit 2: a lease header
//! rest     the request message; for a client stream (Content.Write) messages separated
//!          by SEPARATOR
//! ```
//!
//! Property: every call answers (a unary one within its deadline) with a status the service
//! means: never Unknown, never Internal but for tonic's own "failed to decode Protobuf
//! message" (grpc-go, and so containerd, answers Internal there too); a call that fails leaves
//! the metadata and the files of the root as they were (partial ingests excepted: Write keeps
//! them for a later resume, as containerd does); memory stays bounded.
//!
//! Not called: Tasks.Create (it starts a shim for whatever runtime and spec the request
//! names), Diff (it mounts and writes what the request's mounts say), Transfer (it pulls from
//! any host): the daemon trusts its root-only socket with those, and a fuzzer must not run
//! containers, mount or reach the network as root. The layer and registry targets cover what
//! lies behind Diff and Transfer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut};
use protocol::fuzzing::{TempDir, split, tree};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::config::Config;
use crate::events::Exchange;
use crate::metadata::{self, Db};
use crate::services::{Daemon, LEASE_HEADER, NAMESPACE_HEADER, Shared};

pub const SEPARATOR: &[u8] = b"\0--next--\0";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Unary,
    ServerStream,
    /// Client or bidirectional streaming (Content.Write).
    Bidi,
}

use Kind::*;

/// Every method corrald serves but those named in the module doc.
const METHODS: &[(&str, Kind)] = &[
    ("/containerd.services.containers.v1.Containers/Get", Unary),
    ("/containerd.services.containers.v1.Containers/List", Unary),
    (
        "/containerd.services.containers.v1.Containers/ListStream",
        ServerStream,
    ),
    (
        "/containerd.services.containers.v1.Containers/Create",
        Unary,
    ),
    (
        "/containerd.services.containers.v1.Containers/Update",
        Unary,
    ),
    (
        "/containerd.services.containers.v1.Containers/Delete",
        Unary,
    ),
    ("/containerd.services.content.v1.Content/Info", Unary),
    ("/containerd.services.content.v1.Content/Update", Unary),
    ("/containerd.services.content.v1.Content/List", ServerStream),
    ("/containerd.services.content.v1.Content/Delete", Unary),
    ("/containerd.services.content.v1.Content/Read", ServerStream),
    ("/containerd.services.content.v1.Content/Status", Unary),
    (
        "/containerd.services.content.v1.Content/ListStatuses",
        Unary,
    ),
    ("/containerd.services.content.v1.Content/Write", Bidi),
    ("/containerd.services.content.v1.Content/Abort", Unary),
    ("/containerd.services.events.v1.Events/Publish", Unary),
    ("/containerd.services.events.v1.Events/Forward", Unary),
    (
        "/containerd.services.events.v1.Events/Subscribe",
        ServerStream,
    ),
    ("/containerd.services.images.v1.Images/Get", Unary),
    ("/containerd.services.images.v1.Images/List", Unary),
    ("/containerd.services.images.v1.Images/Create", Unary),
    ("/containerd.services.images.v1.Images/Update", Unary),
    ("/containerd.services.images.v1.Images/Delete", Unary),
    (
        "/containerd.services.introspection.v1.Introspection/Plugins",
        Unary,
    ),
    (
        "/containerd.services.introspection.v1.Introspection/Server",
        Unary,
    ),
    ("/containerd.services.leases.v1.Leases/Create", Unary),
    ("/containerd.services.leases.v1.Leases/Delete", Unary),
    ("/containerd.services.leases.v1.Leases/List", Unary),
    ("/containerd.services.leases.v1.Leases/AddResource", Unary),
    (
        "/containerd.services.leases.v1.Leases/DeleteResource",
        Unary,
    ),
    ("/containerd.services.leases.v1.Leases/ListResources", Unary),
    ("/containerd.services.namespaces.v1.Namespaces/Get", Unary),
    ("/containerd.services.namespaces.v1.Namespaces/List", Unary),
    (
        "/containerd.services.namespaces.v1.Namespaces/Create",
        Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/Update",
        Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/Delete",
        Unary,
    ),
    ("/containerd.services.snapshots.v1.Snapshots/Prepare", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/View", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/Mounts", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/Commit", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/Remove", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/Stat", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/Update", Unary),
    (
        "/containerd.services.snapshots.v1.Snapshots/List",
        ServerStream,
    ),
    ("/containerd.services.snapshots.v1.Snapshots/Usage", Unary),
    ("/containerd.services.snapshots.v1.Snapshots/Cleanup", Unary),
    ("/containerd.services.tasks.v1.Tasks/Start", Unary),
    ("/containerd.services.tasks.v1.Tasks/Delete", Unary),
    ("/containerd.services.tasks.v1.Tasks/DeleteProcess", Unary),
    ("/containerd.services.tasks.v1.Tasks/Get", Unary),
    ("/containerd.services.tasks.v1.Tasks/List", Unary),
    ("/containerd.services.tasks.v1.Tasks/Kill", Unary),
    ("/containerd.services.tasks.v1.Tasks/Exec", Unary),
    ("/containerd.services.tasks.v1.Tasks/ResizePty", Unary),
    ("/containerd.services.tasks.v1.Tasks/CloseIO", Unary),
    ("/containerd.services.tasks.v1.Tasks/Pause", Unary),
    ("/containerd.services.tasks.v1.Tasks/Resume", Unary),
    ("/containerd.services.tasks.v1.Tasks/ListPids", Unary),
    ("/containerd.services.tasks.v1.Tasks/Checkpoint", Unary),
    ("/containerd.services.tasks.v1.Tasks/Update", Unary),
    ("/containerd.services.tasks.v1.Tasks/Metrics", Unary),
    ("/containerd.services.tasks.v1.Tasks/Wait", Unary),
    ("/containerd.services.version.v1.Version/Version", Unary),
    ("/grpc.health.v1.Health/Check", Unary),
    ("/grpc.health.v1.Health/Watch", ServerStream),
];

/// What a bad request may be answered.
const ALLOWED: &[tonic::Code] = &[
    tonic::Code::InvalidArgument,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::FailedPrecondition,
    tonic::Code::Unimplemented,
    tonic::Code::OutOfRange,
    tonic::Code::ResourceExhausted,
];

const UNARY_DEADLINE: Duration = Duration::from_secs(10);
/// Streams such as Subscribe never end on their own: this long is read of them.
const STREAM_WINDOW: Duration = Duration::from_millis(100);

/// A codec of raw bytes: the message is whatever the input says.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    daemon: Shared,
    root: PathBuf,
    _dir: TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = TempDir::in_memory("corral-grpc-fuzz");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(&state).expect("state");
        let mut snapshotters: BTreeMap<String, Arc<dyn snapshotter::Snapshotter>> = BTreeMap::new();
        if let Ok(s) = snapshotter::OverlaySnapshotter::open(
            root.join("io.containerd.snapshotter.v1.overlayfs"),
        ) {
            snapshotters.insert("overlayfs".into(), Arc::new(s));
        }
        snapshotters.insert(
            "native".into(),
            Arc::new(
                snapshotter::NativeSnapshotter::open(
                    root.join("io.containerd.snapshotter.v1.native"),
                )
                .expect("native snapshotter"),
            ),
        );
        let daemon = Arc::new(Daemon {
            db: Db::open(&root.join("meta.redb")).expect("metadata"),
            events: Exchange::default(),
            gc: Default::default(),
            root: root.clone(),
            content: Arc::new(
                content::LocalStore::open(root.join("io.containerd.content.v1.content"))
                    .expect("content store"),
            ),
            snapshotters,
        });
        let mut cfg = Config {
            root: root.clone(),
            state: state.clone(),
            ..Config::default()
        };
        cfg.grpc.address = dir.path().join("corral.sock");
        let runtime = Arc::new(crate::runtime::Manager::new(
            &root,
            &state,
            crate::runtime::binary::ShimEnv {
                address: cfg.grpc.address.clone(),
                ttrpc_address: cfg.ttrpc_address(),
                publish_binary: PathBuf::from("/nonexistent/corrald"),
                debug: false,
            },
            cfg.runtime.clone(),
            daemon.events.clone(),
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let socket = cfg.grpc.address.clone();
        let channel = rt.block_on(async {
            let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
            let (router, _serving) = crate::server::router(&daemon, &runtime, &cfg)
                .expect("the default limits are valid");
            tokio::spawn(async move {
                let _keep = _serving;
                let _ = router
                    .serve_with_incoming(protocol::grpc::unix::incoming(listener))
                    .await;
            });
            protocol::grpc::unix::connect(&socket)
                .await
                .expect("connect")
        });
        // A lease for the lease header to name.
        {
            let tx = daemon.db.write().expect("tx");
            tx.ensure_namespace("fuzz").expect("namespace");
            tx.put(
                metadata::LEASES,
                &metadata::key("fuzz", &["fuzz-lease"]),
                &metadata::Lease {
                    labels: Default::default(),
                    created_at: metadata::Time::now(),
                },
            )
            .expect("lease");
            tx.commit().expect("commit");
        }
        Harness {
            rt,
            channel,
            daemon,
            root,
            _dir: dir,
        }
    })
}

/// The daemon's state: every metadata record and every file but partial ingests.
fn state(h: &Harness) -> (Vec<(String, String)>, BTreeMap<PathBuf, String>) {
    let mut records = Vec::new();
    for table in [
        metadata::NAMESPACES,
        metadata::IMAGES,
        metadata::CONTAINERS,
        metadata::CONTENT,
        metadata::SNAPSHOTS,
        metadata::LEASES,
        metadata::LEASE_RESOURCES,
    ] {
        for (k, v) in h
            .daemon
            .db
            .all::<serde_json::Value>(table)
            .expect("read metadata")
        {
            records.push((k, v.to_string()));
        }
    }
    let mut files = tree(&h.root);
    files.retain(|p, _| {
        !p.components().any(|c| c.as_os_str() == "ingest")
            && !p.to_string_lossy().ends_with("meta.redb")
            && !p.to_string_lossy().ends_with("metadata.db")
    });
    (records, files)
}

/// What came back from a call: its status, and whether it was cut short by our window.
struct Outcome {
    status: Result<(), Status>,
    windowed: bool,
}

async fn call(
    channel: Channel,
    path: &'static str,
    kind: Kind,
    req: Request<Vec<Vec<u8>>>,
) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        panic!("the server is not ready: {e}");
    }
    let name = path;
    let path = PathAndQuery::from_static(path);
    let (meta, ext, msgs) = req.into_parts();
    let first = msgs.first().cloned().unwrap_or_default();
    let status = match kind {
        Unary => {
            let r = Request::from_parts(meta, ext, first);
            let fut = grpc.unary(r, path, Raw);
            match tokio::time::timeout(UNARY_DEADLINE, fut).await {
                Ok(r) => r.map(drop),
                Err(_) => panic!("a unary call did not answer within {UNARY_DEADLINE:?}"),
            }
        }
        ServerStream => {
            let r = Request::from_parts(meta, ext, first);
            let read = async {
                let mut s = grpc.server_streaming(r, path, Raw).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok::<(), Status>(())
            };
            match tokio::time::timeout(STREAM_WINDOW, read).await {
                Ok(r) => r,
                Err(_) => {
                    return Outcome {
                        status: Ok(()),
                        windowed: true,
                    };
                }
            }
        }
        Bidi => {
            let stream = tokio_stream::iter(msgs);
            let r = Request::from_parts(meta, ext, stream);
            let read = async {
                let mut s = grpc.streaming(r, path, Raw).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok::<(), Status>(())
            };
            match tokio::time::timeout(UNARY_DEADLINE, read).await {
                Ok(r) => r,
                Err(_) => panic!("a stream of {name} did not end within {UNARY_DEADLINE:?}"),
            }
        }
    };
    Outcome {
        status,
        windowed: false,
    }
}

pub fn grpc_services(data: &[u8]) {
    let [method, flags, rest @ ..] = data else {
        return;
    };
    let (path, kind) = METHODS[usize::from(*method) % METHODS.len()];
    let h = harness();
    let msgs: Vec<Vec<u8>> = match kind {
        Bidi => split(rest, SEPARATOR)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect(),
        _ => vec![rest.to_vec()],
    };
    let mut req = Request::new(msgs);
    match flags & 3 {
        0 => {}
        n => {
            let ns = ["", "fuzz", "other", "a/b"][usize::from(n)];
            req.metadata_mut()
                .insert(NAMESPACE_HEADER, MetadataValue::from_static(ns));
        }
    }
    if flags & 4 != 0 {
        req.metadata_mut()
            .insert(LEASE_HEADER, MetadataValue::from_static("fuzz-lease"));
    }
    let before = state(h);
    let out = h.rt.block_on(call(h.channel.clone(), path, kind, req));
    if std::env::var_os("CORRAL_FUZZ_TRACE").is_some() {
        eprintln!(
            "{path}: {:?}{}",
            out.status
                .as_ref()
                .map_err(|s| (s.code(), s.message().to_string())),
            if out.windowed { " (window)" } else { "" }
        );
    }
    match &out.status {
        Ok(()) => {
            // What a success left for the collector goes now, not in the middle of a later
            // case (Images.Delete, Leases.Delete and Containers.Delete trigger a collection).
            crate::gc::collect(&h.daemon, std::time::SystemTime::now()).expect("gc");
        }
        Err(s) => {
            let code = s.code();
            let decode_error =
                code == tonic::Code::Internal && s.message().contains("failed to decode");
            assert!(
                ALLOWED.contains(&code) || decode_error,
                "{path} answered {code:?}: {}",
                s.message()
            );
            assert!(
                !s.message().is_empty(),
                "{path}: {code:?} without a message"
            );
            if kind == Unary && !out.windowed {
                let after = state(h);
                assert!(
                    after == before,
                    "{path} failed ({code:?}: {}) but changed the daemon's state:\n{}",
                    s.message(),
                    describe(&before, &after)
                );
            }
        }
    }
}

fn describe(
    before: &(Vec<(String, String)>, BTreeMap<PathBuf, String>),
    after: &(Vec<(String, String)>, BTreeMap<PathBuf, String>),
) -> String {
    let mut out = String::new();
    for r in after.0.iter().filter(|r| !before.0.contains(r)) {
        out.push_str(&format!("+ {r:?}\n"));
    }
    for r in before.0.iter().filter(|r| !after.0.contains(r)) {
        out.push_str(&format!("- {r:?}\n"));
    }
    for (p, v) in &after.1 {
        if before.1.get(p) != Some(v) {
            out.push_str(&format!("+ {} {v}\n", p.display()));
        }
    }
    for (p, v) in &before.1 {
        if after.1.get(p) != Some(v) {
            out.push_str(&format!("- {} {v}\n", p.display()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use protocol::fuzzing::grpc_wire::raw_call;
    use protocol::fuzzing::{Target, measure, run};

    use super::*;

    /// A message whose length prefix says 4 GiB is refused before anything is reserved for
    /// it (tonic answers OutOfRange; grpc-go, and so containerd, ResourceExhausted), and the
    /// server goes on serving.
    #[test]
    fn a_4_gib_message_prefix_is_refused_without_allocating_it() {
        let h = harness();
        let socket = h
            .root
            .parent()
            .expect("the harness dir")
            .join("corral.sock");
        let mut body = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        body.extend_from_slice(&[0x0a, 0x02, b'h', b'i']);
        let (answer, largest) = measure(|| {
            raw_call(
                &socket,
                "/containerd.services.namespaces.v1.Namespaces/List",
                &[("containerd-namespace", "fuzz")],
                &body,
                Duration::from_secs(10),
            )
        });
        let (code, message) = answer.expect("a grpc-status for the oversized message");
        assert!(
            [
                tonic::Code::OutOfRange as i32,
                tonic::Code::ResourceExhausted as i32
            ]
            .contains(&code),
            "answered {code}: {message}"
        );
        assert!(largest < 16 << 20, "allocated {largest} bytes at once");
        // Still serving.
        let answer = raw_call(
            &socket,
            "/containerd.services.version.v1.Version/Version",
            &[],
            &[0, 0, 0, 0, 0],
            Duration::from_secs(10),
        );
        assert_eq!(answer.map(|(c, _)| c), Some(0));
    }

    #[test]
    fn grpc_services() {
        run(
            &Target {
                name: "grpc_services",
                cases: 3000,
                max_alloc: 32 << 20,
                dict: &[
                    b"sha256:",
                    b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    b"overlayfs",
                    b"native",
                    b"labels.",
                    b"containerd.io/gc.root",
                    b"io.containerd.runc.v2",
                    b"types.containerd.io/opencontainers/runtime-spec/1/Spec",
                    b"/tasks/exit",
                    super::SEPARATOR,
                    &[0xff, 0xff, 0xff, 0xff, 0x0f],
                ],
            },
            super::grpc_services,
        );
    }
}
