//! Throw-away X.509 certificates for tests that speak TLS, made with the `openssl` command: a
//! CA, and server or client certificates it issues (ECDSA P-256, valid two days).
//!
//! ```ignore
//! let ca = TestCa::new();
//! let server = ca.issue("registry", Usage::Server);  // SAN IP:127.0.0.1 and DNS:localhost
//! let reg = Registry::start_with(Options { tls: Some((server.cert, server.key)), ..Default::default() });
//! // trust ca.cert() in the client
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd;

const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// The extensions of each kind of certificate (an openssl config file).
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = corral test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server on 127.0.0.1 / localhost.
    Server,
    /// A TLS client.
    Client,
}

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA in a temp dir (removed on drop).
pub struct TestCa {
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) {
    let mut c = Command::new("openssl");
    c.args(args).current_dir(dir);
    let out = cmd::output_with_timeout(&mut c, OPENSSL_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("test-ca-")
            .tempdir()
            .expect("cannot create a temp dir for the CA");
        std::fs::write(dir.path().join("openssl.cnf"), OPENSSL_CONFIG)
            .expect("cannot write the openssl config");
        openssl(
            &[
                "req",
                "-x509",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca_ext",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=corral test CA",
            ],
            dir.path(),
        );
        TestCa { dir }
    }

    /// The CA certificate (PEM), what a client trusts.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new certificate named `name` for `usage`, signed by this CA.
    pub fn issue(&self, name: &str, usage: Usage) -> KeyPair {
        let d = self.dir.path();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
            d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                match usage {
                    Usage::Server => "server_ext",
                    Usage::Client => "client_ext",
                },
                "-out",
                &cert,
            ],
            d,
        );
        KeyPair {
            cert: d.join(cert),
            key: d.join(key),
        }
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}
