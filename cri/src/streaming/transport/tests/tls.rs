//! TLS: the server with a certificate from PEM files, and clear errors for bad files.

use std::path::PathBuf;
use std::sync::Arc;

use super::client::{self, SpdyReader, SpdyWriter};
use super::{Fake, Server, rc};
use crate::streaming::transport::load_tls;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/streaming/transport/tests/testdata")
        .join(name)
}

#[tokio::test]
async fn exec_over_tls() {
    let cfg = load_tls(&testdata("server.pem"), &testdata("server-key.pem")).unwrap();
    let (fake, _ev) = Fake::new();
    fake.token("hello-1", rc(false, true, false, false));
    let srv = Server::start(fake, Some(cfg)).await;

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for c in CertificateDer::pem_file_iter(testdata("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = srv.connect().await;
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let r = client::request(
        &mut tls,
        "POST",
        "/exec/hello-1",
        &client::spdy_headers(&["v4.channel.k8s.io"]),
    )
    .await;
    assert_eq!(r.status, 101);
    let (rd, wr) = tokio::io::split(tls);
    let (mut rd, mut wr) = (SpdyReader::new(rd), SpdyWriter::new(wr));
    wr.open(&[("streamType", "error")], false).await;
    let stdout = wr.open(&[("streamType", "stdout")], false).await;
    let c = rd.until_goaway().await;
    assert_eq!(c.text(stdout), "hello\n");

    // Plain HTTP to the TLS port gets nowhere.
    let mut plain = srv.connect().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"POST /exec/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = client::within("the TLS server to hang up", plain.read_to_end(&mut out)).await;
    assert!(!out.starts_with(b"HTTP/1.1 101"));
}

#[test]
fn tls_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let e = load_tls(&missing, &testdata("server-key.pem")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("nope.pem"), "{e}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = load_tls(&empty, &testdata("server-key.pem")).unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
    assert!(e.to_string().contains("no certificate"), "{e}");

    // A certificate where the key should be.
    let e = load_tls(&testdata("server.pem"), &testdata("server.pem")).unwrap_err();
    assert!(e.to_string().contains("server.pem"), "{e}");

    // A key that does not belong to the certificate.
    let e = load_tls(&testdata("ca.pem"), &testdata("server-key.pem")).unwrap_err();
    assert!(e.to_string().contains("do not make a TLS identity"), "{e}");
}
