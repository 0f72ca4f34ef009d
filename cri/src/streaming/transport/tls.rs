//! TLS for the streaming server: a certificate chain and key from PEM files.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn pem_error(path: &Path, what: &str, e: pem::Error) -> io::Error {
    match e {
        pem::Error::Io(e) => {
            io::Error::new(e.kind(), format!("read {what} {}: {e}", path.display()))
        }
        pem::Error::NoItemsFound => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {}: no {what} in PEM form found", path.display()),
        ),
        e => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {}: {e}", path.display()),
        ),
    }
}

pub(crate) fn load(cert: &Path, key: &Path) -> io::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, "certificate", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(cert, "certificate", pem::Error::NoItemsFound));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "certificate {} and key {} do not make a TLS identity: {e}",
                    cert.display(),
                    key.display()
                ),
            )
        })?;
    // The upgrades are HTTP/1.1 only; a client offering h2 must fall back.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
