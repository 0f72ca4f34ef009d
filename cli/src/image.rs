//! Images as the client sees them: records pointing at an index or manifest in the content
//! store, resolved for our platform down to a config and a list of layers (the formats
//! themselves live in [`protocol::image`]).

use anyhow::{Context, Result, anyhow, bail};
use protocol::grpc::containerd::services::content::v1 as content;
use protocol::grpc::containerd::services::images::v1 as images;
pub use protocol::image::*;
use serde::Deserialize;

use crate::client::{Client, rpc_err};

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
