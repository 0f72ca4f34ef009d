//! The registry side of a pull: `oci_client` (OCI distribution API over reqwest + rustls)
//! configured for one reference, and its errors mapped to ours.
//!
//! HTTPS unless the host is one the user named (the request's `plain_http`, or corrald's
//! insecure list). Bearer tokens (anonymous or with basic credentials) and basic auth come from
//! `oci_client`; redirects (blob storage behind a registry) are followed by reqwest.

use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::{Client, Reference};
use protocol::Code;
use tokio_stream::{Stream, StreamExt};

use super::Error;
use super::auth::Credentials;
use super::reference::ImageRef;

/// The manifest media types a pull accepts.
pub const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

/// rustls needs a process-wide crypto provider; ours is ring.
fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One registry, one repository, one set of credentials.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    auth: oci_client::secrets::RegistryAuth,
    /// The host as the reference names it (for messages).
    host: String,
}

/// A blob body: where it starts, and the bytes from there.
pub struct BlobBody {
    /// 0, or the offset asked for if the registry honoured the Range request.
    pub offset: u64,
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>,
}

impl Registry {
    pub fn new(r: &ImageRef, plain_http: bool, creds: &Credentials) -> Registry {
        install_crypto();
        let protocol = if plain_http {
            ClientProtocol::HttpsExcept(vec![r.endpoint().to_string()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: "corrald",
            ..Default::default()
        };
        Registry {
            client: Client::new(config),
            auth: creds.to_oci(),
            host: r.host().to_string(),
        }
    }

    /// The raw manifest or index at `at` and its digest (verified against the reference's
    /// digest and the registry's `Docker-Content-Digest` header by `oci_client`).
    pub async fn manifest(&self, at: &Reference, what: &str) -> Result<(Bytes, String), Error> {
        self.client
            .pull_manifest_raw(at, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.error(e, what))
    }

    /// The blob `desc` from byte `offset` on (a Range request; a registry that ignores it
    /// answers from 0, which [`BlobBody::offset`] says).
    pub async fn blob(
        &self,
        at: &Reference,
        desc: &OciDescriptor,
        offset: u64,
    ) -> Result<BlobBody, Error> {
        let what = format!("blob {}", desc.digest);
        // Make sure a token is cached for blob requests made without a manifest first.
        self.client
            .store_auth_if_needed(at.resolve_registry(), &self.auth)
            .await;
        // The content store verifies the digest as the bytes arrive; ask for a ranged (and so
        // unverified) body even from 0, not to hash every byte twice.
        let resp = self
            .client
            .pull_blob_stream_partial(at, desc, offset, None)
            .await
            .map_err(|e| self.error(e, &what))?;
        let (offset, sized) = match resp {
            BlobResponse::Partial(s) => (offset, s),
            BlobResponse::Full(s) => (0, s),
        };
        let this = self.clone();
        let stream = sized
            .stream
            .map(move |r| r.map_err(|e| this.error(OciDistributionError::IoError(e), &what)));
        Ok(BlobBody {
            offset,
            stream: Box::pin(stream),
        })
    }

    /// Our error for what `oci_client` reports, naming the host and what was asked for.
    pub fn error(&self, e: OciDistributionError, what: &str) -> Error {
        let host = self.host.clone();
        let registry = |code: Code, detail: String| Error::Registry {
            code,
            host: host.clone(),
            what: what.to_string(),
            detail,
        };
        match e {
            OciDistributionError::RequestError(r) => request_error(&host, what, &r),
            OciDistributionError::IoError(io) => {
                // Streams wrap reqwest errors in io::Error.
                match io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                {
                    Some(r) => request_error(&host, what, r),
                    None => registry(Code::Unavailable, format!("reading the answer: {io}")),
                }
            }
            OciDistributionError::UnauthorizedError { url } => registry(
                Code::Unauthenticated,
                format!("401 Unauthorized for {url}: credentials are missing or wrong"),
            ),
            OciDistributionError::AuthenticationFailure(reason) => registry(
                Code::Unauthenticated,
                format!("authentication failed: {}", reason.trim()),
            ),
            OciDistributionError::ImageManifestNotFoundError(m) => {
                registry(Code::NotFound, format!("not found: {m}"))
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let code = envelope
                    .errors
                    .iter()
                    .map(|e| match e.code {
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound => Code::NotFound,
                        OciErrorCode::Unauthorized => Code::Unauthenticated,
                        OciErrorCode::Denied => Code::PermissionDenied,
                        OciErrorCode::Toomanyrequests => Code::Unavailable,
                        _ => Code::Unknown,
                    })
                    .next()
                    .unwrap_or(Code::Unknown);
                let msgs: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect();
                registry(code, format!("{} ({url})", msgs.join("; ")))
            }
            OciDistributionError::ServerError { code, url, message } => {
                let c = match code {
                    401 => Code::Unauthenticated,
                    403 => Code::PermissionDenied,
                    404 => Code::NotFound,
                    429 | 500..=599 => Code::Unavailable,
                    _ => Code::Unknown,
                };
                registry(c, format!("HTTP {code} for {url}: {}", message.trim()))
            }
            OciDistributionError::DigestError(d) => registry(Code::DataLoss, d.to_string()),
            e => registry(Code::Unknown, e.to_string()),
        }
    }
}

fn request_error(host: &str, what: &str, r: &reqwest::Error) -> Error {
    // The whole source chain: "error sending request" alone does not say why.
    let mut detail = r.to_string();
    let mut src = std::error::Error::source(r);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    // TLS spoken to a plain HTTP server: say what to do about it.
    if detail.contains("https://")
        && (detail.contains("InvalidContentType") || detail.contains("corrupt message"))
    {
        detail.push_str(&format!(
            " (does {host} serve plain HTTP? then pull with plain HTTP, or list it under \
             [registry] insecure in corrald's config)"
        ));
    }
    if r.is_connect() || r.is_timeout() {
        Error::Unreachable {
            host: host.to_string(),
            detail,
        }
    } else {
        Error::Registry {
            code: Code::Unavailable,
            host: host.to_string(),
            what: what.to_string(),
            detail,
        }
    }
}
