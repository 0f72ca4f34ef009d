//! The generated gRPC API on the wire: our tonic server and client over a unix socket, and the
//! real `ctr` (containerd 1.6) calling our server. ctr resolves methods by proto package and
//! method name and decodes by field number, so its output proves those match containerd's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use protocol::Code;
use protocol::grpc::containerd::services::introspection::v1 as introspection;
use protocol::grpc::containerd::services::namespaces::v1 as namespaces;
use protocol::grpc::containerd::services::version::v1 as version;
use protocol::grpc::tonic::{self, Request, Response, Status, transport::Server};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

const NS_KEY: &str = "containerd-namespace";
const TEST_VERSION: &str = "corral-test-9.8.7";
const TEST_REVISION: &str = "r-0123abcd";
const TEST_UUID: &str = "3f1d3c70-2b5e-4a2b-9d49-0c6f1e0c9a11";

/// The `containerd-namespace` values the server saw, in call order (None: header missing).
type Seen = Arc<Mutex<Vec<Option<String>>>>;

fn namespace_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(NS_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

struct FixedVersion {
    seen: Seen,
}

#[tonic::async_trait]
impl version::version_server::Version for FixedVersion {
    async fn version(
        &self,
        req: Request<()>,
    ) -> Result<Response<version::VersionResponse>, Status> {
        self.seen.lock().unwrap().push(namespace_of(&req));
        Ok(Response::new(version::VersionResponse {
            version: TEST_VERSION.into(),
            revision: TEST_REVISION.into(),
        }))
    }
}

struct FixedIntrospection;

#[tonic::async_trait]
impl introspection::introspection_server::Introspection for FixedIntrospection {
    async fn server(
        &self,
        _: Request<()>,
    ) -> Result<Response<introspection::ServerResponse>, Status> {
        Ok(Response::new(introspection::ServerResponse {
            uuid: TEST_UUID.into(),
        }))
    }
}

/// Namespaces that echo the request's namespace header; Create is left to the generated
/// default (Unimplemented).
struct EchoNamespaces {
    seen: Seen,
}

#[tonic::async_trait]
impl namespaces::namespaces_server::Namespaces for EchoNamespaces {
    async fn get(
        &self,
        req: Request<namespaces::GetNamespaceRequest>,
    ) -> Result<Response<namespaces::GetNamespaceResponse>, Status> {
        let header = namespace_of(&req);
        self.seen.lock().unwrap().push(header.clone());
        let name = req.into_inner().name;
        Ok(Response::new(namespaces::GetNamespaceResponse {
            namespace: Some(namespaces::Namespace {
                name,
                labels: [("header".to_owned(), header.unwrap_or_default())].into(),
            }),
        }))
    }

    async fn list(
        &self,
        req: Request<namespaces::ListNamespacesRequest>,
    ) -> Result<Response<namespaces::ListNamespacesResponse>, Status> {
        let header = namespace_of(&req);
        self.seen.lock().unwrap().push(header.clone());
        Ok(Response::new(namespaces::ListNamespacesResponse {
            namespaces: header
                .into_iter()
                .map(|name| namespaces::Namespace {
                    name,
                    labels: Default::default(),
                })
                .collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<namespaces::DeleteNamespaceRequest>,
    ) -> Result<Response<()>, Status> {
        // "busy" mimics containerd's refusal to delete a namespace that still holds things.
        match req.into_inner().name.as_str() {
            "busy" => Err(Code::FailedPrecondition
                .grpc_status("namespace busy must be empty, but it still has containers")),
            name => Err(Code::NotFound.grpc_status(format!("namespace {name}: not found"))),
        }
    }
}

/// A server on a socket in a private temp dir; stopped (and the dir removed) on drop.
struct TestServer {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    seen: Seen,
}

impl TestServer {
    fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("grpc.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let seen = Seen::default();
        let router = Server::builder()
            .add_service(version::version_server::VersionServer::new(FixedVersion {
                seen: seen.clone(),
            }))
            .add_service(
                introspection::introspection_server::IntrospectionServer::new(FixedIntrospection),
            )
            .add_service(namespaces::namespaces_server::NamespacesServer::new(
                EchoNamespaces { seen: seen.clone() },
            ));
        let task =
            tokio::spawn(router.serve_with_incoming(protocol::grpc::unix::incoming(listener)));
        TestServer {
            _dir: dir,
            sock,
            task,
            seen,
        }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn with_namespace<T>(msg: T, ns: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(NS_KEY, ns.parse().unwrap());
    req
}

#[tokio::test]
async fn tonic_client_and_server_over_a_unix_socket() {
    let server = TestServer::start();
    let channel = protocol::grpc::unix::connect(&server.sock).await.unwrap();

    let mut versions = version::version_client::VersionClient::new(channel.clone());
    let v = versions
        .version(with_namespace((), "ns-one"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.version.as_str(), v.revision.as_str()),
        (TEST_VERSION, TEST_REVISION)
    );

    let mut nss = namespaces::namespaces_client::NamespacesClient::new(channel);
    let got = nss
        .get(with_namespace(
            namespaces::GetNamespaceRequest {
                name: "asked-for".into(),
            },
            "ns-two",
        ))
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(got.name, "asked-for");
    assert_eq!(got.labels["header"], "ns-two");

    let list = nss
        .list(with_namespace(
            namespaces::ListNamespacesRequest::default(),
            "ns-three",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.namespaces.len(), 1);
    assert_eq!(list.namespaces[0].name, "ns-three");

    // A call without the header reaches the server without it.
    nss.list(namespaces::ListNamespacesRequest::default())
        .await
        .unwrap();

    assert_eq!(
        server.seen(),
        vec![
            Some("ns-one".to_owned()),
            Some("ns-two".to_owned()),
            Some("ns-three".to_owned()),
            None
        ]
    );

    // Error codes and messages survive the wire, both ours and the generated default.
    let err = nss
        .delete(namespaces::DeleteNamespaceRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(Code::of_grpc(&err), Code::NotFound);
    assert_eq!(err.message(), "namespace x: not found");
    let err = nss
        .create(namespaces::CreateNamespaceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(Code::of_grpc(&err), Code::Unimplemented);
}

#[tokio::test]
async fn connecting_to_a_missing_socket_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = protocol::grpc::unix::connect(dir.path().join("nothing.sock"))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("No such file"), "{err:?}");
}

fn ctr() -> PathBuf {
    let path =
        PathBuf::from(std::env::var_os("CORRAL_CTR").unwrap_or_else(|| "/usr/bin/ctr".into()));
    assert!(
        path.exists(),
        "{} not found: this test needs containerd 1.6's ctr (Debian package `containerd`), \
         or CORRAL_CTR pointing at it",
        path.display()
    );
    path
}

/// Run `ctr -a <sock> -n <ns> <args>` to completion (ctr's own timeouts bound it).
async fn run_ctr(sock: &Path, ns: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(ctr());
    cmd.arg("--address")
        .arg(sock)
        .args([
            "--namespace",
            ns,
            "--connect-timeout",
            "10s",
            "--timeout",
            "30s",
        ])
        .args(args)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("failed to run ctr"))
        .await
        .unwrap()
}

#[tokio::test]
async fn real_ctr_version_reads_our_server() {
    let server = TestServer::start();
    let out = run_ctr(&server.sock, "corral-ctr-test", &["version"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ctr version failed: {stderr}\n{stdout}"
    );
    // ctr prints the client section first, then "Server:" with what we returned.
    let server_part = stdout
        .split_once("Server:")
        .unwrap_or_else(|| panic!("no Server section in ctr output:\n{stdout}"))
        .1;
    assert!(server_part.contains(TEST_VERSION), "{stdout}");
    assert!(server_part.contains(TEST_REVISION), "{stdout}");
    assert!(server_part.contains(TEST_UUID), "{stdout}");
    assert_eq!(server.seen(), vec![Some("corral-ctr-test".to_owned())]);
}

#[tokio::test]
async fn real_ctr_namespaces_ls_reads_our_server() {
    let server = TestServer::start();
    let out = run_ctr(&server.sock, "corral-ns-test", &["namespaces", "ls", "-q"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctr namespaces ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "corral-ns-test");

    // The code class survives the wire into containerd's errdefs: ctr treats NotFound from
    // Delete as "already gone" (prints the name, exits 0), any other error as a failure.
    let out = run_ctr(
        &server.sock,
        "corral-ns-test",
        &["namespaces", "rm", "gone"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ctr namespaces rm gone: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gone");

    let out = run_ctr(
        &server.sock,
        "corral-ns-test",
        &["namespaces", "rm", "busy"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ctr namespaces rm busy unexpectedly succeeded"
    );
    assert!(stderr.contains("still has containers"), "{stderr}");
}
