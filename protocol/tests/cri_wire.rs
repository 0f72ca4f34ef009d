//! The generated CRI code on the wire: the real crictl (v1.36.0) calling a tonic server built
//! from `protocol::grpc::runtime::v1`. crictl resolves methods by package, service and method
//! name and decodes answers by field number, so the values it prints back prove those match
//! what Kubernetes compiled. Also: corral-cri's records keep their field numbers.
//!
//! crictl is found as in cri_descriptors_match_crictl.rs; without it the crictl test skips,
//! unless `CORRAL_REQUIRE_ROOT=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::grpc::corral::cri::v1 as records;
use protocol::grpc::prost::Message;
use protocol::grpc::runtime::v1 as cri;
use protocol::grpc::tonic::codegen::BoxStream;
use protocol::grpc::tonic::{self, Request, Response, Status, transport::Server};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

const RUNTIME_NAME: &str = "corral-wire-test";
const RUNTIME_VERSION: &str = "9.8.7";
const IMAGE_ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const IMAGE_TAG: &str = "registry.test/wire/busybox:1.2.3";

/// Answers Version; every other RuntimeService method is the generated Unimplemented default.
struct Runtime;

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for Runtime {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: RUNTIME_VERSION.into(),
            runtime_api_version: "v1".into(),
        }))
    }
}

/// Lists one image, whether asked by ListImages or by the streaming StreamImages, and answers
/// ImageFsInfo (empty).
struct Images;

fn the_image() -> cri::Image {
    cri::Image {
        id: IMAGE_ID.into(),
        repo_tags: vec![IMAGE_TAG.into()],
        size: 4242,
        uid: Some(cri::Int64Value { value: 65534 }),
        pinned: true,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for Images {
    async fn list_images(
        &self,
        _: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        Ok(Response::new(cri::ListImagesResponse {
            images: vec![the_image()],
        }))
    }

    // crictl calls this first to see that the image service speaks runtime.v1.
    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        Ok(Response::new(cri::ImageFsInfoResponse::default()))
    }

    async fn stream_images(
        &self,
        _: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<BoxStream<cri::StreamImagesResponse>>, Status> {
        let batch = cri::StreamImagesResponse {
            images: vec![the_image()],
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(batch)))))
    }
}

struct TestServer {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cri.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let router = Server::builder()
            .add_service(cri::runtime_service_server::RuntimeServiceServer::new(
                Runtime,
            ))
            .add_service(cri::image_service_server::ImageServiceServer::new(Images));
        let task = tokio::spawn(router.serve_with_incoming(UnixListenerStream::new(listener)));
        TestServer {
            _dir: dir,
            sock,
            task,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// crictl, or None (after a note) when it is missing and missing is allowed.
fn crictl() -> Option<PathBuf> {
    let path = common::find_program("CRICTL", "crictl", "/usr/local/bin/crictl");
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} not found; this test needs crictl v1.36.0 (shared/cri-tools/install.sh), or CRICTL \
         pointing at it",
        path.display()
    );
    if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{why} (CORRAL_REQUIRE_ROOT=1 is set)");
    }
    eprintln!("note: skipping, {why} (set CORRAL_REQUIRE_ROOT=1 to make it fail)");
    None
}

/// Runs crictl against `sock` off the async runtime (the server runs on it) and returns its
/// stdout; a failure panics with its stderr.
async fn run_crictl(crictl: &Path, sock: &Path, args: &[&str]) -> String {
    let endpoint = format!("unix://{}", sock.display());
    let mut cmd = Command::new(crictl);
    cmd.args(["--config", "/dev/null", "--timeout", "10s"])
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "crictl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_talks_to_a_server_built_from_our_cri_proto() {
    let Some(crictl) = crictl() else { return };
    let server = TestServer::start();

    let version = run_crictl(&crictl, &server.sock, &["version"]).await;
    for expected in [
        format!("RuntimeName:  {RUNTIME_NAME}"),
        format!("RuntimeVersion:  {RUNTIME_VERSION}"),
        "RuntimeApiVersion:  v1".to_owned(),
    ] {
        assert!(
            version.contains(&expected),
            "`crictl version` printed {version:?}, without {expected:?}"
        );
    }

    let images = run_crictl(&crictl, &server.sock, &["images", "-o", "json"]).await;
    let expected = [
        format!("\"id\": \"{IMAGE_ID}\""),
        format!("\"{IMAGE_TAG}\""),
        "\"size\": \"4242\"".to_owned(),
        "\"value\": \"65534\"".to_owned(),
        "\"pinned\": true".to_owned(),
    ];
    for expected in &expected {
        assert!(
            images.contains(expected),
            "`crictl images -o json` printed {images:?}, without {expected:?}"
        );
    }

    // A method we did not implement answers Unimplemented (the generated default), which
    // crictl reports as a failure naming the code.
    let endpoint = format!("unix://{}", server.sock.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(crictl)
            .args(["--config", "/dev/null", "--timeout", "10s"])
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["info"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success(), "`crictl info` succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unimplemented"), "{stderr}");
}

/// corral-cri stores these; a renumbered field would silently lose data on upgrade.
#[test]
fn corral_cri_records_keep_their_field_numbers() {
    let expected: &[(&str, &[&str])] = &[
        (
            "corral.cri.v1.SandboxRecord",
            &[
                "1 config Message Optional .runtime.v1.PodSandboxConfig",
                "2 runtime_handler String Optional ",
                "3 created_at Int64 Optional ",
                "4 image String Optional ",
                "5 netns_path String Optional ",
                "6 ip String Optional ",
                "7 additional_ips String Repeated ",
                "8 cni_result String Optional ",
                "9 cni_config_name String Optional ",
            ],
        ),
        (
            "corral.cri.v1.ContainerRecord",
            &[
                "1 sandbox_id String Optional ",
                "2 config Message Optional .runtime.v1.ContainerConfig",
                "3 created_at Int64 Optional ",
                "4 image_ref String Optional ",
                "5 image_name String Optional ",
                "6 image_id String Optional ",
                "7 log_path String Optional ",
                "8 stop_signal String Optional ",
                "9 user Message Optional .runtime.v1.ContainerUser",
            ],
        ),
        (
            "corral.cri.v1.ContainerStatusRecord",
            &[
                "1 started_at Int64 Optional ",
                "2 finished_at Int64 Optional ",
                "3 exit_code Int32 Optional ",
                "4 reason String Optional ",
                "5 message String Optional ",
                "6 exited Bool Optional ",
            ],
        ),
    ];
    let mut ours = common::Index::default();
    for file in common::our_descriptors()
        .iter()
        .filter(|f| f.package() == "corral.cri.v1")
    {
        ours.add_file(file);
    }
    let mut names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    names.sort();
    assert_eq!(ours.messages.keys().collect::<Vec<_>>(), names);
    for (name, fields) in expected {
        let mut fields: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        fields.sort();
        assert_eq!(ours.messages[*name], fields, "{name}");
    }

    // And the generated Rust types carry them: one record through bytes and back.
    let record = records::ContainerRecord {
        sandbox_id: "pod-1".into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 2,
            }),
            ..Default::default()
        }),
        created_at: 1_700_000_000_000_000_000,
        stop_signal: "SIGQUIT".into(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: 1000,
                gid: 1000,
                supplemental_groups: vec![10, 20],
            }),
        }),
        ..Default::default()
    };
    let bytes = record.encode_to_vec();
    // Field 1 (sandbox_id), length-delimited: tag 0x0a, then "pod-1".
    assert_eq!(&bytes[..7], b"\x0a\x05pod-1");
    assert_eq!(
        records::ContainerRecord::decode(bytes.as_slice()).unwrap(),
        record
    );
}
