//! The real clients: crictl 1.36 (client-go's SPDY and WebSocket executors, and its
//! SPDY-over-WebSocket port-forward dialer) against the transport, through a fake CRI that
//! answers Exec, Attach and PortForward with our URLs and a backend that runs host
//! processes. Both transports for every case. crictl must be installed (it is part of the
//! test environment, as runc is).

use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::grpc::runtime::v1::image_service_server::{ImageService, ImageServiceServer};
use protocol::grpc::runtime::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use protocol::grpc::runtime::v1::*;
use protocol::grpc::tonic::{self, Request, Response, Status};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::client::within;
use crate::streaming::transport::{
    Backend, Outcome, PortForwardSession, Purpose, RemoteCommand, RemoteCommandOptions, Route,
};

type Streamed<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

enum Ticket {
    Exec(Vec<String>),
    Attach,
    PortForward,
}

/// Runs exec commands as host processes; attach greets and echoes; port-forward echoes.
#[derive(Default)]
struct Host {
    tokens: Mutex<std::collections::HashMap<String, (Purpose, Ticket)>>,
    next: AtomicU64,
    /// Terminal sizes the clients sent.
    sizes: Mutex<Vec<crate::streaming::transport::TermSize>>,
}

impl Host {
    fn issue(&self, purpose: Purpose, t: Ticket) -> String {
        let token = format!("t{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.tokens
            .lock()
            .unwrap()
            .insert(token.clone(), (purpose, t));
        token
    }
}

async fn pipe<R, W>(mut r: R, mut w: W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

impl Backend for Host {
    type Ticket = Ticket;

    fn redeem(&self, _: Route, token: &str) -> Option<(Purpose, Ticket)> {
        self.tokens.lock().unwrap().remove(token)
    }

    async fn remote_command(&self, t: Ticket, mut rc: RemoteCommand) {
        if let Some(mut sizes) = rc.resize.take() {
            // The first size comes with the session; later ones are not waited for.
            if let Ok(Some(s)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), sizes.recv()).await
            {
                self.sizes.lock().unwrap().push(s);
            }
        }
        let cmd = match t {
            Ticket::Exec(cmd) => cmd,
            Ticket::Attach => {
                let mut out = rc.stdout.take().unwrap();
                out.write_all(b"attached\n").await.unwrap();
                if let Some(i) = rc.stdin.take() {
                    pipe(i, out).await;
                }
                let _ = rc.status.finish(Outcome::Success).await;
                return;
            }
            Ticket::PortForward => return,
        };
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(if rc.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match c.spawn() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("exec {:?}: {e}", cmd[0]);
                let _ = rc.status.finish(Outcome::Error(msg)).await;
                return;
            }
        };
        if let (Some(i), Some(ci)) = (rc.stdin.take(), child.stdin.take()) {
            tokio::spawn(pipe(i, ci));
        }
        let mut copies = Vec::new();
        if let (Some(o), Some(co)) = (rc.stdout.take(), child.stdout.take()) {
            copies.push(tokio::spawn(pipe(co, o)));
        }
        if let (Some(e), Some(ce)) = (rc.stderr.take(), child.stderr.take()) {
            copies.push(tokio::spawn(pipe(ce, e)));
        }
        let status = child.wait().await.unwrap();
        for c in copies {
            let _ = c.await;
        }
        let _ = rc
            .status
            .finish(Outcome::Exit(status.code().unwrap_or(255)))
            .await;
    }

    async fn port_forward(&self, _: Ticket, mut session: PortForwardSession) {
        while let Some(mut s) = session.next().await {
            tokio::spawn(async move {
                if s.port == 1 {
                    let _ = s.error.write_all(b"connection refused").await;
                    return;
                }
                let _ = tokio::io::copy(&mut s.data_in, &mut s.data_out).await;
            });
        }
    }
}

struct FakeCri {
    base: String,
    host: Arc<Host>,
}

macro_rules! fake_cri {
    ($($name:ident($req:ident) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl RuntimeService for FakeCri {
            async fn version(&self, _: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
                Ok(Response::new(VersionResponse {
                    version: "0.1.0".into(),
                    runtime_name: "streaming-test".into(),
                    runtime_version: "0".into(),
                    runtime_api_version: "v1".into(),
                }))
            }

            async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
                let r = r.into_inner();
                let opts = RemoteCommandOptions { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty };
                let t = self.host.issue(Purpose::RemoteCommand(opts), Ticket::Exec(r.cmd));
                Ok(Response::new(ExecResponse { url: format!("{}/exec/{t}", self.base) }))
            }

            async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
                let r = r.into_inner();
                let opts = RemoteCommandOptions { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty };
                let t = self.host.issue(Purpose::RemoteCommand(opts), Ticket::Attach);
                Ok(Response::new(AttachResponse { url: format!("{}/attach/{t}", self.base) }))
            }

            async fn port_forward(&self, _: Request<PortForwardRequest>) -> Result<Response<PortForwardResponse>, Status> {
                let t = self.host.issue(Purpose::PortForward, Ticket::PortForward);
                Ok(Response::new(PortForwardResponse { url: format!("{}/portforward/{t}", self.base) }))
            }

            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented("the fake CRI serves Version, Exec, Attach and PortForward only"))
                }
            )*
        }
    };
}

fake_cri! {
    runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
    run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
    stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
    remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
    pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
    list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
    create_container(CreateContainerRequest) -> CreateContainerResponse;
    start_container(StartContainerRequest) -> StartContainerResponse;
    stop_container(StopContainerRequest) -> StopContainerResponse;
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
    list_containers(ListContainersRequest) -> ListContainersResponse;
    container_status(ContainerStatusRequest) -> ContainerStatusResponse;
    update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
    reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
    exec_sync(ExecSyncRequest) -> ExecSyncResponse;
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
    list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
    list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
    update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
    status(StatusRequest) -> StatusResponse;
    checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
    list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
    list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse;
    stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> Streamed<StreamPodSandboxMetricsResponse>;
    stream_pod_sandboxes(StreamPodSandboxesRequest) -> Streamed<StreamPodSandboxesResponse>;
    stream_containers(StreamContainersRequest) -> Streamed<StreamContainersResponse>;
    stream_container_stats(StreamContainerStatsRequest) -> Streamed<StreamContainerStatsResponse>;
    stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> Streamed<StreamPodSandboxStatsResponse>;
    get_container_events(GetEventsRequest) -> Streamed<ContainerEventResponse>;
}

/// crictl checks the image API answers before it execs; an empty image service does.
struct NoImages;

#[tonic::async_trait]
impl ImageService for NoImages {
    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn image_status(
        &self,
        _: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn pull_image(
        &self,
        _: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Err(Status::unimplemented("the fake CRI has no images"))
    }
    async fn remove_image(
        &self,
        _: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(Default::default()))
    }
    async fn stream_images(
        &self,
        _: Request<StreamImagesRequest>,
    ) -> Result<Response<Streamed<StreamImagesResponse>>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }
}

/// A fake CRI on a unix socket and the streaming server on TCP; both stop when dropped.
struct Node {
    dir: tempfile::TempDir,
    host: Arc<Host>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Node {
    async fn start() -> Node {
        Node::start_with(None).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(Host::default());
        let host_for_test = host.clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", l.local_addr().unwrap());
        let (stop, rx) = tokio::sync::watch::channel(false);
        let streaming = tokio::spawn({
            let host = host.clone();
            async move {
                crate::streaming::transport::serve(l, tls, host, rx)
                    .await
                    .unwrap();
            }
        });
        let sock = tokio::net::UnixListener::bind(dir.path().join("cri.sock")).unwrap();
        let grpc = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(FakeCri { base, host }))
                .add_service(ImageServiceServer::new(NoImages))
                .serve_with_incoming(protocol::grpc::unix::incoming(sock))
                .await;
        });
        Node {
            dir,
            host: host_for_test,
            tasks: vec![streaming, grpc],
            _stop: stop,
        }
    }

    fn crictl(&self, args: &[&str]) -> Command {
        let endpoint = format!("unix://{}", self.dir.path().join("cri.sock").display());
        let mut c = Command::new("crictl");
        c.args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "--timeout",
            "20s",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        c
    }

    /// Runs crictl with `input` on stdin; (exit code, stdout, stderr).
    async fn run(&self, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
        let mut child = self.crictl(args).spawn().expect("crictl is installed");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let out = within(&format!("crictl {args:?}"), child.wait_with_output())
            .await
            .unwrap();
        feeder.abort();
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

#[tokio::test]
async fn crictl_exec() {
    let node = Node::start().await;
    for tr in TRANSPORTS {
        let (code, out, err) = node
            .run(
                &["exec", "--transport", tr, "-i", "c1", "cat"],
                b"hello through crictl\n",
            )
            .await;
        assert_eq!(code, 0, "{tr}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "hello through crictl\n",
            "{tr}"
        );

        let (code, out, err) = node
            .run(
                &[
                    "exec",
                    "--transport",
                    tr,
                    "c1",
                    "sh",
                    "-c",
                    "echo out; echo err >&2; exit 7",
                ],
                b"",
            )
            .await;
        assert_ne!(code, 0, "{tr}");
        assert_eq!(out, b"out\n", "{tr}");
        assert!(err.contains("err\n"), "{tr}: {err}");
        assert!(err.contains("exit code 7"), "{tr}: {err}");

        let (code, _, err) = node
            .run(&["exec", "--transport", tr, "c1", "/no/such/binary"], b"")
            .await;
        assert_ne!(code, 0, "{tr}");
        assert!(err.contains("/no/such/binary"), "{tr}: {err}");
    }
}

#[tokio::test]
async fn crictl_exec_carries_10_mb_of_stdin_intact() {
    let node = Node::start().await;
    let data: Vec<u8> = (0..10 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for tr in TRANSPORTS {
        let (code, out, err) = node
            .run(&["exec", "--transport", tr, "-i", "c1", "cat"], &data)
            .await;
        assert_eq!(code, 0, "{tr}: {err}");
        assert_eq!(out.len(), data.len(), "{tr}");
        assert!(out == data, "{tr}: the bytes differ");
    }
}

#[tokio::test]
async fn crictl_attach() {
    let node = Node::start().await;
    for tr in TRANSPORTS {
        let (code, out, err) = node
            .run(&["attach", "--transport", tr, "-i", "c1"], b"typed\n")
            .await;
        assert_eq!(code, 0, "{tr}: {err}");
        assert_eq!(String::from_utf8_lossy(&out), "attached\ntyped\n", "{tr}");
    }
}

#[tokio::test]
async fn crictl_port_forward() {
    let node = Node::start().await;
    for tr in TRANSPORTS {
        let mut child = node
            .crictl(&["port-forward", "--transport", tr, "pod1", "0:8080", "0:1"])
            .spawn()
            .expect("crictl is installed");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // "Forwarding from 127.0.0.1:NNNNN -> 8080", then the same for port 1.
        let mut local = std::collections::HashMap::new();
        while local.len() < 2 {
            let line = within("crictl to listen", lines.next_line())
                .await
                .unwrap()
                .expect("a line");
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let (l, r) = rest.split_once(" -> ").unwrap();
                local.insert(r.trim().to_string(), l.parse::<u16>().unwrap());
            }
        }
        for round in 0..3 {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local["8080"]))
                .await
                .unwrap();
            let msg = format!("ping {round} over {tr}");
            s.write_all(msg.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = String::new();
            within("echo", s.read_to_string(&mut back)).await.unwrap();
            assert_eq!(back, msg, "{tr}");
        }
        // The refused port: crictl reports the error stream's message.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local["1"]))
            .await
            .unwrap();
        let mut back = Vec::new();
        let _ = within("refused connection to end", s.read_to_end(&mut back)).await;
        assert!(back.is_empty());
        let _ = child.start_kill();
        let _ = child.wait().await;
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
        assert!(err.contains("connection refused"), "{tr}: {err}");
    }
}

#[tokio::test]
async fn crictl_exec_over_tls() {
    let data = |n: &str| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/streaming/transport/tests/testdata")
            .join(n)
    };
    let cfg = crate::streaming::transport::load_tls(&data("server.pem"), &data("server-key.pem"))
        .unwrap();
    let node = Node::start_with(Some(cfg)).await;
    let ca = data("ca.pem");
    // crictl insists on a client certificate with a CA; ours asks for none, so any will do.
    let (cert, key) = (data("server.pem"), data("server-key.pem"));
    for tr in TRANSPORTS {
        let (code, out, err) = node
            .run(
                &[
                    "exec",
                    "--transport",
                    tr,
                    "--tls-ca",
                    ca.to_str().unwrap(),
                    "--tls-cert",
                    cert.to_str().unwrap(),
                    "--tls-key",
                    key.to_str().unwrap(),
                    "-i",
                    "c1",
                    "cat",
                ],
                b"secret\n",
            )
            .await;
        assert_eq!(code, 0, "{tr}: {err}");
        assert_eq!(out, b"secret\n", "{tr}");
    }
}

#[tokio::test]
async fn crictl_exec_with_a_terminal() {
    // crictl wants a terminal on its stdin for -t: script(1) gives it one, 50 columns wide.
    let node = Node::start().await;
    let endpoint = format!("unix://{}", node.dir.path().join("cri.sock").display());
    for tr in TRANSPORTS {
        let cmd = format!(
            "stty cols 50 rows 7; crictl --runtime-endpoint {endpoint} --image-endpoint {endpoint} exec --transport {tr} -it c1 sh -c 'read x; echo got $x'"
        );
        let mut child = Command::new("script")
            .args(["-qefc", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"typed\r").await.unwrap();
        let out = within("crictl -it", child.wait_with_output())
            .await
            .unwrap();
        drop(stdin);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{tr}: {text}");
        assert!(text.contains("got typed"), "{tr}: {text:?}");
    }
    let sizes = node.host.sizes.lock().unwrap().clone();
    assert_eq!(sizes.len(), 2, "each session sent its terminal size");
    for s in sizes {
        assert_eq!((s.width, s.height), (50, 7));
    }
}
