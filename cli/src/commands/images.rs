//! `corral images ls|rm|inspect|import|export`.

use anyhow::{Context, Result};
use protocol::grpc::containerd::services::images::v1 as images;
use serde_json::json;

use crate::client::{Client, format_ts, rpc_err};
use crate::image::{self, Desc};
use crate::output::{self, human_size};
use crate::{ImagesCmd, Output};

pub async fn run(client: &Client, cmd: ImagesCmd, out: Output) -> Result<()> {
    match cmd {
        ImagesCmd::Ls => ls(client, out).await,
        ImagesCmd::Rm { names } => {
            for name in names {
                client
                    .images()
                    .delete(client.req(images::DeleteImageRequest {
                        name: name.clone(),
                        sync: false,
                    }))
                    .await
                    .map_err(rpc_err)
                    .with_context(|| format!("cannot remove image {name}"))?;
                println!("{name}");
            }
            Ok(())
        }
        ImagesCmd::Inspect { name } => inspect(client, &name).await,
        ImagesCmd::Import { file } => {
            let names = crate::import::import(client, &file)
                .await
                .with_context(|| format!("cannot import {}", file.display()))?;
            for n in names {
                println!("{n}");
            }
            Ok(())
        }
        ImagesCmd::Export { file, name } => crate::export::export(client, &file, &name)
            .await
            .with_context(|| format!("cannot export {name}")),
    }
}

async fn ls(client: &Client, out: Output) -> Result<()> {
    let mut list = client
        .images()
        .list(client.req(images::ListImagesRequest { filters: vec![] }))
        .await
        .map_err(rpc_err)
        .context("cannot list images")?
        .into_inner()
        .images;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for img in list {
        let target = img.target.as_ref().map(Desc::from_proto);
        let digest = target
            .as_ref()
            .map(|t| t.digest.clone())
            .unwrap_or_default();
        // Size and platform need the manifest; an image whose blobs are missing still lists.
        let resolved = match &target {
            Some(t) => image::resolve_target(client, &img.name, t.clone())
                .await
                .ok(),
            None => None,
        };
        let size = resolved.as_ref().map(|r| r.size());
        let platform = resolved
            .as_ref()
            .map(|r| format!("{}/{}", r.config.os, r.config.architecture));
        rows.push(vec![
            img.name.clone(),
            digest.clone(),
            size.map(human_size).unwrap_or_else(|| "-".into()),
            platform.clone().unwrap_or_else(|| "-".into()),
        ]);
        js.push(json!({
            "name": img.name,
            "digest": digest,
            "media_type": target.as_ref().map(|t| t.media_type.clone()),
            "size": size,
            "platform": platform,
            "labels": img.labels,
            "created_at": format_ts(img.created_at.as_ref()),
        }));
    }
    output::print(
        out,
        &["NAME", "DIGEST", "SIZE", "PLATFORM"],
        &rows,
        js.into(),
    );
    Ok(())
}

async fn inspect(client: &Client, name: &str) -> Result<()> {
    let img = image::get_image(client, name)
        .await
        .with_context(|| format!("image {name}"))?;
    let r = image::resolve(client, name).await?;
    let v = json!({
        "name": img.name,
        "labels": img.labels,
        "created_at": format_ts(img.created_at.as_ref()),
        "updated_at": format_ts(img.updated_at.as_ref()),
        "target": r.target,
        "manifest_descriptor": r.manifest_desc,
        "manifest": r.manifest,
        "config": r.config,
        "chain_ids": r.chain_ids(),
        "size": r.size(),
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
