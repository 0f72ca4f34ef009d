//! OCI and Docker image formats as clients read them from the content store: descriptors,
//! indexes, manifests, configs, platform choice, containerd's chain IDs and Docker Hub style
//! reference normalisation. Pure data and functions, shared by the cli and corral-cri.
//!
//! ```text
//! image record ──► index ──(platform)──► manifest ──► config (Entrypoint, Cmd, Env, rootfs.diff_ids)
//!                                                └──► layers ──unpack──► snapshots named chainID(0..n)
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

#[cfg(feature = "grpc")]
impl Desc {
    pub fn to_proto(&self) -> crate::grpc::containerd::types::Descriptor {
        crate::grpc::containerd::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone(),
        }
    }

    pub fn from_proto(d: &crate::grpc::containerd::types::Descriptor) -> Desc {
        Desc {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            annotations: d.annotations.clone(),
            platform: None,
        }
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

/// Whether `first`, the part of a reference's name before its first `/`, is a registry host
/// rather than a repository component: docker/distribution's `splitDockerDomain` rule. It has
/// a `.` or a `:`, is `localhost`, or has upper-case letters (repository names are lower case).
pub fn names_a_host(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// Docker Hub style normalisation, as the daemon's pull does it: `busybox` →
/// `docker.io/library/busybox:latest`, `me/app` → `docker.io/me/app:latest`.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let has_domain = name
        .split_once('/')
        .is_some_and(|(first, _)| names_a_host(first));
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
        assert_eq!(
            normalize("UPPER/case"),
            "UPPER/case:latest",
            "a host, as in docker"
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
