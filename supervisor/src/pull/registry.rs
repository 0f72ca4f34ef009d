//! The registry side of a pull: the OCI distribution API (`GET <root>/<repository>/manifests/
//! <tag|digest>` and `…/blobs/<digest>`) over reqwest + rustls, against the hosts the hosts
//! configuration gives for the reference's registry (see [`super::hosts`]), tried in order.
//!
//! Resolving the reference (a tag, or a digest) asks the hosts that may resolve (a tag needs
//! `resolve` and `pull`, a digest `pull`); manifests by digest and blobs ask the hosts that may
//! pull. Any failure of a host (connection refused, TLS, 5xx, 404, a 401 that cannot be
//! answered, wrong bytes for a digest) moves on to the next; when all fail, the error names
//! every host tried and why. A host found unreachable is tried last for the rest of the pull.
//! Requests to a host other than the registry itself (a mirror) carry `?ns=<registry>`, as
//! containerd's do, so a proxy serving several registries can tell them apart.
//!
//! A host with TLS settings of its own (CAs, a client certificate, `skip_verify`) has its own
//! HTTP client; the others share one, built once (see [`shared_client`]). Each host has its
//! extra headers and its own [`Authorizer`]. Redirects (blob storage behind a registry) are followed
//! by reqwest, which drops `Authorization` when the redirect leaves the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use protocol::Code;
use reqwest::header::{ACCEPT, CONTENT_RANGE, HeaderMap, HeaderName, HeaderValue, RANGE};
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use tokio_stream::{Stream, StreamExt};

use super::Error;
use super::authorizer::{Authorizer, error_chain};
use super::hosts::HostConfig;

/// The manifest media types a pull accepts.
pub const MANIFEST_TYPES: &[&str] = &[
    super::MEDIA_TYPE_OCI_INDEX,
    super::MEDIA_TYPE_DOCKER_LIST,
    super::MEDIA_TYPE_OCI_MANIFEST,
    super::MEDIA_TYPE_DOCKER_MANIFEST,
];

/// Manifests and indexes bigger than this are refused (containerd's limit).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// rustls needs a process-wide crypto provider; ours is ring.
fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn client_builder() -> reqwest::ClientBuilder {
    Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent("corrald")
}

/// The client of every host without TLS settings of its own. Building a client loads and
/// parses every root certificate of the system (about 150 files on Debian, a few ms of CPU
/// each time), so this one is built once, by the first pull, and kept for the daemon's life,
/// as Go's system pool is in containerd: roots added to the system later count after a
/// restart. Its clones share one connection pool, so a pull may reuse a connection an earlier
/// one kept alive. Concurrent first pulls may each build one; the first stored is kept.
fn shared_client() -> Result<Client, reqwest::Error> {
    static SHARED: OnceLock<Client> = OnceLock::new();
    if let Some(c) = SHARED.get() {
        return Ok(c.clone());
    }
    let built = client_builder().build()?;
    Ok(SHARED.get_or_init(|| built).clone())
}

/// One host of a registry, ready to be asked.
pub struct Endpoint {
    pub config: HostConfig,
    client: Client,
    headers: HeaderMap,
    auth: Authorizer,
    /// `?ns=<registry>` for a mirror; empty for the registry itself.
    query: String,
    /// Found unreachable during this pull.
    down: AtomicBool,
}

/// The credentials of one host, given its `host[:port]`.
pub type CredentialsFor<'a> = dyn Fn(&str) -> Result<super::Credentials, Error> + 'a;

impl Endpoint {
    /// Builds the client for host `config` of `registry`.
    pub fn new(
        registry: &str,
        config: HostConfig,
        creds: &CredentialsFor<'_>,
    ) -> Result<Endpoint, Error> {
        install_crypto();
        let bad = |code: Code, reason: String| Error::HostsConfig {
            code,
            path: config
                .source
                .as_ref()
                .map_or_else(|| config.url(), |p| p.display().to_string()),
            reason: format!("host {}: {reason}", config.url()),
        };
        let own_tls =
            !config.ca.is_empty() || !config.client.is_empty() || config.skip_verify == Some(true);
        let client = if own_tls {
            Self::own_client(&config, bad)?
        } else {
            shared_client().map_err(|e| {
                bad(
                    Code::Internal,
                    format!(
                        "no HTTP client with the system's root certificates: {}",
                        error_chain(&e)
                    ),
                )
            })?
        };
        let mut headers = HeaderMap::new();
        for (n, v) in &config.headers {
            // Validated when the file was read.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(n, v);
            }
        }
        let is_registry = config.host == registry
            || (registry == "docker.io" && config.host == "registry-1.docker.io");
        let query = if is_registry {
            String::new()
        } else {
            format!("?ns={registry}")
        };
        let auth = Authorizer::new(creds(&config.host)?);
        Ok(Endpoint {
            config,
            client,
            headers,
            auth,
            query,
            down: AtomicBool::new(false),
        })
    }

    /// A client of its own for a host with TLS settings (CAs, a client certificate,
    /// `skip_verify`); it loads the system's roots again, which only such hosts pay for.
    fn own_client(
        config: &HostConfig,
        bad: impl Fn(Code, String) -> Error,
    ) -> Result<Client, Error> {
        let mut b = client_builder();
        if !config.ca.is_empty() {
            let mut roots = Vec::new();
            for f in &config.ca {
                let pem = std::fs::read(f).map_err(|e| {
                    bad(
                        Code::FailedPrecondition,
                        format!("CA file {}: {e}", f.display()),
                    )
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        bad(
                            Code::InvalidArgument,
                            format!("CA file {}: no PEM certificate in it", f.display()),
                        )
                    })?;
                roots.extend(certs);
            }
            b = b.tls_certs_merge(roots);
        }
        if let Some((cert, key)) = config.client.first() {
            if config.client.len() > 1 {
                log::warn!(
                    "{}: {} client certificates given; using the first, {}",
                    config.url(),
                    config.client.len(),
                    cert.display()
                );
            }
            let mut pem = std::fs::read(cert).map_err(|e| {
                bad(
                    Code::FailedPrecondition,
                    format!("client certificate {}: {e}", cert.display()),
                )
            })?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| {
                    bad(
                        Code::FailedPrecondition,
                        format!("client key {}: {e}", key.display()),
                    )
                })?);
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                bad(
                    Code::InvalidArgument,
                    format!(
                        "client certificate {}{}: {}",
                        cert.display(),
                        key.as_ref()
                            .map(|k| format!(" with key {}", k.display()))
                            .unwrap_or_default(),
                        error_chain(&e)
                    ),
                )
            })?;
            b = b.identity(id);
        }
        if config.skip_verify == Some(true) {
            b = b.danger_accept_invalid_certs(true);
        }
        b.build()
            .map_err(|e| bad(Code::InvalidArgument, error_chain(&e)))
    }

    fn url(&self, repository: &str, tail: &[&str]) -> String {
        let mut parts: Vec<&str> = self
            .config
            .path
            .split('/')
            .chain(repository.split('/'))
            .chain(tail.iter().copied())
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            parts.push("");
        }
        format!(
            "{}://{}/{}{}",
            self.config.scheme,
            self.config.host,
            parts.join("/"),
            self.query
        )
    }

    /// GET `url` with `extra` headers, answering one authentication challenge.
    async fn get(
        &self,
        url: &str,
        extra: &HeaderMap,
        scope: &str,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let mut answered = false;
        loop {
            let mut req = self
                .client
                .get(url)
                .headers(self.headers.clone())
                .headers(extra.clone());
            let sent_auth = self.auth.current();
            if let Some(a) = &sent_auth {
                req = req.header(reqwest::header::AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(|e| {
                let err = request_error(&self.config.host, what, &e);
                if matches!(err, Error::Unreachable { .. }) {
                    self.down.store(true, Ordering::Relaxed);
                }
                err
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && !answered {
                let challenges: Vec<String> = resp
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                answered = true;
                if self
                    .auth
                    .answer(&self.client, &self.config.host, &challenges, scope)
                    .await?
                {
                    continue;
                }
            }
            if resp.status().is_success() {
                return Ok(resp);
            }
            return Err(status_error(&self.config.host, what, url, resp).await);
        }
    }
}

/// One repository of one registry, through its hosts.
pub struct Registry {
    /// As the reference names it (`docker.io`, `registry.k8s.io`).
    registry: String,
    repository: String,
    endpoints: Vec<Endpoint>,
}

/// A blob body: where it starts, and the bytes from there.
pub struct BlobBody {
    /// 0, or the offset asked for if the host honoured the Range request.
    pub offset: u64,
    /// The host serving it (`host[:port]`), for messages.
    pub host: String,
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>,
}

/// Which hosts an operation may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Tag → digest.
    Resolve,
    /// By digest.
    Pull,
}

impl Registry {
    pub fn new(registry: &str, repository: &str, endpoints: Vec<Endpoint>) -> Registry {
        Registry {
            registry: registry.to_string(),
            repository: repository.to_string(),
            endpoints,
        }
    }

    /// The hosts, for messages.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.config.url()).collect()
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
    }

    /// The hosts able to do `need`, those found unreachable last.
    fn candidates(&self, need: Need) -> Result<Vec<&Endpoint>, Error> {
        let able = |e: &&Endpoint| {
            let c = e.config.capabilities;
            c.pull && (need == Need::Pull || c.resolve)
        };
        let mut list: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(able)
            .filter(|e| !e.down.load(Ordering::Relaxed))
            .collect();
        list.extend(
            self.endpoints
                .iter()
                .filter(able)
                .filter(|e| e.down.load(Ordering::Relaxed)),
        );
        if list.is_empty() {
            return Err(Error::Registry {
                code: Code::NotFound,
                host: self.registry.clone(),
                what: "hosts".into(),
                detail: format!(
                    "none of its hosts ({}) may {}",
                    self.urls().join(", "),
                    match need {
                        Need::Resolve => "resolve tags (capabilities \"pull\" and \"resolve\")",
                        Need::Pull => "pull (capability \"pull\")",
                    }
                ),
            });
        }
        Ok(list)
    }

    /// The error after every host failed: the one error, or all of them.
    fn all_failed(&self, what: &str, mut failures: Vec<(String, Error)>) -> Error {
        if failures.len() == 1 {
            return failures
                .pop()
                .map(|(_, e)| e)
                .unwrap_or(Error::Worker("no host was tried".into()));
        }
        Error::AllHostsFailed {
            registry: self.registry.clone(),
            what: what.to_string(),
            failures,
        }
    }

    /// The manifest or index `reference` (a tag, or a digest) names, and its digest.
    pub async fn resolve(&self, reference: &str, what: &str) -> Result<(Bytes, String), Error> {
        let need = if reference.contains(':') {
            Need::Pull
        } else {
            Need::Resolve
        };
        self.manifest_from(need, reference, what).await
    }

    /// The manifest (or index) with `digest`.
    pub async fn manifest(&self, digest: &str, what: &str) -> Result<(Bytes, String), Error> {
        self.manifest_from(Need::Pull, digest, what).await
    }

    async fn manifest_from(
        &self,
        need: Need,
        reference: &str,
        what: &str,
    ) -> Result<(Bytes, String), Error> {
        let mut failures = Vec::new();
        let mut accept = HeaderMap::new();
        accept.insert(
            ACCEPT,
            HeaderValue::from_str(&MANIFEST_TYPES.join(", ")).expect("valid media types"),
        );
        for e in self.candidates(need)? {
            let url = e.url(&self.repository, &["manifests", reference]);
            match self.manifest_at(e, &url, &accept, reference, what).await {
                Ok(found) => {
                    log::debug!("pull: {what} from {url}");
                    return Ok(found);
                }
                Err(err) => {
                    log::info!("pull: {what} from {url}: {err}; trying the next host");
                    failures.push((e.config.url(), err));
                }
            }
        }
        Err(self.all_failed(what, failures))
    }

    async fn manifest_at(
        &self,
        e: &Endpoint,
        url: &str,
        accept: &HeaderMap,
        reference: &str,
        what: &str,
    ) -> Result<(Bytes, String), Error> {
        let host = e.config.host.clone();
        let resp = e.get(url, accept, &self.scope(), what).await?;
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_SIZE as u64)
        {
            return Err(too_big(&host, what));
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| request_error(&host, what, &e))?;
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MANIFEST_SIZE {
                return Err(too_big(&host, what));
            }
        }
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
        // The digest asked for, or the one the host claims, must be the bytes'.
        let claimed = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(want) = claimed
            && want != digest
        {
            return Err(Error::DigestMismatch {
                host,
                expected: want,
                actual: digest,
                size: body.len() as u64,
            });
        }
        Ok((Bytes::from(body), digest))
    }

    /// The blob `digest` from byte `offset` on (a Range request; a host that ignores it
    /// answers from 0, which [`BlobBody::offset`] says). `urls`: a foreign layer's own
    /// locations, tried first.
    pub async fn blob(
        &self,
        digest: &str,
        urls: &[String],
        offset: u64,
    ) -> Result<BlobBody, Error> {
        let what = format!("blob {digest}");
        let mut range = HeaderMap::new();
        if offset > 0 {
            range.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("valid range"),
            );
        }
        let mut failures = Vec::new();
        for u in urls {
            match self.foreign_blob(u, &range, offset, &what).await {
                Ok(b) => return Ok(b),
                Err(err) => {
                    log::info!("pull: {what} from {u}: {err}; trying the next location");
                    failures.push((u.clone(), err));
                }
            }
        }
        for e in self.candidates(Need::Pull)? {
            let url = e.url(&self.repository, &["blobs", digest]);
            let resp = match e.get(&url, &range, &self.scope(), &what).await {
                Ok(r) => r,
                Err(err) => {
                    log::info!("pull: {what} from {url}: {err}; trying the next host");
                    failures.push((e.config.url(), err));
                    continue;
                }
            };
            match body_of(resp, &e.config.host, &what, offset) {
                Ok(b) => return Ok(b),
                Err(err) => failures.push((e.config.url(), err)),
            }
        }
        Err(self.all_failed(&what, failures))
    }

    async fn foreign_blob(
        &self,
        url: &str,
        range: &HeaderMap,
        offset: u64,
        what: &str,
    ) -> Result<BlobBody, Error> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::Registry {
            code: Code::InvalidArgument,
            host: url.to_string(),
            what: what.to_string(),
            detail: format!("bad URL: {e}"),
        })?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(Error::Registry {
                code: Code::Unimplemented,
                host,
                what: what.to_string(),
                detail: format!("only http and https URLs are fetched, not {url}"),
            });
        }
        install_crypto();
        let client = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent("corrald")
            .build()
            .map_err(|e| request_error(&host, what, &e))?;
        let resp = client
            .get(parsed)
            .headers(range.clone())
            .send()
            .await
            .map_err(|e| request_error(&host, what, &e))?;
        if !resp.status().is_success() {
            return Err(status_error(&host, what, url, resp).await);
        }
        body_of(resp, &host, what, offset)
    }
}

fn too_big(host: &str, what: &str) -> Error {
    Error::Registry {
        code: Code::FailedPrecondition,
        host: host.to_string(),
        what: what.to_string(),
        detail: format!("more than {MAX_MANIFEST_SIZE} bytes; refused"),
    }
}

/// The body of a successful blob answer, checked against the Range asked for.
fn body_of(
    resp: reqwest::Response,
    host: &str,
    what: &str,
    offset: u64,
) -> Result<BlobBody, Error> {
    let start = if resp.status() == StatusCode::PARTIAL_CONTENT {
        // `bytes <start>-<end>/<size>`
        let start = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if start.is_some_and(|s| s != offset) {
            return Err(Error::Registry {
                code: Code::Unknown,
                host: host.to_string(),
                what: what.to_string(),
                detail: format!(
                    "asked for bytes from {offset}, the answer starts at {}",
                    start.unwrap_or_default()
                ),
            });
        }
        offset
    } else {
        0
    };
    let (h, w) = (host.to_string(), what.to_string());
    let stream = resp
        .bytes_stream()
        .map(move |r| r.map_err(|e| request_error(&h, &w, &e)));
    Ok(BlobBody {
        offset: start,
        host: host.to_string(),
        stream: Box::pin(stream),
    })
}

/// The distribution API's error envelope.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<EnvelopeError>,
}

#[derive(serde::Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The most of an error answer's body read: enough for the distribution API's error envelope
/// (the message quotes 256 bytes of anything else).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Reads at most `limit` bytes of `resp`'s body, and says whether there was more. A hostile or
/// broken server may announce or send gigabytes: reqwest's `bytes()` reserves whatever
/// Content-Length says and reads to the end.
pub async fn read_at_most(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Our error for a non-success answer, naming the host and what was asked for.
async fn status_error(host: &str, what: &str, url: &str, resp: reqwest::Response) -> Error {
    let status = resp.status();
    let body = read_at_most(resp, MAX_ERROR_BODY)
        .await
        .map(|(b, _)| b)
        .unwrap_or_default();
    let envelope: Option<Envelope> = serde_json::from_slice(&body).ok();
    let from_envelope =
        envelope
            .as_ref()
            .and_then(|e| e.errors.first())
            .map(|e| match e.code.as_str() {
                "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN" | "NOT_FOUND" => {
                    Code::NotFound
                }
                "UNAUTHORIZED" => Code::Unauthenticated,
                "DENIED" => Code::PermissionDenied,
                "TOOMANYREQUESTS" => Code::Unavailable,
                _ => Code::Unknown,
            });
    let code = match status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 429 | 500..=599 => Code::Unavailable,
        _ => from_envelope.unwrap_or(Code::Unknown),
    };
    let mut detail = match status.as_u16() {
        401 => format!("401 Unauthorized for {url}: credentials are missing or wrong"),
        404 => format!("not found: HTTP 404 for {url}"),
        _ => format!("HTTP {status} for {url}"),
    };
    match envelope.filter(|e| !e.errors.is_empty()) {
        Some(e) => {
            let msgs: Vec<String> = e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect();
            detail.push_str(&format!(" ({})", msgs.join("; ")));
        }
        None if !body.is_empty() && status.as_u16() != 404 => {
            let text = String::from_utf8_lossy(&body[..body.len().min(256)]);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            detail.push_str(&format!(": {text}"));
        }
        None => {}
    }
    Error::Registry {
        code,
        host: host.to_string(),
        what: what.to_string(),
        detail,
    }
}

fn request_error(host: &str, what: &str, r: &reqwest::Error) -> Error {
    let mut detail = error_chain(r);
    // TLS spoken to a plain HTTP server: say what to do about it.
    if detail.contains("https://")
        && (detail.contains("InvalidContentType") || detail.contains("corrupt message"))
    {
        detail.push_str(&format!(
            " (does {host} serve plain HTTP? then pull with plain HTTP, list it under \
             [registry] insecure in corrald's config, or give it an http:// URL in its \
             hosts.toml)"
        ));
    }
    if detail.contains("UnknownIssuer") {
        detail.push_str(&format!(
            " (the CA that signed {host}'s certificate is not trusted: name it with `ca` in \
             the registry's hosts.toml, or put it as a *.crt in the registry's host directory)"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::hosts::{Capabilities, HostConfig};

    fn endpoint(registry: &str, host: &str, path: &str) -> Endpoint {
        let config = HostConfig {
            scheme: "http".into(),
            host: host.into(),
            path: path.into(),
            capabilities: Capabilities::ALL,
            ca: Vec::new(),
            client: Vec::new(),
            skip_verify: None,
            headers: vec![("X-A".into(), "1".into())],
            source: None,
        };
        Endpoint::new(registry, config, &|_| {
            Ok(super::super::Credentials::Anonymous)
        })
        .unwrap()
    }

    #[test]
    fn urls_join_root_repository_and_object() {
        let e = endpoint("r.io", "r.io", "/v2");
        assert_eq!(
            e.url("a/b", &["manifests", "v1"]),
            "http://r.io/v2/a/b/manifests/v1"
        );
        // A mirror says which registry it is asked for.
        let e = endpoint("registry.k8s.io", "127.0.0.1:5000", "/v2");
        assert_eq!(
            e.url("pause", &["blobs", "sha256:ab"]),
            "http://127.0.0.1:5000/v2/pause/blobs/sha256:ab?ns=registry.k8s.io"
        );
        // override_path: the URL's own path is the root.
        let e = endpoint("r.io", "m.io", "/proxy/r");
        assert_eq!(
            e.url("x", &["manifests", "t"]),
            "http://m.io/proxy/r/x/manifests/t?ns=r.io"
        );
        let e = endpoint("docker.io", "registry-1.docker.io", "/v2");
        assert_eq!(
            e.url("library/busybox", &["manifests", "latest"]),
            "http://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
        assert_eq!(e.headers.get("x-a").unwrap(), "1");
    }

    /// Found by the registry fuzz target: an error answer announcing 4 GiB made reqwest
    /// reserve 4 GiB before reading a byte. An error body, and a token answer, are read only
    /// up to a bound; the status and what was read still make the error.
    #[test]
    fn a_4_gib_error_body_is_not_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        install_crypto();
        let url = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/v2/x/manifests/latest", l.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((mut c, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut head = [0u8; 4096];
                        let _ = c.read(&mut head).await;
                        let _ = c
                            .write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 4294967296\r\n\r\n")
                            .await;
                        let chunk = vec![b'x'; 64 * 1024];
                        while c.write_all(&chunk).await.is_ok() {}
                    });
                }
            });
            url
        });
        let started = std::time::Instant::now();
        let (e, largest) = protocol::fuzzing::measure(|| {
            rt.block_on(async {
                let resp = reqwest::get(&url).await.unwrap();
                status_error("h", "manifest", &url, resp).await
            })
        });
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(e.to_string().contains("500"), "{e}");
        assert!(largest < 16 << 20, "allocated {largest} bytes at once");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
