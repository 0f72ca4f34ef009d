//! Image pull done by the daemon: registry → content store → snapshotter → image record.
//!
//! It leaves exactly the records `ctr images pull` leaves (protocol.md §5.3), so ctr and CRI
//! see an image corral pulled as their own:
//!
//! ```text
//! reference ──normalise──▶ hosts (hosts.toml: mirrors, TLS) ──▶ registry (HTTP, tokens)
//!   │ lease (gc.expire = now + 24 h) holds everything below until the image record exists
//!   ├─ index?    ingest `index-sha256:…`     labels gc.ref.content.m.0 = chosen manifest
//!   ├─ manifest  ingest `manifest-sha256:…`  labels gc.ref.content.config, gc.ref.content.l.<n>
//!   ├─ config ─┐ ingests `config-…`/`layer-…`, at most 4 at once, resumed from the ingest's
//!   ├─ layers ─┘ offset with a Range request; every blob labelled
//!   │            containerd.io/distribution.source.<host> = <repository>
//!   ├─ unpack    overlayfs: each layer extracted as soon as it is in, several at once, into
//!   │            a staging dir; then in chain order prepare `extract-… <chainID>` on
//!   │            chainID(n-1), adopt the staged dir, commit as chainID(n) (see `unpack`).
//!   │            Others: layer n applied once layers 0..=n are in, one after the other.
//!   │            DiffIDs checked against the config, existing snapshots skipped; layer
//!   │            labelled containerd.io/uncompressed, config labelled
//!   │            containerd.io/gc.ref.snapshot.<snapshotter> = top chainID
//!   └─ image record created (or its target updated), /images/create|update published
//! lease deleted
//! ```
//!
//! A failure at any point deletes the lease and writes no image record: what was committed is
//! garbage for the next collection, and partial downloads stay as ingests (named per namespace,
//! as the content service names them) for the next pull to resume.

pub mod auth;
pub mod authorizer;
pub mod hosts;
pub mod reference;
pub mod registry;
mod unpack;

pub use unpack::{parallelism, unpack_manifest};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use content::{ContentStore, Digest, WriterOpts};
use protocol::Code;
use protocol::grpc::any::{IMAGE_CREATE, IMAGE_UPDATE, pack};
use protocol::grpc::containerd::services::images::v1::{ImageCreate, ImageUpdate};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;

pub use auth::Credentials;
use reference::{ImageRef, Platform};
use registry::{Endpoint, Registry};

use crate::metadata::{self, Descriptor, IMAGES, Image, LEASES, Labels, Lease, Time, key};
use crate::services::Shared;
use crate::services::content::BLOB_LOCK;
use crate::snapshots::{self, Busy};

/// Blobs downloaded at once per pull.
pub const CONCURRENT_DOWNLOADS: usize = 4;
/// Progress of one blob's bytes is reported at most this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Image configs are read whole into memory; a bigger one is refused.
const MAX_CONFIG_SIZE: i64 = 16 << 20;
/// How long the pull's lease lives if corrald dies before deleting it (containerd's default).
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
pub const LABEL_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";
pub const LABEL_REF_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";

/// Claims on snapshot keys made by pulls (unpack keys are unique per pull; chain IDs may be
/// wanted by two pulls of the same image at once, and the loser finds the winner's snapshot).
static BUSY: LazyLock<Busy> = LazyLock::new(Busy::default);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
    BadPlatform(String),
    #[error("snapshotter not loaded: {0}")]
    NoSnapshotter(String),
    #[error("credentials file {path}: {reason}")]
    BadCredentialsFile { path: String, reason: String },
    #[error("registry hosts configuration {path}: {reason}")]
    HostsConfig {
        code: Code,
        path: String,
        reason: String,
    },
    #[error("{what} from registry {registry}: every host failed: {}", describe_failures(.failures))]
    AllHostsFailed {
        registry: String,
        what: String,
        /// Each host tried (its URL) and why it failed, in order.
        failures: Vec<(String, Error)>,
    },
    #[error("registry {host} unreachable: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("{what} from registry {host}: {detail}")]
    Registry {
        code: Code,
        host: String,
        what: String,
        detail: String,
    },
    #[error("{name}: no manifest for platform {wanted} in the index (it has: {available})")]
    NoPlatform {
        name: String,
        wanted: String,
        available: String,
    },
    #[error("{what} of {name}: {reason}")]
    BadImage {
        name: String,
        what: String,
        reason: String,
    },
    #[error(
        "blob {expected} from registry {host}: the registry served {size} bytes with digest {actual}; nothing was stored"
    )]
    DigestMismatch {
        host: String,
        expected: String,
        actual: String,
        size: u64,
    },
    #[error("blob {digest} from registry {host}: {detail}")]
    BadLength {
        host: String,
        digest: String,
        detail: String,
    },
    #[error(
        "layer {index} ({digest}) of {name}: its diff ID is {actual}, the image config says {expected}"
    )]
    DiffIdMismatch {
        name: String,
        index: usize,
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Metadata(#[from] metadata::Error),
    #[error("content store: {0}")]
    Content(#[from] content::Error),
    #[error("{0}")]
    Snapshot(#[from] snapshots::Error),
    #[error("unpack layer {digest}: {source}")]
    Apply {
        digest: String,
        source: snapshotter::apply::ApplyError,
    },
    #[error("pull worker failed: {0}")]
    Worker(String),
    #[error("cancelled")]
    Cancelled,
    /// A stored blob read back wrong (it was quarantined; the message says what to do).
    #[error("{}", .0.message())]
    Damaged(tonic::Status),
}

fn describe_failures(failures: &[(String, Error)]) -> String {
    failures
        .iter()
        .map(|(url, e)| format!("{url}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::BadReference { .. } | Error::BadPlatform(_) | Error::NoSnapshotter(_) => {
                Code::InvalidArgument
            }
            Error::BadCredentialsFile { .. } => Code::FailedPrecondition,
            Error::HostsConfig { code, .. } => *code,
            // As containerd: the first failure other than "not found" says what went wrong;
            // if every host said "not found", it is not found.
            Error::AllHostsFailed { failures, .. } => failures
                .iter()
                .map(|(_, e)| e.code())
                .find(|c| *c != Code::NotFound)
                .unwrap_or(Code::NotFound),
            Error::Unreachable { .. } => Code::Unavailable,
            Error::Registry { code, .. } => *code,
            Error::NoPlatform { .. } => Code::NotFound,
            Error::BadImage { .. } => Code::FailedPrecondition,
            Error::DigestMismatch { .. } | Error::BadLength { .. } => Code::DataLoss,
            Error::DiffIdMismatch { .. } => Code::DataLoss,
            Error::Metadata(e) => e.code(),
            Error::Content(e) => e.code(),
            Error::Snapshot(e) => e.code(),
            Error::Apply { source, .. } => source.code(),
            Error::Worker(_) => Code::Internal,
            Error::Cancelled => Code::Canceled,
            Error::Damaged(_) => Code::DataLoss,
        }
    }
}

/// What to pull, and how.
#[derive(Debug, Clone)]
pub struct Request {
    pub reference: String,
    /// `os/arch[/variant]`; empty for linux/amd64.
    pub platform: String,
    pub plain_http: bool,
    /// `None`: from the docker config file, else anonymous.
    pub credentials: Option<Credentials>,
    pub unpack: bool,
    /// Empty for `overlayfs`.
    pub snapshotter: String,
}

/// corrald's registry settings (`[registry]` in its config).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The registry hosts directory (`<dir>/<host>/hosts.toml`, see [`hosts`]).
    pub config_path: PathBuf,
    /// A docker-style config.json with `auths`.
    pub auths_file: PathBuf,
    /// Registries (`host[:port]`) talked to over plain HTTP when no hosts.toml names a server
    /// for them.
    pub insecure: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    Config,
    Layer,
}

impl Kind {
    /// The ingest ref prefix (containerd's `remotes.MakeRefKey`).
    fn ref_prefix(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Manifest => "manifest",
            Kind::Config => "config",
            Kind::Layer => "layer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Waiting,
    Downloading,
    Downloaded,
    Unpacking,
    Unpacked,
    Exists,
    Done,
}

/// One blob's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub digest: String,
    pub media_type: String,
    pub kind: Kind,
    /// Position among the layers (0 for the others).
    pub index: u32,
    pub total: i64,
    pub offset: i64,
    pub state: State,
}

/// What a successful pull made.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub name: String,
    pub target: Descriptor,
    pub manifest: Descriptor,
    /// Empty if not unpacked.
    pub chain_id: String,
    pub snapshotter: String,
}

/// A descriptor as manifests and indexes carry it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<PlatformJson>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct PlatformJson {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An index or a manifest: which one is told by the fields present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Option<Vec<Desc>>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl Desc {
    fn to_record(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().into_iter().collect(),
        }
    }
}

/// State shared by the tasks of one pull.
struct Ctx {
    d: Shared,
    ns: String,
    lease: String,
    image: ImageRef,
    registry: Registry,
    progress: mpsc::Sender<Progress>,
    downloads: Semaphore,
    /// `containerd.io/distribution.source.<host>` = repository, on every blob.
    source: (String, String),
    /// Refs of the ingests this pull opened (to discard them when the disk is full).
    ingests: std::sync::Mutex<Vec<String>>,
    /// Held (read) by every blocking step of a download: aborting a download task does not
    /// stop a step already running on the blocking pool, and a failed pull waits for them
    /// (write) before it returns, so that nothing of it stores a blob after its lease is gone.
    work: Arc<tokio::sync::RwLock<()>>,
}

impl Ctx {
    async fn emit(&self, p: Progress) {
        // A client that went away does not stop the pull.
        let _ = self.progress.send(p).await;
    }

    fn bad_image(&self, what: impl Into<String>, reason: impl Into<String>) -> Error {
        bad_image(&self.image.name, what, reason)
    }

    fn source_labels(&self) -> Labels {
        Labels::from([self.source.clone()])
    }

    /// Waits for the blocking steps of downloads already stopped (see [`Ctx::work`]).
    async fn steps_finished(&self) {
        drop(self.work.write().await);
    }

    /// [`blocking`], counted in [`Ctx::work`].
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let step = self.work.clone().read_owned().await;
        blocking(move || {
            let _step = step;
            f()
        })
        .await
    }
}

/// Stops the download tasks of a failed pull: aborted, awaited, and the blocking steps they
/// had started finished.
async fn stop_all(ctx: &Ctx, tasks: &mut [tokio::task::JoinHandle<Result<(), Error>>]) {
    for t in tasks.iter() {
        t.abort();
    }
    for t in tasks.iter_mut() {
        let _ = t.await;
    }
    ctx.steps_finished().await;
}

fn progress(desc: &Desc, kind: Kind, index: usize, offset: u64, state: State) -> Progress {
    Progress {
        digest: desc.digest.clone(),
        media_type: desc.media_type.clone(),
        kind,
        index: index as u32,
        total: desc.size,
        offset: offset as i64,
        state,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
}

/// Pulls `req` into namespace `ns`, reporting progress on `events`.
pub async fn pull(
    d: Shared,
    ns: &str,
    req: Request,
    settings: &Settings,
    events: mpsc::Sender<Progress>,
) -> Result<Pulled, Error> {
    let image = reference::parse(&req.reference)?;
    let platform = Platform::parse(&req.platform)?;
    let sn_name = if req.snapshotter.is_empty() {
        "overlayfs".to_string()
    } else {
        req.snapshotter.clone()
    };
    if req.unpack && !d.snapshotters.contains_key(&sn_name) {
        return Err(Error::NoSnapshotter(sn_name));
    }
    let plain_http = req.plain_http
        || settings
            .insecure
            .iter()
            .any(|h| h == image.host() || h == image.endpoint());
    let registry = connect(&image, plain_http, req.credentials.clone(), settings).await?;
    log::info!(
        "pull {} into {ns} (platform {platform}, from {})",
        image.name,
        registry.urls().join(", "),
    );

    // Resolve before anything is written: a bad name or an unreachable registry leaves no
    // trace.
    let object = image
        .digest()
        .or(image.tag())
        .unwrap_or("latest")
        .to_string();
    let (top_bytes, top_digest) = registry
        .resolve(&object, &format!("manifest {}", image.name))
        .await?;

    let lease = create_lease(&d, ns).await?;
    let ctx = Arc::new(Ctx {
        d: d.clone(),
        ns: ns.to_string(),
        lease: lease.clone(),
        source: (
            format!("{LABEL_SOURCE_PREFIX}{}", image.host()),
            image.repository().to_string(),
        ),
        image,
        registry,
        progress: events,
        downloads: Semaphore::new(CONCURRENT_DOWNLOADS),
        ingests: Default::default(),
        work: Arc::default(),
    });
    let result = pull_in_lease(
        &ctx,
        top_bytes,
        top_digest,
        &platform,
        req.unpack.then_some(sn_name),
    )
    .await;
    if let Err(e) = &result
        && e.code() == Code::ResourceExhausted
    {
        discard_ingests(&ctx).await;
    }
    // Whatever happened, the lease goes: on success the image record holds everything, on
    // failure what was stored becomes garbage.
    delete_lease(&d, ns, lease).await;
    match &result {
        Ok(p) => log::info!("pulled {} ({})", p.name, p.target.digest),
        Err(e) => {
            log::warn!("pull {} failed: {e}", ctx.image.name);
            crate::gc::trigger(d);
        }
    }
    result
}

/// After the disk filled: the pull's other partial downloads go too. They are kept for a
/// resume after other failures, but here their bytes are what keeps the disk full (the ingest
/// that hit ENOSPC removed itself). The downloads were aborted; their writers close as their
/// tasks wind down, so a ref still held is tried again for a moment.
async fn discard_ingests(ctx: &Arc<Ctx>) {
    let refs = std::mem::take(&mut *ctx.ingests.lock().unwrap_or_else(|e| e.into_inner()));
    let c = ctx.clone();
    let _ = blocking(move || {
        for r in refs {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match c.d.content.abort(&r) {
                    Err(content::Error::RefLocked(_)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(()) => {
                        log::info!("pull: discarded the partial download {r} (disk full)");
                        break;
                    }
                    Err(content::Error::RefNotFound(_)) => break,
                    Err(e) => {
                        log::warn!("pull: discarding {r} after the disk filled: {e}");
                        break;
                    }
                }
            }
        }
        Ok(())
    })
    .await;
}

/// The hosts of `image`'s registry (from the hosts directory), each with its client and
/// credentials: `creds` for every host when the request brings them, else each host's entry in
/// the credentials file.
async fn connect(
    image: &ImageRef,
    plain_http: bool,
    creds: Option<Credentials>,
    settings: &Settings,
) -> Result<Registry, Error> {
    let (dir, auths, registry, repository) = (
        settings.config_path.clone(),
        settings.auths_file.clone(),
        image.host().to_string(),
        image.repository().to_string(),
    );
    // Files are read and clients built (CA and key files read) off the async threads.
    blocking(move || {
        let configs = hosts::hosts_for(&dir, &registry, plain_http)?;
        let creds_for =
            |host: &str| -> Result<Credentials, Error> {
                match &creds {
                    Some(c) => Ok(c.clone()),
                    None => Ok(auth::from_docker_config_file(&auths, host)?
                        .unwrap_or(Credentials::Anonymous)),
                }
            };
        let endpoints = configs
            .into_iter()
            .map(|c| Endpoint::new(&registry, c, &creds_for))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Registry::new(&registry, &repository, endpoints))
    })
    .await
}

/// A lease that expires in a day, as containerd's client makes for a pull.
async fn create_lease(d: &Shared, ns: &str) -> Result<String, Error> {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = Time::now();
    let id = format!(
        "corral-pull-{}{:09}-{}",
        t.seconds,
        t.nanos,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let expire = rfc3339(SystemTime::now() + LEASE_EXPIRY);
    let (d, ns, lid) = (d.clone(), ns.to_string(), id.clone());
    blocking(move || {
        let tx = d.db.write()?;
        tx.ensure_namespace(&ns)?;
        tx.put(
            LEASES,
            &key(&ns, &[&lid]),
            &Lease {
                labels: Labels::from([(crate::gc::LABEL_EXPIRE.to_string(), expire)]),
                created_at: Time::now(),
            },
        )?;
        tx.commit()?;
        Ok(())
    })
    .await?;
    Ok(id)
}

/// Deletes a lease made by [`create_lease`]; a failure is logged (it expires on its own).
async fn delete_lease(d: &Shared, ns: &str, lease: String) {
    let (d, ns2) = (d.clone(), ns.to_string());
    if let Err(e) = blocking(move || {
        let tx = d.db.write()?;
        tx.delete_lease(&ns2, &lease)?;
        tx.commit()?;
        Ok(())
    })
    .await
    {
        log::warn!("pull: deleting lease in {ns}: {e} (it expires in a day)");
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    protocol::logfmt::rfc3339_seconds(secs)
}

fn bad_image(name: &str, what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadImage {
        name: name.to_string(),
        what: what.into(),
        reason: reason.into(),
    }
}

/// An index or manifest of image `name`.
fn parse_doc(name: &str, what: &str, bytes: &[u8]) -> Result<Doc, Error> {
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| bad_image(name, what, format!("not valid JSON: {e}")))?;
    if doc.schema_version != Some(2) {
        return Err(bad_image(
            name,
            what,
            format!(
                "schema version {:?} is not supported (only 2)",
                doc.schema_version
            ),
        ));
    }
    Ok(doc)
}

/// The config and layer descriptors of manifest `what` of image `name`, checked: a config no
/// bigger than we read, valid digests, no negative size.
fn manifest_parts(name: &str, what: &str, manifest: &Doc) -> Result<(Desc, Vec<Desc>), Error> {
    let config = manifest
        .config
        .clone()
        .ok_or_else(|| bad_image(name, what, "no config descriptor"))?;
    let layers = manifest.layers.clone().unwrap_or_default();
    if config.size > MAX_CONFIG_SIZE {
        return Err(bad_image(
            name,
            what,
            format!(
                "config {} is {} bytes, more than the {MAX_CONFIG_SIZE} accepted",
                config.digest, config.size
            ),
        ));
    }
    for d in std::iter::once(&config).chain(&layers) {
        Digest::parse(&d.digest)
            .map_err(|e| bad_image(name, what, format!("descriptor {:?}: {e}", d.digest)))?;
        if d.size < 0 {
            return Err(bad_image(
                name,
                what,
                format!("descriptor {} has a negative size", d.digest),
            ));
        }
    }
    Ok((config, layers))
}

/// The diff IDs of image config `config` (its bytes), one per layer of the manifest.
fn diff_ids_of(
    name: &str,
    config: &Desc,
    bytes: &[u8],
    layers: usize,
) -> Result<Vec<String>, Error> {
    let what = format!("config {}", config.digest);
    let parsed: ImageConfig =
        serde_json::from_slice(bytes).map_err(|e| bad_image(name, &what, e.to_string()))?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != layers {
        return Err(bad_image(
            name,
            &what,
            format!(
                "{} diff IDs for {layers} layers in the manifest",
                diff_ids.len()
            ),
        ));
    }
    Ok(diff_ids)
}

async fn pull_in_lease(
    ctx: &Arc<Ctx>,
    top_bytes: bytes::Bytes,
    top_digest: String,
    platform: &Platform,
    snapshotter: Option<String>,
) -> Result<Pulled, Error> {
    let name = ctx.image.name.clone();
    let top = parse_doc(&name, "manifest", &top_bytes)?;
    let is_index = top.manifests.is_some()
        || matches!(
            top.media_type.as_deref(),
            Some(MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST)
        );
    let top_media = top.media_type.clone().unwrap_or_else(|| {
        if is_index {
            MEDIA_TYPE_OCI_INDEX.into()
        } else {
            MEDIA_TYPE_OCI_MANIFEST.into()
        }
    });
    let top_desc = Desc {
        media_type: top_media,
        digest: top_digest,
        size: top_bytes.len() as i64,
        platform: None,
        annotations: BTreeMap::new(),
        urls: None,
    };

    // The index, if any: choose the manifest, fetch it.
    let (manifest_desc, manifest_bytes, manifest) = if is_index {
        let entries = top.manifests.unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
            })
            .cloned()
            .ok_or_else(|| Error::NoPlatform {
                name: name.clone(),
                wanted: platform.to_string(),
                available: available_platforms(&entries),
            })?;
        let (bytes, digest) = ctx
            .registry
            .manifest(&chosen.digest, &format!("manifest {}", chosen.digest))
            .await?;
        if digest != chosen.digest || bytes.len() as i64 != chosen.size {
            return Err(Error::DigestMismatch {
                host: ctx.image.host().to_string(),
                expected: chosen.digest.clone(),
                actual: digest,
                size: bytes.len() as u64,
            });
        }
        let doc = parse_doc(&name, &format!("manifest {}", chosen.digest), &bytes)?;
        let mut labels = ctx.source_labels();
        labels.insert(
            "containerd.io/gc.ref.content.m.0".into(),
            chosen.digest.clone(),
        );
        ctx.emit(progress(&top_desc, Kind::Index, 0, 0, State::Downloading))
            .await;
        let existed = store_bytes(ctx, &top_desc, Kind::Index, top_bytes.clone(), labels).await?;
        ctx.emit(progress(
            &top_desc,
            Kind::Index,
            0,
            top_desc.size as u64,
            if existed {
                State::Exists
            } else {
                State::Downloaded
            },
        ))
        .await;
        let mut desc = chosen;
        if desc.media_type.is_empty() {
            desc.media_type = doc
                .media_type
                .clone()
                .unwrap_or_else(|| MEDIA_TYPE_OCI_MANIFEST.into());
        }
        (desc, bytes, doc)
    } else {
        (top_desc.clone(), top_bytes, top)
    };
    let what = format!("manifest {}", manifest_desc.digest);
    let (config, layers) = manifest_parts(&name, &what, &manifest)?;

    // The manifest, labelled with its children.
    let mut labels = ctx.source_labels();
    labels.insert(
        "containerd.io/gc.ref.content.config".into(),
        config.digest.clone(),
    );
    for (i, l) in layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    ctx.emit(progress(
        &manifest_desc,
        Kind::Manifest,
        0,
        0,
        State::Downloading,
    ))
    .await;
    let existed = store_bytes(ctx, &manifest_desc, Kind::Manifest, manifest_bytes, labels).await?;
    ctx.emit(progress(
        &manifest_desc,
        Kind::Manifest,
        0,
        manifest_desc.size as u64,
        if existed {
            State::Exists
        } else {
            State::Downloaded
        },
    ))
    .await;

    // Config and layers, concurrently; unpack follows them in order.
    ctx.emit(progress(&config, Kind::Config, 0, 0, State::Waiting))
        .await;
    for (i, l) in layers.iter().enumerate() {
        ctx.emit(progress(l, Kind::Layer, i, 0, State::Waiting))
            .await;
    }
    let config_task = tokio::spawn(fetch(ctx.clone(), config.clone(), Kind::Config, 0));
    let mut layer_tasks: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| tokio::spawn(fetch(ctx.clone(), l.clone(), Kind::Layer, i)))
        .collect();
    if let Err(e) = joined(config_task.await) {
        stop_all(ctx, &mut layer_tasks).await;
        return Err(e);
    }
    let diff_ids = match read_blob(ctx, &config).await {
        Ok(bytes) => diff_ids_of(&name, &config, &bytes, layers.len()),
        Err(e) => Err(e),
    };
    let diff_ids = match diff_ids {
        Ok(d) => d,
        Err(e) => {
            stop_all(ctx, &mut layer_tasks).await;
            return Err(e);
        }
    };
    let chain = reference::chain_ids(&diff_ids);

    match &snapshotter {
        Some(sn) => {
            // Each download hands its result to the unpacker through a channel, so that its
            // task stays here to be stopped (aborted, then awaited) if the unpack fails.
            let aborts: Vec<_> = layer_tasks.iter().map(|t| t.abort_handle()).collect();
            let mut handed = Vec::new();
            let arrivals: Vec<unpack::Arrival> = layer_tasks
                .into_iter()
                .map(|t| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    handed.push(tokio::spawn(async move {
                        let _ = tx.send(joined(t.await));
                    }));
                    Box::pin(async move {
                        rx.await
                            .unwrap_or_else(|_| Err(Error::Worker("layer download stopped".into())))
                    }) as unpack::Arrival
                })
                .collect();
            let unpacker = Arc::new(unpack::Unpacker {
                d: ctx.d.clone(),
                ns: ctx.ns.clone(),
                lease: ctx.lease.clone(),
                image: name.clone(),
                snapshotter: sn.clone(),
                progress: ctx.progress.clone(),
            });
            let to_unpack: Vec<unpack::Layer> = layers
                .iter()
                .zip(&diff_ids)
                .zip(&chain)
                .map(|((l, diff_id), chain_id)| unpack::Layer {
                    desc: l.clone(),
                    diff_id: diff_id.clone(),
                    chain_id: chain_id.clone(),
                })
                .collect();
            if let Err(e) = unpack::unpack(&unpacker, &to_unpack, arrivals).await {
                for a in aborts {
                    a.abort();
                }
                // Each hand-over ends once its (aborted) download has.
                for h in handed {
                    let _ = h.await;
                }
                ctx.steps_finished().await;
                return Err(e);
            }
        }
        None => {
            for i in 0..layers.len() {
                let task = std::mem::replace(&mut layer_tasks[i], tokio::spawn(async { Ok(()) }));
                if let Err(e) = joined(task.await) {
                    stop_all(ctx, &mut layer_tasks[i + 1..]).await;
                    return Err(e);
                }
                ctx.emit(progress(
                    &layers[i],
                    Kind::Layer,
                    i,
                    layers[i].size as u64,
                    State::Done,
                ))
                .await;
            }
        }
    }

    let chain_id = match (&snapshotter, chain.last()) {
        (Some(sn), Some(top)) => {
            let labels = Labels::from([(format!("{LABEL_REF_SNAPSHOT_PREFIX}{sn}"), top.clone())]);
            label_blob(&ctx.d, &ctx.ns, &config.digest, labels).await?;
            top.clone()
        }
        _ => String::new(),
    };
    ctx.emit(progress(
        &config,
        Kind::Config,
        0,
        config.size as u64,
        State::Done,
    ))
    .await;

    let target = top_desc.to_record();
    put_image(ctx, &name, target.clone()).await?;
    ctx.emit(progress(
        &manifest_desc,
        Kind::Manifest,
        0,
        manifest_desc.size as u64,
        State::Done,
    ))
    .await;
    Ok(Pulled {
        name,
        target,
        manifest: manifest_desc.to_record(),
        chain_id,
        snapshotter: snapshotter.unwrap_or_default(),
    })
}

fn available_platforms(entries: &[Desc]) -> String {
    let all: Vec<String> = entries
        .iter()
        .map(|e| match &e.platform {
            Some(p) => {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
                    s.push('/');
                    s.push_str(v);
                }
                s
            }
            None => format!("{} (no platform)", e.digest),
        })
        .collect();
    if all.is_empty() {
        "no manifests".into()
    } else {
        all.join(", ")
    }
}

/// The store ref of an ingest of `desc` in `ns` (the content service's `<ns>/<client ref>`).
fn ingest_ref(ns: &str, kind: Kind, digest: &str) -> String {
    format!("{ns}/{}-{digest}", kind.ref_prefix())
}

/// Makes blob `digest` (on disk) visible in the pull's namespace with `labels` merged in, and
/// attaches it to the lease. Callers hold `BLOB_LOCK` (read).
fn record(ctx: &Ctx, digest: &str, size: u64, labels: Labels) -> Result<(), Error> {
    let tx = ctx.d.db.write()?;
    tx.add_lease_resource(&ctx.ns, &ctx.lease, "content", digest)?;
    tx.record_blob(&ctx.ns, digest, size, labels, true)?;
    tx.commit()?;
    Ok(())
}

/// If blob `digest` is on disk already, records it (with `labels`) and returns true.
fn record_if_present(
    ctx: &Ctx,
    digest: &Digest,
    size: u64,
    labels: &Labels,
) -> Result<bool, Error> {
    let _g = BLOB_LOCK.read().unwrap_or_else(|e| e.into_inner());
    match ctx.d.content.info(digest) {
        Ok(info) if info.size == size => {
            record(ctx, &digest.to_string(), size, labels.clone())?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Merges `labels` into namespace `ns`'s record of `digest`.
async fn label_blob(d: &Shared, ns: &str, digest: &str, labels: Labels) -> Result<(), Error> {
    let (d, ns, digest) = (d.clone(), ns.to_string(), digest.to_string());
    blocking(move || {
        let tx = d.db.write()?;
        let size = tx
            .get::<metadata::Blob>(metadata::CONTENT, &key(&ns, &[&digest]))?
            .map(|b| b.size as u64)
            .ok_or_else(|| metadata::Error::NotFound(format!("content {digest}")))?;
        tx.record_blob(&ns, &digest, size, labels, true)?;
        tx.commit()?;
        Ok(())
    })
    .await
}

/// Stores a small blob held in memory (index, manifest). True if it was there already.
async fn store_bytes(
    ctx: &Arc<Ctx>,
    desc: &Desc,
    kind: Kind,
    bytes: bytes::Bytes,
    labels: Labels,
) -> Result<bool, Error> {
    let digest = Digest::parse(&desc.digest).map_err(|e| {
        ctx.bad_image(
            format!("{kind:?}"),
            format!("digest {:?}: {e}", desc.digest),
        )
    })?;
    let c = ctx.clone();
    blocking(move || {
        let size = bytes.len() as u64;
        if record_if_present(&c, &digest, size, &labels)? {
            return Ok(true);
        }
        let sref = ingest_ref(&c.ns, kind, &digest.to_string());
        let mut w =
            c.d.content
                .writer(WriterOpts::new(sref.clone()).total(size).expected(digest))?;
        if w.offset() > 0 {
            w.truncate(0)?;
        }
        w.write_all(&bytes)?;
        let _g = BLOB_LOCK.read().unwrap_or_else(|e| e.into_inner());
        match w.commit(Some(size), Some(&digest), Labels::new()) {
            Ok(_) | Err(content::Error::AlreadyExists(_)) => {}
            Err(e) => {
                drop(w);
                let _ = c.d.content.abort(&sref);
                return Err(e.into());
            }
        }
        record(&c, &digest.to_string(), size, labels)?;
        Ok(false)
    })
    .await
}

/// Reads a (small) stored blob whole.
async fn read_blob(ctx: &Arc<Ctx>, desc: &Desc) -> Result<Vec<u8>, Error> {
    let digest = Digest::parse(&desc.digest)?;
    let c = ctx.clone();
    blocking(move || {
        let r = c.d.content.reader_at(&digest)?;
        let mut buf = vec![0u8; r.size() as usize];
        let mut at = 0;
        while at < buf.len() {
            let n = r.read_at(&mut buf[at..], at as u64)?;
            if n == 0 {
                break;
            }
            at += n;
        }
        buf.truncate(at);
        let actual = Digest::of(&buf);
        if actual != digest {
            return Err(Error::Damaged(crate::integrity::damaged(
                &c.d, &digest, actual,
            )));
        }
        Ok(buf)
    })
    .await
}

/// The outcome of a download task.
fn joined(r: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    r.map_err(|e| Error::Worker(e.to_string()))?
}

/// Downloads one blob (config or layer) into the content store, resuming its ingest.
async fn fetch(ctx: Arc<Ctx>, desc: Desc, kind: Kind, index: usize) -> Result<(), Error> {
    let _permit = ctx
        .downloads
        .acquire()
        .await
        .map_err(|e| Error::Worker(e.to_string()))?;
    let started = Instant::now();
    let digest = Digest::parse(&desc.digest)?;
    let size = desc.size as u64;
    let labels = ctx.source_labels();
    let sref = ingest_ref(&ctx.ns, kind, &desc.digest);

    // Present already, or open (resume) the ingest; another pull of the same blob holds the
    // ref: wait for it to finish or give up.
    let mut writer = loop {
        let (c, l, r) = (ctx.clone(), labels.clone(), sref.clone());
        let opened = ctx
            .blocking(move || {
                if record_if_present(&c, &digest, size, &l)? {
                    return Ok(None);
                }
                match c
                    .d
                    .content
                    .writer(WriterOpts::new(r).total(size).expected(digest))
                {
                    Ok(w) => Ok(Some(Some(w))),
                    Err(content::Error::RefLocked(_)) => Ok(Some(None)),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        match opened {
            None => {
                ctx.emit(progress(&desc, kind, index, size, State::Exists))
                    .await;
                return Ok(());
            }
            Some(Some(w)) => {
                ctx.ingests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sref.clone());
                break w;
            }
            Some(None) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut offset = writer.offset();
    // The host the bytes came from (the registry's name if none was asked).
    let mut host = ctx.image.host().to_string();
    if offset > size {
        writer = ctx
            .blocking(move || {
                writer.truncate(0)?;
                Ok(writer)
            })
            .await?;
        offset = 0;
    }
    if offset < size || size == 0 {
        let urls = desc.urls.clone().unwrap_or_default();
        let mut body = ctx.registry.blob(&desc.digest, &urls, offset).await?;
        host = body.host.clone();
        if body.offset != offset {
            // The registry ignored the Range: start over.
            writer = ctx
                .blocking(move || {
                    writer.truncate(0)?;
                    Ok(writer)
                })
                .await?;
            offset = 0;
        }
        if offset > 0 {
            log::info!("pull: resuming {} at {offset} of {size} bytes", desc.digest);
        }
        ctx.emit(progress(&desc, kind, index, offset, State::Downloading))
            .await;
        // Bytes flow from the network to a blocking writer thread through a short queue.
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(16);
        let step = ctx.work.clone().read_owned().await;
        let write_task = tokio::task::spawn_blocking(move || {
            let _step = step;
            while let Some(chunk) = rx.blocking_recv() {
                writer.write_all(&chunk)?;
            }
            Ok::<_, content::Error>(writer)
        });
        let mut last = Instant::now();
        let mut failed = None;
        while let Some(chunk) = body.stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            offset += chunk.len() as u64;
            if offset > size {
                failed = Some(Error::BadLength {
                    host: host.clone(),
                    digest: desc.digest.clone(),
                    detail: format!(
                        "the registry sent more than the {size} bytes of the descriptor"
                    ),
                });
                break;
            }
            if tx.send(chunk).await.is_err() {
                break;
            }
            if last.elapsed() >= PROGRESS_INTERVAL {
                last = Instant::now();
                let _ =
                    ctx.progress
                        .try_send(progress(&desc, kind, index, offset, State::Downloading));
            }
        }
        drop(tx);
        writer = write_task
            .await
            .map_err(|e| Error::Worker(e.to_string()))??;
        if let Some(e) = failed {
            if matches!(e, Error::BadLength { .. }) {
                let _ = ctx
                    .blocking({
                        let c = ctx.clone();
                        let r = sref.clone();
                        move || {
                            drop(writer);
                            c.d.content.abort(&r).map_err(Error::from)
                        }
                    })
                    .await;
            }
            return Err(e);
        }
    }
    let c = ctx.clone();
    let d2 = desc.clone();
    ctx.blocking(move || {
        let held = writer.offset();
        let actual = writer.digest();
        if held != size || actual != digest {
            drop(writer);
            // Wrong bytes must not be resumed from: start clean next time.
            let _ = c.d.content.abort(&sref);
            if held != size {
                return Err(Error::BadLength {
                    host,
                    digest: d2.digest.clone(),
                    detail: format!("the registry sent {held} bytes, the descriptor says {size}"),
                });
            }
            return Err(Error::DigestMismatch {
                host,
                expected: d2.digest.clone(),
                actual: actual.to_string(),
                size: held,
            });
        }
        let _g = BLOB_LOCK.read().unwrap_or_else(|e| e.into_inner());
        match writer.commit(Some(size), Some(&digest), Labels::new()) {
            Ok(_) | Err(content::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        record(&c, &digest.to_string(), size, labels)
    })
    .await?;
    log::debug!(
        "pull: {kind:?} {index} {} downloaded ({size} bytes) in {:?}",
        desc.digest,
        started.elapsed()
    );
    ctx.emit(progress(&desc, kind, index, size, State::Downloaded))
        .await;
    Ok(())
}

/// Creates the image record, or points an existing one at the new target (keeping its labels),
/// and publishes the event.
async fn put_image(ctx: &Arc<Ctx>, name: &str, target: Descriptor) -> Result<(), Error> {
    let (c, n) = (ctx.clone(), name.to_string());
    let (created, labels) = blocking(move || {
        let k = key(&c.ns, &[&n]);
        let tx = c.d.db.write()?;
        let now = Time::now();
        let (rec, created) = match tx.get::<Image>(IMAGES, &k)? {
            Some(mut r) => {
                r.target = target;
                r.updated_at = now;
                (r, false)
            }
            None => (
                Image {
                    labels: Labels::new(),
                    target,
                    created_at: now,
                    updated_at: now,
                },
                true,
            ),
        };
        tx.ensure_namespace(&c.ns)?;
        tx.put(IMAGES, &k, &rec)?;
        tx.commit()?;
        Ok((created, rec.labels))
    })
    .await?;
    let labels = labels.into_iter().collect();
    let name = name.to_string();
    if created {
        ctx.d.events.publish(
            &ctx.ns,
            "/images/create",
            pack(IMAGE_CREATE, &ImageCreate { name, labels }),
        );
    } else {
        ctx.d.events.publish(
            &ctx.ns,
            "/images/update",
            pack(IMAGE_UPDATE, &ImageUpdate { name, labels }),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_gc() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let s = rfc3339(t);
            assert_eq!(crate::gc::parse_rfc3339(&s), Some(t), "{s}");
        }
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn platforms_of_an_index_are_listed() {
        let entries: Vec<Desc> = serde_json::from_str(
            r#"[{"mediaType":"m","digest":"sha256:1","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
                {"mediaType":"m","digest":"sha256:2","size":1,"platform":{"os":"windows","architecture":"amd64"}},
                {"mediaType":"m","digest":"sha256:3","size":1}]"#,
        )
        .unwrap();
        assert_eq!(
            available_platforms(&entries),
            "linux/arm/v7, windows/amd64, sha256:3 (no platform)"
        );
    }

    #[test]
    fn error_codes() {
        let e = reference::parse("UPPER").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = Error::Unreachable {
            host: "h:1".into(),
            detail: "refused".into(),
        };
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.to_string().contains("h:1"));
        let e = Error::DigestMismatch {
            host: "h".into(),
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
            size: 3,
        };
        assert!(e.to_string().contains("sha256:aa") && e.to_string().contains("sha256:bb"));

        // Several hosts failed: the first failure other than NotFound gives the code, and the
        // message names every host.
        let not_found = |host: &str| Error::Registry {
            code: Code::NotFound,
            host: host.into(),
            what: "manifest x".into(),
            detail: "not found".into(),
        };
        let all = |failures: Vec<(String, Error)>| Error::AllHostsFailed {
            registry: "r.io".into(),
            what: "manifest r.io/x:1".into(),
            failures,
        };
        let e = all(vec![
            ("http://a/v2".into(), not_found("a")),
            (
                "http://b/v2".into(),
                Error::Unreachable {
                    host: "b".into(),
                    detail: "refused".into(),
                },
            ),
            ("https://r.io/v2".into(), not_found("r.io")),
        ]);
        assert_eq!(e.code(), Code::Unavailable);
        let msg = e.to_string();
        for host in ["http://a/v2: ", "http://b/v2: ", "https://r.io/v2: "] {
            assert!(msg.contains(host), "{msg}");
        }
        let e = all(vec![
            ("http://a/v2".into(), not_found("a")),
            ("https://r.io/v2".into(), not_found("r.io")),
        ]);
        assert_eq!(e.code(), Code::NotFound);
    }
}
