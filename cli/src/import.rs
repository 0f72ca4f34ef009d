//! `corral images import FILE`: an OCI image layout tar (`index.json` + `blobs/sha256/…`, what
//! `ctr images export` and `docker save` ≥ 25 write) or a classic `docker save` tar
//! (`manifest.json` + `<id>/layer.tar` + `<id>.json`), as ctr imports them:
//!
//! 1. under a lease, every file of the tar is streamed into the content store (one pass; a
//!    reader thread feeds the async side, so a big layer is never held in memory);
//! 2. a docker archive gets a Docker v2 manifest made up for it (uncompressed layers);
//! 3. gc labels go on the index (`gc.ref.content.m.<i>`) and manifests (`config`, `l.<i>`);
//! 4. each image is unpacked into the snapshotter (chain IDs, `containerd.io/uncompressed`,
//!    `gc.ref.snapshot.overlayfs` on the config) by corrald (Transfer/Unpack, layers extracted
//!    concurrently);
//! 5. one image record per named entry (`io.containerd.image.name`, else the OCI ref name;
//!    docker: `RepoTags`), created or updated, and the lease is dropped. (ctr creates the
//!    record before it unpacks; a failed unpack then leaves an image that is not usable.)

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use protocol::grpc::containerd::services::images::v1 as images;
use protocol::grpc::prost::bytes::Bytes;
use protocol::grpc::prost_types::FieldMask;
use protocol::grpc::tonic::Code;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::client::{Client, code_of, nanos, rpc_err};
use crate::image::{self, Desc, Index, Manifest};
use crate::store::{self, BlobWriter, CHUNK};

/// Files kept in memory besides being stored: the layout's own metadata and small JSON.
const SMALL: u64 = 4 << 20;

enum Msg {
    Start {
        name: String,
        size: u64,
    },
    Chunk(Bytes),
    End {
        digest: String,
        small: Option<Vec<u8>>,
    },
    Failed(String),
}

#[derive(Debug, Clone)]
struct Stored {
    digest: String,
    size: i64,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn normal(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

fn read_tar(path: &Path, tx: mpsc::Sender<Msg>) {
    let run = || -> Result<()> {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut ar = tar::Archive::new(std::io::BufReader::new(f));
        for entry in ar.entries().context("not a tar archive")? {
            let mut entry = entry.context("bad tar entry")?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = normal(&entry.path()?.to_string_lossy());
            let size = entry.size();
            if tx.blocking_send(Msg::Start { name, size }).is_err() {
                return Ok(());
            }
            let mut hash = Sha256::new();
            let mut small = (size <= SMALL).then(Vec::new);
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = entry.read(&mut buf).context("cannot read the archive")?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hash.update(&buf);
                if let Some(s) = &mut small {
                    s.extend_from_slice(&buf);
                }
                if tx.blocking_send(Msg::Chunk(Bytes::from(buf))).is_err() {
                    return Ok(());
                }
            }
            let digest = format!("sha256:{}", hex::encode(hash.finalize()));
            if tx.blocking_send(Msg::End { digest, small }).is_err() {
                return Ok(());
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        let _ = tx.blocking_send(Msg::Failed(format!("{e:#}")));
    }
}

/// Imports the archive at `path`; returns the names of the images created.
pub async fn import(client: &Client, path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        bail!("{} is not a file", path.display());
    }
    let leased = client.with_lease(Duration::from_secs(24 * 3600)).await?;
    let result = import_leased(&leased, path).await;
    let end = leased.end_lease().await;
    let names = result?;
    end?;
    Ok(names)
}

async fn import_leased(client: &Client, path: &Path) -> Result<Vec<String>> {
    let (tx, mut rx) = mpsc::channel(8);
    let p = path.to_path_buf();
    let reader = std::thread::spawn(move || read_tar(&p, tx));
    let mut stored: HashMap<String, Stored> = HashMap::new();
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut current: Option<(String, u64, Option<BlobWriter>)> = None;
    let import_id = nanos();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Start { name, size } => {
                // A blob of an OCI layout names its digest: skip what the store has.
                let known = name
                    .strip_prefix("blobs/sha256/")
                    .map(|h| format!("sha256:{h}"));
                let skip = match &known {
                    Some(d) => store::exists(client, d).await?,
                    None => false,
                };
                let writer = if skip || is_layout_meta(&name) {
                    None
                } else {
                    let r = match &known {
                        Some(d) => format!("tar-blobs/{}", d.replace(':', "/")),
                        None => format!("tar-{import_id}/{name}"),
                    };
                    Some(BlobWriter::open(client, &r).await?)
                };
                current = Some((name, size, writer));
            }
            Msg::Chunk(data) => {
                if let Some((_, _, Some(w))) = &mut current {
                    w.write(data).await?;
                }
            }
            Msg::End {
                digest,
                small: data,
            } => {
                let Some((name, size, writer)) = current.take() else {
                    continue;
                };
                if let Some(known) = name.strip_prefix("blobs/sha256/")
                    && digest != format!("sha256:{known}")
                {
                    bail!("{name} in the archive has digest {digest}: the archive is corrupt");
                }
                if let Some(w) = writer {
                    match w.commit(Some(&digest)).await {
                        Ok(_) => {}
                        Err(e) if code_of(&e) == Some(Code::AlreadyExists) => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot store {name}")),
                    }
                }
                stored.insert(
                    name.clone(),
                    Stored {
                        digest,
                        size: size as i64,
                    },
                );
                if let Some(d) = data {
                    small.insert(name, d);
                }
            }
            Msg::Failed(e) => bail!("cannot read {}: {e}", path.display()),
        }
    }
    let _ = reader.join();

    let mut targets: Vec<(String, Desc)> = Vec::new();
    if let Some(index) = small.get("index.json") {
        let index: Index = serde_json::from_slice(index).context("cannot parse index.json")?;
        for m in &index.manifests {
            let name = m
                .annotations
                .get("io.containerd.image.name")
                .cloned()
                .or_else(|| {
                    m.annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|n| n.contains('/') || n.contains(':'))
                        .map(|n| image::normalize(n))
                });
            let Some(name) = name else {
                eprintln!(
                    "corral: skipping unnamed manifest {} of the archive",
                    m.digest
                );
                continue;
            };
            let mut target = m.clone();
            target.platform = None;
            target.annotations.clear();
            targets.push((name, target));
        }
    } else if let Some(manifest) = small.get("manifest.json") {
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(manifest).context("cannot parse manifest.json")?;
        for e in entries {
            let config = stored
                .get(&normal(&e.config))
                .ok_or_else(|| anyhow!("the archive lacks {}", e.config))?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let s = stored
                    .get(&normal(l))
                    .ok_or_else(|| anyhow!("the archive lacks {l}"))?;
                layers.push(Desc {
                    media_type: image::MEDIA_DOCKER_LAYER.into(),
                    digest: s.digest.clone(),
                    size: s.size,
                    annotations: HashMap::new(),
                    platform: None,
                });
            }
            let m = Manifest {
                schema_version: 2,
                media_type: image::MEDIA_DOCKER_MANIFEST.into(),
                config: Desc {
                    media_type: image::MEDIA_DOCKER_CONFIG.into(),
                    digest: config.digest.clone(),
                    size: config.size,
                    annotations: HashMap::new(),
                    platform: None,
                },
                layers,
            };
            let data = serde_json::to_vec(&m)?;
            let digest = image::sha256_digest(&data);
            store::write_bytes(client, &format!("tar-manifest-{import_id}"), &digest, &data)
                .await?;
            let desc = Desc {
                media_type: image::MEDIA_DOCKER_MANIFEST.into(),
                digest,
                size: data.len() as i64,
                annotations: HashMap::new(),
                platform: None,
            };
            for tag in e.repo_tags.unwrap_or_default() {
                targets.push((image::normalize(&tag), desc.clone()));
            }
        }
    } else {
        bail!(
            "{} is neither an OCI layout (no index.json) nor a docker archive (no manifest.json)",
            path.display()
        );
    }
    if targets.is_empty() {
        bail!("{} names no image", path.display());
    }

    let mut names = Vec::new();
    for (name, target) in targets {
        label_tree(client, &target).await?;
        // Unpacked before the image record exists (as corrald's own pull does), so that an
        // unpack that fails, e.g. on a full disk, leaves no image behind that looks usable
        // but is not; the lease holds the content meanwhile. (ctr creates the record first.)
        let resolved = image::resolve_target(client, &name, target.clone()).await?;
        store::unpack_image(client, &resolved)
            .await
            .with_context(|| format!("cannot unpack {name}"))?;
        put_image(client, &name, &target).await?;
        names.push(name);
    }
    Ok(names)
}

fn is_layout_meta(name: &str) -> bool {
    matches!(
        name,
        "index.json" | "oci-layout" | "manifest.json" | "repositories"
    )
}

/// gc labels from the target down: index → manifests, manifest → config and layers.
async fn label_tree(client: &Client, target: &Desc) -> Result<()> {
    if image::is_index(&target.media_type) {
        let index: Index = image::read_json(client, target).await?;
        let mut labels = HashMap::new();
        for (i, m) in index.manifests.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.m.{i}"),
                m.digest.clone(),
            );
        }
        store::set_labels(client, &target.digest, labels).await?;
        for m in &index.manifests {
            if store::exists(client, &m.digest).await? {
                Box::pin(label_tree(client, m)).await?;
            }
        }
    } else {
        let m: Manifest = image::read_json(client, target).await?;
        store::set_labels(client, &target.digest, store::manifest_labels(&m)).await?;
    }
    Ok(())
}

/// Creates the image record, or points an existing one at the new target.
pub async fn put_image(client: &Client, name: &str, target: &Desc) -> Result<()> {
    let img = images::Image {
        name: name.into(),
        target: Some(target.to_proto()),
        ..Default::default()
    };
    match client
        .images()
        .create(client.req(images::CreateImageRequest {
            image: Some(img.clone()),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            client
                .images()
                .update(client.req(images::UpdateImageRequest {
                    image: Some(img),
                    update_mask: Some(FieldMask {
                        paths: vec!["target".into()],
                    }),
                }))
                .await
                .map_err(rpc_err)
                .with_context(|| format!("cannot update image {name}"))?;
            Ok(())
        }
        Err(s) => Err(rpc_err(s)).with_context(|| format!("cannot create image {name}")),
    }
}
