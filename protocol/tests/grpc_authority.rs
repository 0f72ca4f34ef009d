//! A gRPC call as grpc C-core makes it on a unix socket, `:authority` being the percent-encoded
//! socket path, written here frame by frame: our servers' HTTP/2 front
//! (`protocol::grpc::unix::incoming`) lets it through to the service, which tonic's own accept
//! loop does not (h2 resets the stream with PROTOCOL_ERROR before any service runs).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use loona_hpack::Decoder;
use protocol::grpc::containerd::services::version::v1 as version;
use protocol::grpc::prost::Message;
use protocol::grpc::tonic::{self, Request, Response, Status, transport::Server};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct FixedVersion;

#[tonic::async_trait]
impl version::version_server::Version for FixedVersion {
    async fn version(&self, _: Request<()>) -> Result<Response<version::VersionResponse>, Status> {
        Ok(Response::new(version::VersionResponse {
            version: "v-front".into(),
            revision: "r-front".into(),
        }))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A string literal, raw (RFC 7541 §5.2), for values under 127 bytes.
fn string(s: &str) -> Vec<u8> {
    assert!(s.len() < 127);
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// The request headers of a unary call, with `authority`, added to the dynamic table as grpc
/// C-core does.
fn request_block(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.push(0x44); // :path
    b.extend(string(path));
    b.push(0x41); // :authority
    b.extend(string(authority));
    b.push(0x40 | 31); // content-type
    b.extend(string("application/grpc"));
    b.push(0x40);
    b.extend(string("te"));
    b.extend(string("trailers"));
    b
}

/// What came back on one stream.
#[derive(Debug, Default)]
struct Answer {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    reset: Option<u32>,
}

/// Makes `calls` Version calls on one connection (streams 1, 3, ...), each with `authority`,
/// and collects the answers.
fn call_version(sock: &Path, authority: &str, calls: u32) -> Vec<Answer> {
    let mut conn = UnixStream::connect(sock).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let path = "/containerd.services.version.v1.Version/Version";
    for i in 0..calls {
        let stream = 2 * i + 1;
        // The first call adds path and authority to the client's table, later ones refer to
        // them (62: te, 63: content-type, 64: authority, 65: path).
        let block = if i == 0 {
            request_block(path, authority)
        } else {
            vec![0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe]
        };
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        // An empty message: not compressed, length 0.
        out.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
    }
    conn.write_all(&out).unwrap();

    let mut decoder = Decoder::new();
    let mut answers: Vec<Answer> = (0..calls).map(|_| Answer::default()).collect();
    let mut done = 0;
    while done < calls {
        let mut head = [0u8; 9];
        if conn.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        let mut payload = vec![0; len];
        conn.read_exact(&mut payload).unwrap();
        if kind == GOAWAY {
            break;
        }
        if stream == 0 || stream % 2 == 0 || stream > 2 * calls {
            continue;
        }
        let answer = &mut answers[(stream / 2) as usize];
        match kind {
            HEADERS => {
                assert!(
                    flags & END_HEADERS != 0,
                    "the server sent CONTINUATION frames"
                );
                for (n, v) in decoder.decode(&payload).unwrap() {
                    answer
                        .headers
                        .push((String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()));
                }
            }
            DATA => answer.data.extend(payload),
            RST_STREAM => {
                answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                done += 1;
                continue;
            }
            _ => {}
        }
        if flags & END_STREAM != 0 {
            done += 1;
        }
    }
    answers
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn serve(runtime: &tokio::runtime::Runtime, sock: &Path, front: bool) {
    let _guard = runtime.enter();
    let listener = UnixListener::bind(sock).unwrap();
    let router =
        Server::builder().add_service(version::version_server::VersionServer::new(FixedVersion));
    if front {
        runtime.spawn(router.serve_with_incoming(protocol::grpc::unix::incoming(listener)));
    } else {
        runtime.spawn(router.serve_with_incoming(UnixListenerStream::new(listener)));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_socket_path_as_authority_reaches_the_service_through_the_front() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("front.sock");
    serve(&rt, &sock, true);

    // grpc C-core's percent-encoded path, grpc-java's raw path, and a usual authority.
    for authority in ["tmp%2Fgt%2Fc.sock", "/tmp/gt/c.sock", "localhost"] {
        let answers = call_version(&sock, authority, 3);
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer.reset, None, "{authority} call {i}: {answer:?}");
            assert_eq!(header(answer, ":status"), Some("200"), "{answer:?}");
            assert_eq!(header(answer, "grpc-status"), Some("0"), "{answer:?}");
            assert!(answer.data.len() >= 5, "{answer:?}");
            let reply = version::VersionResponse::decode(&answer.data[5..]).unwrap();
            assert_eq!(
                (reply.version.as_str(), reply.revision.as_str()),
                ("v-front", "r-front")
            );
        }
    }
}

/// Why the front exists: without it, the same request is reset with PROTOCOL_ERROR (1) before
/// the service runs. If a later h2 accepts it, this fails, and the front may go.
#[test]
fn without_the_front_the_server_refuses_a_socket_path_as_authority() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("plain.sock");
    serve(&rt, &sock, false);
    let answers = call_version(&sock, "tmp%2Fgt%2Fc.sock", 1);
    assert_eq!(answers[0].reset, Some(1), "{:?}", answers[0]);
    assert!(answers[0].data.is_empty());
    let answers = call_version(&sock, "localhost", 1);
    assert_eq!(header(&answers[0], "grpc-status"), Some("0"));
}

/// A client that breaks HPACK loses its connection (the server hears nothing of it) and the
/// server goes on serving others.
#[test]
fn a_malformed_header_block_closes_only_that_connection() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("front.sock");
    serve(&rt, &sock, true);

    let mut conn = UnixStream::connect(&sock).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &[0x80])); // index 0
    conn.write_all(&out).unwrap();
    let mut all = Vec::new();
    let read = conn.read_to_end(&mut all);
    assert!(read.is_ok(), "the connection was not closed: {read:?}");

    let answers = call_version(&sock, "tmp%2Fgt%2Fc.sock", 1);
    assert_eq!(header(&answers[0], "grpc-status"), Some("0"), "{answers:?}");
}
