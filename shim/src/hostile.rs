//! Hostile ttrpc frames into the shim (target `shim_ttrpc`; see `protocol::fuzzing` for how
//! targets run).
//!
//! The input is what a client writes on the shim's socket: frames of any length, stream id,
//! type and flags, requests for any service and method, any payload. They go to the real ttrpc
//! server and the real Task service, as `serve` sets them up, on a private socket.
//!
//! Property: every answer is a well-formed response frame on a stream the client opened, with
//! a status the service means (InvalidArgument, NotFound, Unimplemented, ... never Unknown or
//! Internal); the server closes the connection once the client is done; the next client is
//! served; memory stays bounded (a 4 GiB length prefix is refused, not allocated); the shim
//! holds no container afterwards.
//!
//! One rewrite keeps this safe to run as root: Create's bundle is an empty directory of the
//! harness (so Create stops at the bundle's missing config.json) and its rootfs and stdio are
//! dropped: the shim trusts its daemon with paths to mount and open, and the fuzzer must not
//! mount or truncate the host's files. Every other method sees the request as sent.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use protobuf::Message;
use protobuf::well_known_types::empty::Empty;
use protocol::Code;
use protocol::fuzzing::TempDir;
use protocol::fuzzing::ttrpc_wire::{self, check_responses};
use protocol::shim::*;
use protocol::shim_ttrpc::Task;
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::service::Service;

const TASK: &str = "containerd.task.v2.Task";

/// What a bad request may be answered.
const ALLOWED: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::Unimplemented,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    // A request whose own deadline (timeout_nano) passed.
    Code::DeadlineExceeded,
];

pub fn shim_ttrpc(data: &[u8]) {
    let h = harness();
    let out = ttrpc_wire::exchange(&h.socket, data, &probe(), Duration::from_secs(20));
    check_responses(data, &out, ALLOWED);
    // The server is still there for the next client, and holds no container.
    let (code, payload) = ttrpc_wire::call(&h.socket, &probe());
    assert_eq!(code, Code::Ok, "Connect after the case");
    let resp = ConnectResponse::parse_from_bytes(&payload).expect("a ConnectResponse");
    assert_eq!(resp.shim_pid, std::process::id());
    assert!(
        h.service.container_ids().is_empty(),
        "the shim holds containers after hostile requests: {:?}",
        h.service.container_ids()
    );
}

/// A Connect on the sentinel stream: every shim answers it.
fn probe() -> Vec<u8> {
    let mut req = ConnectRequest::new();
    req.id = "probe".into();
    let payload = req.write_to_bytes().expect("encode");
    ttrpc_wire::request(ttrpc_wire::SENTINEL_STREAM, TASK, "Connect", &payload)
}

struct Harness {
    socket: PathBuf,
    service: Arc<Service>,
}

/// The shim's server on a private socket, on a thread of its own with the shim's
/// single-threaded runtime; started once per process.
fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = TempDir::new("corral-shim-fuzz");
        let socket = dir.path().join("shim.sock");
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).expect("create the bundle dir");
        let (tx, rx) = std::sync::mpsc::channel();
        let sock = socket.clone();
        std::thread::Builder::new()
            .name("shim-server".into())
            .spawn(move || {
                let _dir = dir;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let (reaper, _exits) = Reaper::new();
                    let service = Service::new(
                        "fuzz",
                        reaper,
                        Publisher::new("fuzz"),
                        Arc::new(Notify::new()),
                    );
                    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
                    let mut server = ttrpc::r#async::Server::new()
                        .add_listener(listener.into())
                        .register_service(protocol::bad_payloads_are_invalid_argument(
                            protocol::shim_ttrpc::create_task(Arc::new(Guarded {
                                inner: service.clone(),
                                bundle,
                            })),
                        ));
                    server.start().await.expect("start the ttrpc server");
                    tx.send(service).expect("hand the service over");
                    std::future::pending::<()>().await;
                });
            })
            .expect("spawn the server thread");
        let service = rx.recv().expect("the server starts");
        Harness { socket, service }
    })
}

/// The Task service with Create's paths pointed into the harness (see the module doc).
struct Guarded {
    inner: Arc<Service>,
    bundle: PathBuf,
}

impl Guarded {
    fn defuse(&self, mut req: CreateTaskRequest) -> CreateTaskRequest {
        req.bundle = self.bundle.to_string_lossy().into_owned();
        req.rootfs.clear();
        req.stdin.clear();
        req.stdout.clear();
        req.stderr.clear();
        req
    }
}

type R<T> = ttrpc::Result<T>;

#[async_trait]
impl Task for Guarded {
    async fn state(&self, c: &TtrpcContext, r: StateRequest) -> R<StateResponse> {
        self.inner.state(c, r).await
    }
    async fn create(&self, c: &TtrpcContext, r: CreateTaskRequest) -> R<CreateTaskResponse> {
        self.inner.create(c, self.defuse(r)).await
    }
    async fn start(&self, c: &TtrpcContext, r: StartRequest) -> R<StartResponse> {
        self.inner.start(c, r).await
    }
    async fn delete(&self, c: &TtrpcContext, r: DeleteRequest) -> R<DeleteResponse> {
        self.inner.delete(c, r).await
    }
    async fn pids(&self, c: &TtrpcContext, r: PidsRequest) -> R<PidsResponse> {
        self.inner.pids(c, r).await
    }
    async fn pause(&self, c: &TtrpcContext, r: PauseRequest) -> R<Empty> {
        self.inner.pause(c, r).await
    }
    async fn resume(&self, c: &TtrpcContext, r: ResumeRequest) -> R<Empty> {
        self.inner.resume(c, r).await
    }
    async fn checkpoint(&self, c: &TtrpcContext, r: CheckpointTaskRequest) -> R<Empty> {
        self.inner.checkpoint(c, r).await
    }
    async fn kill(&self, c: &TtrpcContext, r: KillRequest) -> R<Empty> {
        self.inner.kill(c, r).await
    }
    async fn exec(&self, c: &TtrpcContext, r: ExecProcessRequest) -> R<Empty> {
        self.inner.exec(c, r).await
    }
    async fn resize_pty(&self, c: &TtrpcContext, r: ResizePtyRequest) -> R<Empty> {
        self.inner.resize_pty(c, r).await
    }
    async fn close_io(&self, c: &TtrpcContext, r: CloseIORequest) -> R<Empty> {
        self.inner.close_io(c, r).await
    }
    async fn update(&self, c: &TtrpcContext, r: UpdateTaskRequest) -> R<Empty> {
        self.inner.update(c, r).await
    }
    async fn wait(&self, c: &TtrpcContext, r: WaitRequest) -> R<WaitResponse> {
        self.inner.wait(c, r).await
    }
    async fn stats(&self, c: &TtrpcContext, r: StatsRequest) -> R<StatsResponse> {
        self.inner.stats(c, r).await
    }
    async fn connect(&self, c: &TtrpcContext, r: ConnectRequest) -> R<ConnectResponse> {
        self.inner.connect(c, r).await
    }
    async fn shutdown(&self, c: &TtrpcContext, r: ShutdownRequest) -> R<Empty> {
        self.inner.shutdown(c, r).await
    }
}

#[cfg(test)]
mod tests {
    use protocol::fuzzing::{Target, measure, run};

    use super::*;

    #[test]
    fn shim_ttrpc() {
        run(
            &Target {
                name: "shim_ttrpc",
                cases: 2000,
                max_alloc: 16 << 20,
                dict: &[
                    b"containerd.task.v2.Task",
                    b"Create",
                    b"Exec",
                    b"Kill",
                    b"Wait",
                    b"Shutdown",
                    &[0, 0, 0, 1],
                    &[0xff, 0xff, 0xff, 0xff],
                    &[0, 0x40, 0, 0],
                    &[1, 0],
                    &[2, 0],
                    &[3, 2],
                    &[3, 1],
                    &[3, 4],
                ],
            },
            super::shim_ttrpc,
        );
    }

    /// A frame announcing 4 GiB costs no 4 GiB (ttrpc discards what follows in pages, and
    /// the connection ends when the client does), one just over ttrpc's 4 MiB limit is
    /// refused with InvalidArgument, and the server goes on serving.
    #[test]
    fn a_4_gib_length_prefix_is_refused_without_allocating_it() {
        let h = harness();
        let head = |len: u32| {
            let mut f = Vec::new();
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&1u32.to_be_bytes());
            f.extend_from_slice(&[ttrpc_wire::REQUEST, 0]);
            f
        };
        let mut huge = head(u32::MAX);
        huge.extend_from_slice(&[0u8; 4096]);
        let (out, largest) =
            measure(|| ttrpc_wire::exchange(&h.socket, &huge, &probe(), Duration::from_secs(20)));
        check_responses(&huge, &out, &[Code::InvalidArgument]);
        assert!(largest < 16 << 20, "allocated {largest} bytes at once");

        let over = (ttrpc_wire::MAX_FRAME + 1) as u32;
        let mut big = head(over);
        big.resize(big.len() + over as usize, 0);
        let (out, largest) =
            measure(|| ttrpc_wire::exchange(&h.socket, &big, &probe(), Duration::from_secs(20)));
        let codes = check_responses(&big, &out, &[Code::InvalidArgument]);
        assert_eq!(codes[0], Code::InvalidArgument, "{codes:?}");
        assert!(largest < 16 << 20, "allocated {largest} bytes at once");
        super::shim_ttrpc(b"");
    }
}
