//! Clients on other gRPC stacks than grpc-go (ctr, crictl) and tonic (ours), as a new user
//! would try them (issue 14): grpcio, the Python binding of grpc C-core, from PyPI, with a plain
//! `grpc.insecure_channel("unix://<socket>")` and nothing else. On a unix socket it sends the
//! socket path, percent-encoded, as `:authority`, which the HTTP/2 server under tonic refuses
//! unless our front (`protocol::grpc::unix::incoming`) is in the way. Against containerd 1.6
//! (the reference, grpc-go) and corrald; then against corral-cri.

use integration::containerd::Options;
use integration::{Containerd, CriNode, Daemon, Runtime, Target, daemon_tests, require_root};
use serde_json::Value;

const CLIENT: &str = include_str!("grpcio/client.py");

/// The server version `ctr version` reads.
fn server_version(ctr: &integration::Ctr) -> String {
    let out = ctr.ok(&["version"]);
    let server = out
        .split("Server:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Server section in ctr version: {out}"));
    server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no server version in ctr version: {out}"))
}

/// Version (unary), Content List and Read (server streaming, a whole layer read back and
/// hashed), and Info of a missing blob (NotFound with containerd's message), each over the
/// channel as grpcio makes it by default.
fn grpcio_calls_the_daemon_api(daemon: Daemon) {
    if !require_root() {
        return;
    }
    let d = Containerd::start_with(
        Target {
            daemon,
            runtime: Runtime::Runc,
        },
        Options::default(),
    );
    let got = integration::grpcio::run_script(
        CLIENT,
        &["daemon", d.address().to_str().unwrap(), d.namespace()],
    );
    assert_eq!(got["grpcio"], integration::grpcio::GRPCIO_VERSION, "{got}");
    assert_eq!(got["version"], server_version(d.ctr()), "{got}");

    // What grpcio listed is what ctr lists.
    let listed = d.ctr().ok(&["content", "ls", "-q"]);
    let mut want: Vec<&str> = listed.split_whitespace().collect();
    want.sort_unstable();
    let mut blobs: Vec<&str> = got["blobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no blobs in {got}"))
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    blobs.sort_unstable();
    assert!(!blobs.is_empty(), "{got}");
    assert_eq!(blobs, want);

    // The largest blob (a layer), read back in as many messages as it takes, is intact.
    let read = &got["read"];
    assert_eq!(read["sha256"], read["digest"], "{got}");
    let size = got["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == read["digest"])
        .map(|b| b["size"].clone())
        .unwrap();
    assert_eq!(read["size"], size, "{got}");
    assert!(read["size"].as_u64().unwrap() > 100_000, "{got}");

    let missing = format!("sha256:{}", "0".repeat(64));
    assert_eq!(got["missing"]["code"], "NOT_FOUND", "{got}");
    assert_eq!(
        got["missing"]["details"],
        format!("content digest {missing}: not found"),
        "{got}"
    );
}

daemon_tests!(grpcio_calls_the_daemon_api);

/// RuntimeService/Version and ImageService/ListImages as crictl sees them, and ContainerStatus
/// of an unknown container: NotFound.
#[test]
fn grpcio_calls_corral_cri() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let got = integration::grpcio::run_script(CLIENT, &["cri", node.socket().to_str().unwrap()]);
    // `crictl version` prints `RuntimeName:  corral` and the like.
    let crictl = node.crictl().ok(&["version"]);
    let field = |name: &str| {
        crictl
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| Value::from(v.trim()))
            .unwrap_or_else(|| panic!("no {name} in crictl version: {crictl}"))
    };
    let version = &got["version"];
    assert_eq!(version["runtime_name"], "corral", "{got}");
    for (ours, theirs) in [
        ("version", "Version"),
        ("runtime_name", "RuntimeName"),
        ("runtime_version", "RuntimeVersion"),
        ("runtime_api_version", "RuntimeApiVersion"),
    ] {
        assert_eq!(version[ours], field(theirs), "{got} / crictl: {crictl}");
    }

    let listed = node.crictl().json(&["images", "-o", "json"]);
    let mut tags: Vec<String> = listed["images"]
        .as_array()
        .unwrap_or_else(|| panic!("crictl images: {listed}"))
        .iter()
        .flat_map(|i| i["repoTags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    tags.sort_unstable();
    assert!(!tags.is_empty(), "{listed}");
    let got_tags: Vec<String> =
        serde_json::from_value(got["image_tags"].clone()).unwrap_or_else(|e| panic!("{e}: {got}"));
    assert_eq!(got_tags, tags);

    assert_eq!(got["missing"]["code"], "NOT_FOUND", "{got}");
    assert!(
        got["missing"]["details"]
            .as_str()
            .is_some_and(|d| d.contains("no-such-container")),
        "{got}"
    );
}
