//! Images as the client sees them: records pointing at an index or manifest in the content
//! store, resolved for our platform down to a config and a list of layers, and the chain IDs
//! naming the committed snapshots that unpacking those layers produces.
//!
//! ```text
//! image record ──► index ──(platform)──► manifest ──► config (Entrypoint, Cmd, Env, rootfs.diff_ids)
//!                                                └──► layers ──unpack──► snapshots named chainID(0..n)
//! ```

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use protocol::grpc::containerd::services::content::v1 as content;
use protocol::grpc::containerd::services::images::v1 as images;
use protocol::grpc::containerd::types::Descriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::{Client, rpc_err};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// An OCI/Docker descriptor as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Desc {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Desc {
    pub fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone(),
        }
    }

    pub fn from_proto(d: &Descriptor) -> Desc {
        Desc {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            annotations: d.annotations.clone(),
            platform: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub manifests: Vec<Desc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Desc,
    pub layers: Vec<Desc>,
}

/// The parts of an image config a container needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: String,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: String,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An image resolved for our platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub target: Desc,
    pub manifest_desc: Desc,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl Resolved {
    /// Chain IDs of the layers, bottom first; the last names the image's top snapshot.
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.config.rootfs.diff_ids)
    }

    /// Compressed size of config and layers (what `images ls` shows).
    pub fn size(&self) -> i64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<i64>()
    }
}

/// containerd's chain IDs: `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The platform this client runs on, in OCI words.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: String::new(),
    }
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Reads a whole blob from the content store.
pub async fn read_blob(client: &Client, digest: &str) -> Result<Vec<u8>> {
    let mut stream = client
        .content()
        .read(client.req(content::ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot read {digest}"))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot read {digest}"))?
    {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

pub async fn read_json<T: for<'de> Deserialize<'de>>(client: &Client, desc: &Desc) -> Result<T> {
    let data = read_blob(client, &desc.digest).await?;
    serde_json::from_slice(&data).with_context(|| format!("cannot parse {}", desc.digest))
}

/// Picks the manifest for `platform` from an index (the first one matching, ignoring the
/// variant when the index gives none).
pub fn pick_manifest<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Desc> {
    index.manifests.iter().find(|m| match &m.platform {
        Some(p) => {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_empty() || p.variant == platform.variant)
        }
        // An index entry without a platform (OCI layouts of a single image) matches anything.
        None => !is_index(&m.media_type),
    })
}

/// From an image's target to the manifest for our platform, its config and layers.
pub async fn resolve_target(client: &Client, name: &str, target: Desc) -> Result<Resolved> {
    let mut desc = target.clone();
    let platform = host_platform();
    // Nested indexes are allowed; a bounded walk down to a manifest.
    for _ in 0..4 {
        if !is_index(&desc.media_type) {
            break;
        }
        let index: Index = read_json(client, &desc).await?;
        desc = pick_manifest(&index, &platform)
            .ok_or_else(|| {
                anyhow!(
                    "image {name} has no manifest for {}/{}",
                    platform.os,
                    platform.architecture
                )
            })?
            .clone();
    }
    if is_index(&desc.media_type) {
        bail!("image {name}: indexes nested too deep");
    }
    let manifest: Manifest = read_json(client, &desc).await?;
    let config: ImageConfig = read_json(client, &manifest.config).await?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        bail!(
            "image {name}: config lists {} diff IDs for {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        );
    }
    Ok(Resolved {
        name: name.into(),
        target,
        manifest_desc: desc,
        manifest,
        config,
    })
}

pub async fn get_image(client: &Client, name: &str) -> Result<images::Image> {
    client
        .images()
        .get(client.req(images::GetImageRequest { name: name.into() }))
        .await
        .map_err(rpc_err)?
        .into_inner()
        .image
        .ok_or_else(|| anyhow!("the daemon returned no image"))
}

pub async fn resolve(client: &Client, name: &str) -> Result<Resolved> {
    let img = get_image(client, name).await?;
    let target = img
        .target
        .as_ref()
        .map(Desc::from_proto)
        .ok_or_else(|| anyhow!("image {name} has no target"))?;
    resolve_target(client, name, target).await
}

/// Docker Hub style normalisation, as the daemon's pull does it: `busybox` →
/// `docker.io/library/busybox:latest`, `me/app` → `docker.io/me/app:latest`.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_digest(b"sha256:a sha256:b"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn references_are_normalised() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize("localhost:5000/x/y"), "localhost:5000/x/y:latest");
        assert_eq!(
            normalize("docker.io/library/busybox:test"),
            "docker.io/library/busybox:test"
        );
        assert_eq!(
            normalize("reg.example/x@sha256:ab"),
            "reg.example/x@sha256:ab"
        );
    }

    #[test]
    fn platform_pick() {
        let index: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1","size":1,
               "platform":{"architecture":"arm64","os":"linux"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2","size":1,
               "platform":{"architecture":"amd64","os":"linux"}}]}"#,
        )
        .unwrap();
        let p = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: String::new(),
        };
        assert_eq!(pick_manifest(&index, &p).unwrap().digest, "sha256:2");
        let p = Platform {
            architecture: "s390x".into(),
            ..p
        };
        assert!(pick_manifest(&index, &p).is_none());
    }
}
