//! The ImageService side of corral-cri, and image lookups for pods and containers.
//!
//! Images live in corrald (namespace `k8s.io`): an image record per name, pointing at an index
//! or manifest in the content store. One CRI image is what those records resolve to for our
//! platform, identified, as in containerd's CRI, by its config digest:
//!
//! ```text
//! records  docker.io/library/busybox:1.36 ─┐
//!          docker.io/library/busybox:latest ┼─▶ manifest ─▶ config sha256:ab.. = Image.id
//!          docker.io/library/busybox@sha256:.. ┘             └─ rootfs.diff_ids ─▶ chain ID (the
//!                                                               snapshot containers start on)
//! ```
//!
//! Resolving reads blobs from corrald's content store; the result is cached by the record's
//! target digest, which is immutable, so a cache entry is never stale (a retagged name points
//! at another target). Pulls go through corrald's Transfer service, which also unpacks.
//!
//! The list of images (what ListImages, ImageStatus and every lookup by reference read) is
//! kept between calls, as containerd's CRI keeps its image store, while corrald's image events
//! reach us ([`crate::monitor`] follows them): it is read again after any `/images/*` event in
//! our namespace, after a pull or removal of ours, and whenever the event stream (re)starts,
//! and is not kept at all while the stream is down. A list read while something changed is
//! answered but not kept (a generation counter tells). So a change made by another client of
//! corrald (`ctr -n k8s.io images import`) shows as soon as its event arrives, and one of ours
//! at once.

mod etc;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::grpc::containerd::services::images::v1 as images;
use protocol::grpc::corral::services::transfer::v1 as transfer;
use protocol::grpc::runtime::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image as CriImage, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use protocol::image::{Desc, Index, Manifest, chain_ids, host_platform, is_index, pick_manifest};

use crate::corrald::{Corrald, now_nanos};
use crate::error::{Context, Error, Result};
use crate::oci::{ImageConfig, ImageConfigBlob};
use crate::spec::ImageEtc;

/// A local image as pods and containers use it.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// The corrald image record's name that matched (a normalised reference).
    pub name: String,
    /// The image id: the config's digest (`sha256:...`).
    pub id: String,
    /// Every name of this image (`repo:tag`) and its digests (`repo@sha256:...`).
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The top layer's chain ID: the committed snapshot containers are prepared on.
    pub chain_id: String,
    pub config: ImageConfig,
    /// Compressed size of config and layers.
    pub size: u64,
}

/// Registry credentials for a pull (from the CRI AuthConfig).
#[derive(Clone, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub identity_token: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("identity_token", &"<redacted>")
            .finish()
    }
}

impl Auth {
    /// From kubelet's AuthConfig: `auth` is base64 of `user:password`; a registry token is
    /// sent as is, like an identity token.
    pub fn from_cri(a: &AuthConfig) -> Result<Auth> {
        let mut auth = Auth {
            username: a.username.clone(),
            password: a.password.clone(),
            identity_token: if a.identity_token.is_empty() {
                a.registry_token.clone()
            } else {
                a.identity_token.clone()
            },
        };
        if !a.auth.is_empty() {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .map_err(|e| Error::invalid(format!("auth config: `auth` is not base64: {e}")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| Error::invalid("auth config: `auth` is not UTF-8"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| Error::invalid("auth config: `auth` is not user:password"))?;
            auth.username = user.to_string();
            auth.password = pass.to_string();
        }
        Ok(auth)
    }
}

/// What one image record resolves to (cached by target digest).
#[derive(Clone)]
struct Resolved {
    id: String,
    chain_id: String,
    config: ImageConfig,
    size: u64,
}

pub struct Images {
    corrald: Corrald,
    resolved: Mutex<HashMap<String, Resolved>>,
    etc: Mutex<HashMap<String, Arc<ImageEtc>>>,
    /// The list last read, with the generation it was read in (see the module doc).
    listed: Mutex<Option<(u64, Arc<Vec<Image>>)>>,
    /// Moves on whenever the images may have changed.
    generation: AtomicU64,
    /// Whether corrald's image events reach us: only then is a list kept.
    following: AtomicBool,
}

impl Images {
    pub fn new(corrald: Corrald) -> Images {
        Images {
            corrald,
            resolved: Mutex::new(HashMap::new()),
            etc: Mutex::new(HashMap::new()),
            listed: Mutex::new(None),
            generation: AtomicU64::new(0),
            following: AtomicBool::new(false),
        }
    }

    /// The images may have changed: the next lookup reads them again.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether corrald's image events reach us (the event stream is up); either way, what was
    /// read before may be out of date.
    pub fn following_events(&self, yes: bool) {
        self.following.store(yes, Ordering::SeqCst);
        self.changed();
    }

    /// Every image, grouped by id, names sorted: the kept list if nothing may have changed since
    /// it was read, else read from corrald.
    async fn all(&self) -> Result<Arc<Vec<Image>>> {
        let generation = self.generation.load(Ordering::SeqCst);
        if self.following.load(Ordering::SeqCst)
            && let Some((g, list)) = &*self.listed.lock().unwrap()
            && *g == generation
        {
            return Ok(list.clone());
        }
        let list = Arc::new(self.read_all().await?);
        // Kept only if no change was signalled while reading (nor the stream lost).
        if self.following.load(Ordering::SeqCst)
            && self.generation.load(Ordering::SeqCst) == generation
        {
            *self.listed.lock().unwrap() = Some((generation, list.clone()));
        }
        Ok(list)
    }

    /// Every image as corrald has them now.
    async fn read_all(&self) -> Result<Vec<Image>> {
        let records = self
            .corrald
            .client()
            .images()
            .list(
                self.corrald
                    .client()
                    .req(images::ListImagesRequest { filters: vec![] }),
            )
            .await
            .context("list images")?
            .into_inner()
            .images;
        let mut by_id: BTreeMap<String, Image> = BTreeMap::new();
        for rec in records {
            let Some(target) = rec.target.as_ref() else {
                continue;
            };
            let r = match self.resolve(&rec.name, &Desc::from_proto(target)).await {
                Ok(r) => r,
                Err(e) => {
                    // An image for another platform or with missing blobs is not one we can
                    // run; it must not hide the others.
                    log::debug!("image {}: {e}", rec.name);
                    continue;
                }
            };
            let img = by_id.entry(r.id.clone()).or_insert_with(|| Image {
                name: rec.name.clone(),
                id: r.id.clone(),
                chain_id: r.chain_id.clone(),
                config: r.config.clone(),
                size: r.size,
                ..Default::default()
            });
            if rec.name == r.id {
                continue;
            }
            let (repo, digest_ref) = match rec.name.split_once('@') {
                Some((repo, _)) => (repo.to_string(), true),
                None => (repo_of(&rec.name).to_string(), false),
            };
            if digest_ref {
                push_unique(&mut img.repo_digests, rec.name.clone());
            } else {
                push_unique(&mut img.repo_tags, rec.name.clone());
                push_unique(&mut img.repo_digests, format!("{repo}@{}", target.digest));
            }
        }
        Ok(by_id
            .into_values()
            .map(|mut i| {
                i.repo_tags.sort();
                i.repo_digests.sort();
                if let Some(t) = i.repo_tags.first().or(i.repo_digests.first()) {
                    i.name = t.clone();
                }
                i
            })
            .collect())
    }

    async fn resolve(&self, name: &str, target: &Desc) -> Result<Resolved> {
        if let Some(r) = self.resolved.lock().unwrap().get(&target.digest) {
            return Ok(r.clone());
        }
        let platform = host_platform();
        let mut desc = target.clone();
        for _ in 0..4 {
            if !is_index(&desc.media_type) {
                break;
            }
            let index: Index = self.read_json(&desc.digest).await?;
            desc = pick_manifest(&index, &platform)
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "image {name} has no manifest for {}/{}",
                        platform.os, platform.architecture
                    ))
                })?
                .clone();
        }
        let manifest: Manifest = self.read_json(&desc.digest).await?;
        let blob: ImageConfigBlob = self.read_json(&manifest.config.digest).await?;
        if blob.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid(format!(
                "image {name}: its config lists {} layers, its manifest {}",
                blob.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<i64>();
        let r = Resolved {
            id: manifest.config.digest.clone(),
            chain_id: chain_ids(&blob.rootfs.diff_ids)
                .pop()
                .ok_or_else(|| Error::invalid(format!("image {name} has no layers")))?,
            config: blob.config,
            size: size.max(1) as u64,
        };
        self.resolved
            .lock()
            .unwrap()
            .insert(target.digest.clone(), r.clone());
        Ok(r)
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, digest: &str) -> Result<T> {
        use protocol::grpc::containerd::services::content::v1::ReadContentRequest;
        let client = self.corrald.client();
        let mut stream = client
            .content()
            .read(client.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .with_context(|| format!("read blob {digest}"))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .with_context(|| format!("read blob {digest}"))?
        {
            data.extend_from_slice(&chunk.data);
            if data.len() > 4 << 20 {
                return Err(Error::invalid(format!("blob {digest} is too big for JSON")));
            }
        }
        serde_json::from_slice(&data)
            .map_err(|e| Error::invalid(format!("blob {digest} is not valid JSON: {e}")))
    }

    /// The local image a reference (name, short name, id, id prefix or digest reference)
    /// names; None if there is none.
    pub async fn get(&self, reference: &str) -> Result<Option<Image>> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(Error::invalid("the image reference is empty"));
        }
        let all = self.all().await?;
        Ok(find(&all, reference))
    }

    /// The local image, pulled first if missing.
    pub async fn ensure(&self, reference: &str, auth: Option<&Auth>) -> Result<Image> {
        if let Some(i) = self.get(reference).await? {
            return Ok(i);
        }
        self.pull(reference, auth).await?;
        self.get(reference).await?.ok_or_else(|| {
            Error::internal(format!("image {reference} was pulled but cannot be found"))
        })
    }

    async fn pull(&self, reference: &str, auth: Option<&Auth>) -> Result<String> {
        if looks_like_id(reference) {
            return Err(Error::not_found(format!(
                "image {reference} not found (an image id cannot be pulled)"
            )));
        }
        // Whatever the outcome, records may have been written.
        let _changed = Changed(self);
        let client = self.corrald.client();
        let req = transfer::PullRequest {
            reference: reference.to_string(),
            credentials: auth.map(|a| transfer::Credentials {
                username: a.username.clone(),
                password: a.password.clone(),
                identity_token: a.identity_token.clone(),
            }),
            snapshotter: self.corrald.snapshotter().to_string(),
            ..Default::default()
        };
        let mut stream = client
            .transfer()
            .pull(client.req(req))
            .await
            .with_context(|| format!("pull image {reference}"))?
            .into_inner();
        let mut name = String::new();
        while let Some(p) = stream
            .message()
            .await
            .with_context(|| format!("pull image {reference}"))?
        {
            if let Some(r) = p.result {
                name = r.name;
            }
        }
        if name.is_empty() {
            return Err(Error::internal(format!(
                "pull of {reference} ended without a result"
            )));
        }
        Ok(name)
    }

    pub async fn list_images(&self, r: ListImagesRequest) -> Result<ListImagesResponse> {
        let wanted = r
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let all = self.all().await?;
        let images = match wanted {
            Some(w) => find(&all, &w).iter().map(to_cri).collect(),
            None => all.iter().map(to_cri).collect(),
        };
        Ok(ListImagesResponse { images })
    }

    pub async fn image_status(&self, r: ImageStatusRequest) -> Result<ImageStatusResponse> {
        let reference = spec_ref(r.image.as_ref())?;
        let Some(img) = self.get(&reference).await? else {
            // Not there is an answer, not an error.
            return Ok(ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if r.verbose {
            let v = serde_json::json!({
                "imageName": img.name,
                "chainID": img.chain_id,
                "imageSpec": { "config": img.config },
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(ImageStatusResponse {
            image: Some(to_cri(&img)),
            info,
        })
    }

    pub async fn pull_image(&self, r: PullImageRequest) -> Result<PullImageResponse> {
        let reference = spec_ref(r.image.as_ref())?;
        let auth = r.auth.as_ref().map(Auth::from_cri).transpose()?;
        let name = self.pull(&reference, auth.as_ref()).await?;
        let img = self
            .get(&name)
            .await?
            .ok_or_else(|| Error::internal(format!("image {name} was pulled but is not there")))?;
        Ok(PullImageResponse { image_ref: img.id })
    }

    /// Removes every record of the image the reference names; an image that is not there is
    /// removed already.
    pub async fn remove_image(&self, r: RemoveImageRequest) -> Result<RemoveImageResponse> {
        let reference = spec_ref(r.image.as_ref())?;
        let Some(img) = self.get(&reference).await? else {
            return Ok(RemoveImageResponse {});
        };
        // Whatever the outcome, records may have been deleted.
        let _changed = Changed(self);
        let client = self.corrald.client();
        let records = client
            .images()
            .list(client.req(images::ListImagesRequest { filters: vec![] }))
            .await
            .context("list images")?
            .into_inner()
            .images;
        for rec in records {
            let Some(target) = rec.target.as_ref() else {
                continue;
            };
            let same = match self.resolve(&rec.name, &Desc::from_proto(target)).await {
                Ok(r) => r.id == img.id,
                Err(_) => false,
            };
            if !same {
                continue;
            }
            let res = client
                .images()
                .delete(client.req(images::DeleteImageRequest {
                    name: rec.name.clone(),
                    sync: false,
                }))
                .await;
            match res {
                Ok(_) => {}
                Err(s) if s.code() == protocol::grpc::tonic::Code::NotFound => {}
                Err(s) => return Err(Error::from(s).context(format!("remove image {}", rec.name))),
            }
        }
        self.etc.lock().unwrap().remove(&img.id);
        Ok(RemoveImageResponse {})
    }

    /// Where image layers live (corrald's snapshotter directory) and what they use.
    pub async fn image_fs_info(&self, _: ImageFsInfoRequest) -> Result<ImageFsInfoResponse> {
        let dir = self.snapshotter_dir().await?;
        let walk = dir.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || etc::usage(&walk))
            .await
            .map_err(|e| Error::internal(format!("usage of {}: {e}", dir.display())))?;
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: dir.display().to_string(),
                }),
                used_bytes: Some(UInt64Value { value: bytes }),
                inodes_used: Some(UInt64Value { value: inodes }),
            }],
            container_filesystems: vec![],
        })
    }

    /// corrald's root (exported by its runtime plugin) joined with the snapshotter's directory.
    pub async fn snapshotter_dir(&self) -> Result<std::path::PathBuf> {
        use protocol::grpc::containerd::services::introspection::v1::PluginsRequest;
        let client = self.corrald.client();
        let plugins = client
            .introspection()
            .plugins(client.req(PluginsRequest {
                filters: vec!["type==io.containerd.runtime.v2".to_string()],
            }))
            .await
            .context("ask corrald for its root")?
            .into_inner()
            .plugins;
        let root = plugins
            .iter()
            .find_map(|p| p.exports.get("root"))
            .ok_or_else(|| Error::internal("corrald does not export its root directory"))?;
        Ok(std::path::Path::new(root).join(format!(
            "io.containerd.snapshotter.v1.{}",
            self.corrald.snapshotter()
        )))
    }

    /// /etc/passwd and /etc/group of an image (cached per image).
    pub async fn etc(&self, image: &Image) -> Result<Arc<ImageEtc>> {
        if let Some(e) = self.etc.lock().unwrap().get(&image.id) {
            return Ok(e.clone());
        }
        let read = etc::read(&self.corrald, &image.chain_id)
            .await
            .map_err(|e| e.context(format!("read /etc of image {}", image.name)))?;
        let read = Arc::new(read);
        self.etc
            .lock()
            .unwrap()
            .insert(image.id.clone(), read.clone());
        Ok(read)
    }
}

/// Signals [`Images::changed`] when dropped: at the end of a call that may have changed the
/// records, however it ends.
struct Changed<'a>(&'a Images);

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.0.changed();
    }
}

fn spec_ref(spec: Option<&ImageSpec>) -> Result<String> {
    spec.map(|s| s.image.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid("no image given (ImageSpec.image is empty)"))
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// `registry/repo` of `registry/repo:tag`.
fn repo_of(name: &str) -> &str {
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => &name[..slash + i],
        None => name,
    }
}

fn looks_like_id(reference: &str) -> bool {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The image a reference names: an id (`sha256:<hex>`, or a unique hex prefix), a digest
/// reference, or a name (normalised Docker Hub style).
fn find(all: &[Image], reference: &str) -> Option<Image> {
    let full = protocol::image::normalize(reference);
    if let Some(i) = all.iter().find(|i| {
        i.id == reference
            || i.repo_tags.iter().any(|t| *t == full || t == reference)
            || i.repo_digests.iter().any(|d| *d == full || d == reference)
    }) {
        return Some(i.clone());
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() >= 3 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut hits = all
            .iter()
            .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hex));
        if let (Some(one), None) = (hits.next(), hits.next()) {
            return Some(one.clone());
        }
    }
    None
}

fn to_cri(i: &Image) -> CriImage {
    let (uid, username) = user_of(&i.config.user);
    CriImage {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The image's USER as CRI reports it: a numeric user as uid, a name as username.
fn user_of(user: &str) -> (Option<i64>, String) {
    let u = user.split(':').next().unwrap_or("");
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(n) => (Some(n), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, tags: &[&str]) -> Image {
        Image {
            id: id.to_string(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![format!(
                "docker.io/library/busybox@sha256:{}",
                "d".repeat(64)
            )],
            ..Default::default()
        }
    }

    #[test]
    fn references_find_images_by_name_id_prefix_and_digest() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:ab{}", "b".repeat(62));
        let all = vec![
            img(&a, &["docker.io/library/busybox:latest"]),
            img(&b, &["registry.k8s.io/pause:3.10"]),
        ];
        assert_eq!(find(&all, "busybox").unwrap().id, a);
        assert_eq!(find(&all, "busybox:latest").unwrap().id, a);
        assert_eq!(find(&all, "registry.k8s.io/pause:3.10").unwrap().id, b);
        assert_eq!(find(&all, &b).unwrap().id, b);
        assert_eq!(find(&all, "abb").unwrap().id, b);
        assert!(find(&all, "a").is_none(), "too short a prefix");
        assert!(find(&all, "ab").is_none(), "too short a prefix");
        assert!(find(&all, "busybox:1.0").is_none());
        let by_digest = format!("busybox@sha256:{}", "d".repeat(64));
        assert!(find(&all, &by_digest).is_some());
    }

    #[test]
    fn users_and_repos() {
        assert_eq!(user_of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_of("nobody"), (None, "nobody".to_string()));
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(repo_of("localhost:5000/a/b:tag"), "localhost:5000/a/b");
        assert_eq!(repo_of("localhost:5000/a/b"), "localhost:5000/a/b");
        assert!(looks_like_id(&"f".repeat(64)));
        assert!(!looks_like_id("busybox"));
    }

    #[test]
    fn auth_from_kubelet() {
        use base64::Engine;
        let a = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("me:secret"),
            ..Default::default()
        };
        let got = Auth::from_cri(&a).unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str()),
            ("me", "secret")
        );
        assert!(!format!("{got:?}").contains("secret"));
        let bad = AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        };
        assert!(Auth::from_cri(&bad).unwrap_err().message.contains("base64"));
    }
}
