//! `corral images export FILE REF`: an OCI image layout tar of one image — `oci-layout`,
//! `index.json` naming the image (`io.containerd.image.name` and the OCI ref name) and
//! `blobs/sha256/…` for its target and everything below it that is in the content store (an
//! index's manifests for other platforms usually are not, and are left out). Blobs are
//! streamed from the daemon into the tar, never held whole in memory.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use protocol::grpc::containerd::services::content::v1 as content;

use crate::client::{Client, rpc_err};
use crate::image::{self, Desc, Index, Manifest};
use crate::store;

async fn collect(
    client: &Client,
    desc: &Desc,
    out: &mut Vec<Desc>,
    seen: &mut BTreeSet<String>,
) -> Result<()> {
    if !seen.insert(desc.digest.clone()) {
        return Ok(());
    }
    out.push(desc.clone());
    if image::is_index(&desc.media_type) {
        let index: Index = image::read_json(client, desc).await?;
        for m in &index.manifests {
            if store::exists(client, &m.digest).await? {
                Box::pin(collect(client, m, out, seen)).await?;
            }
        }
    } else if image::is_manifest(&desc.media_type) {
        let m: Manifest = image::read_json(client, desc).await?;
        for d in std::iter::once(&m.config).chain(&m.layers) {
            if seen.insert(d.digest.clone()) {
                out.push(d.clone());
            }
        }
    }
    Ok(())
}

fn header(path: &str, size: u64, mode: u32) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

fn pad(w: &mut impl Write, size: u64) -> std::io::Result<()> {
    let rem = (size % 512) as usize;
    if rem != 0 {
        w.write_all(&vec![0u8; 512 - rem])?;
    }
    Ok(())
}

pub async fn export(client: &Client, file: &Path, name: &str) -> Result<()> {
    let img = image::get_image(client, name).await?;
    let target = img
        .target
        .as_ref()
        .map(Desc::from_proto)
        .ok_or_else(|| anyhow!("image {name} has no target"))?;
    let mut blobs = Vec::new();
    collect(client, &target, &mut blobs, &mut BTreeSet::new()).await?;

    let tmp = file.with_extension("partial");
    let f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut entry = target.clone();
    let mut ann = HashMap::new();
    ann.insert("io.containerd.image.name".to_string(), name.to_string());
    let tag = name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'));
    ann.insert(
        "org.opencontainers.image.ref.name".to_string(),
        tag.unwrap_or(name).to_string(),
    );
    entry.annotations = ann;
    let index = Index {
        schema_version: 2,
        media_type: image::MEDIA_OCI_INDEX.into(),
        manifests: vec![entry],
    };
    let index = serde_json::to_vec(&index)?;
    let small =
        |w: &mut std::io::BufWriter<std::fs::File>, path: &str, data: &[u8]| -> Result<()> {
            w.write_all(header(path, data.len() as u64, 0o644)?.as_bytes())?;
            w.write_all(data)?;
            pad(w, data.len() as u64)?;
            Ok(())
        };
    small(&mut w, "oci-layout", layout)?;
    small(&mut w, "index.json", &index)?;
    let mut dirs = tar::Header::new_ustar();
    dirs.set_path("blobs/sha256/")?;
    dirs.set_entry_type(tar::EntryType::Directory);
    dirs.set_mode(0o755);
    dirs.set_size(0);
    dirs.set_mtime(0);
    dirs.set_cksum();
    w.write_all(dirs.as_bytes())?;
    for b in &blobs {
        let hex = b
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("unsupported digest {}", b.digest))?;
        w.write_all(header(&format!("blobs/sha256/{hex}"), b.size as u64, 0o644)?.as_bytes())?;
        let mut stream = client
            .content()
            .read(client.req(content::ReadContentRequest {
                digest: b.digest.clone(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot read {}", b.digest))?
            .into_inner();
        let mut n = 0u64;
        while let Some(chunk) = stream.message().await.map_err(rpc_err)? {
            n += chunk.data.len() as u64;
            w.write_all(&chunk.data)?;
        }
        if n != b.size as u64 {
            anyhow::bail!("{} has {n} bytes, its descriptor says {}", b.digest, b.size);
        }
        pad(&mut w, n)?;
    }
    w.write_all(&[0u8; 1024])?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, file).with_context(|| format!("cannot create {}", file.display()))?;
    Ok(())
}
