//! Writing into corrald's stores the way ctr does: blobs through Content.Write, gc labels
//! through Content.Update, and layers unpacked into committed snapshots named by chain ID.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use protocol::grpc::containerd::services::content::v1::{
    self as content, WriteAction, WriteContentRequest,
};
use protocol::grpc::containerd::services::diff::v1 as diff;
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::corral::services::transfer::v1 as transfer;
use protocol::grpc::prost::bytes::Bytes;
use protocol::grpc::prost_types::FieldMask;
use protocol::grpc::tonic::Code;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, SNAPSHOTTER, code_of, nanos, rpc_err};
use crate::image::Resolved;

/// Chunk size of Content.Write, as ctr sends it.
pub const CHUNK: usize = 1 << 20;

pub async fn exists(client: &Client, digest: &str) -> Result<bool> {
    match client
        .content()
        .info(client.req(content::InfoRequest {
            digest: digest.into(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(rpc_err(s)).with_context(|| format!("cannot stat {digest}")),
    }
}

/// An open Content.Write: feed chunks, then [`BlobWriter::commit`].
pub struct BlobWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    task: tokio::task::JoinHandle<Result<String>>,
    offset: i64,
    r#ref: String,
}

impl BlobWriter {
    /// Starts writing ingest `ref` (any partial ingest of that ref is discarded first, so
    /// the write starts at 0).
    pub async fn open(client: &Client, r#ref: &str) -> Result<BlobWriter> {
        let _ = client
            .content()
            .abort(client.req(content::AbortRequest {
                r#ref: r#ref.into(),
            }))
            .await;
        let (tx, rx) = mpsc::channel(4);
        let c = client.clone();
        let what = r#ref.to_string();
        let task = tokio::spawn(async move {
            let mut resp = c
                .content()
                .write(c.req(ReceiverStream::new(rx)))
                .await
                .map_err(rpc_err)
                .with_context(|| format!("cannot write {what}"))?
                .into_inner();
            let mut digest = String::new();
            while let Some(r) = resp
                .message()
                .await
                .map_err(rpc_err)
                .with_context(|| format!("cannot write {what}"))?
            {
                if r.action == WriteAction::Commit as i32 {
                    digest = r.digest;
                }
            }
            Ok(digest)
        });
        Ok(BlobWriter {
            tx,
            task,
            offset: 0,
            r#ref: r#ref.into(),
        })
    }

    async fn send(&mut self, req: WriteContentRequest) -> Result<()> {
        if self.tx.send(req).await.is_ok() {
            return Ok(());
        }
        // The stream ended early: the task holds the daemon's reason.
        let (idle, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, idle));
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(String::new()) }));
        match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!(
                "cannot write {}: the stream ended early",
                self.r#ref
            )),
        }
    }

    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let n = data.len() as i64;
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset,
            data,
            ..Default::default()
        };
        self.send(req).await?;
        self.offset += n;
        Ok(())
    }

    /// Commits with the expected digest (if known); returns the stored digest.
    pub async fn commit(mut self, expected: Option<&str>) -> Result<String> {
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset,
            total: self.offset,
            expected: expected.unwrap_or_default().into(),
            ..Default::default()
        };
        self.send(req).await?;
        drop(self.tx);
        let digest = self
            .task
            .await
            .map_err(|e| anyhow!("write task failed: {e}"))??;
        if digest.is_empty() {
            bail!(
                "cannot write {}: the daemon did not confirm the commit",
                self.r#ref
            );
        }
        Ok(digest)
    }
}

/// Stores `data` (small blobs: manifests, configs, indexes) unless it is already there.
pub async fn write_bytes(client: &Client, r#ref: &str, digest: &str, data: &[u8]) -> Result<()> {
    if exists(client, digest).await? {
        return Ok(());
    }
    let mut w = BlobWriter::open(client, r#ref).await?;
    for chunk in data.chunks(CHUNK) {
        w.write(Bytes::copy_from_slice(chunk)).await?;
    }
    match w.commit(Some(digest)).await {
        Ok(_) => Ok(()),
        Err(e) if code_of(&e) == Some(Code::AlreadyExists) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets labels on a blob, leaving its other labels alone.
pub async fn set_labels(
    client: &Client,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    client
        .content()
        .update(client.req(content::UpdateRequest {
            info: Some(content::Info {
                digest: digest.into(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths }),
        }))
        .await
        .map_err(rpc_err)
        .with_context(|| format!("cannot label {digest}"))?;
    Ok(())
}

/// The gc labels ctr puts on a manifest: its config and layers are referenced from it.
pub fn manifest_labels(m: &crate::image::Manifest) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        m.config.digest.clone(),
    );
    for (i, layer) in m.layers.iter().enumerate() {
        l.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    l
}

async fn snapshot_exists(client: &Client, key: &str) -> Result<bool> {
    match client
        .snapshots()
        .stat(client.req(snapshots::StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(rpc_err(s)).with_context(|| format!("cannot stat snapshot {key}")),
    }
}

/// Unpacks the image into committed snapshots named by its layers' chain IDs and labels the
/// config with the top one; returns the top chain ID. corrald does it itself (Transfer/Unpack,
/// its layers extracted concurrently); a daemon without that service (containerd) gets the
/// client-side [`unpack`] over the snapshot and diff services, as ctr does it. Call it with a
/// client inside a lease, or with an image record naming `img`, so that what is made is held.
pub async fn unpack_image(client: &Client, img: &Resolved) -> Result<String> {
    let answer = client
        .transfer()
        .unpack(client.req(transfer::UnpackRequest {
            manifest: Some(img.manifest_desc.to_proto()),
            snapshotter: SNAPSHOTTER.into(),
        }))
        .await;
    match answer {
        Ok(r) => Ok(r.into_inner().chain_id),
        // No such service (containerd). A layer format corrald cannot apply is Unimplemented
        // too; the client-side unpack then reports it from Diff.Apply, as it would have.
        Err(s) if s.code() == Code::Unimplemented => unpack(client, img).await,
        Err(s) => Err(rpc_err(s)),
    }
}

/// Unpacks the image's layers into committed snapshots named by their chain IDs (skipping
/// those that exist) and labels the config with the top one, as ctr does. Call it with a
/// client inside a lease so half-made snapshots are collected if we die. Returns the top
/// chain ID.
pub async fn unpack(client: &Client, img: &Resolved) -> Result<String> {
    let chain = img.chain_ids();
    let Some(top) = chain.last().cloned() else {
        bail!("image {} has no layers", img.name);
    };
    for (i, layer) in img.manifest.layers.iter().enumerate() {
        if snapshot_exists(client, &chain[i]).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let key = format!("extract-{}-{i} {}", nanos(), chain[i]);
        let mounts = client
            .snapshots()
            .prepare(client.req(snapshots::PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            }))
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot prepare a snapshot for layer {}", layer.digest))?
            .into_inner()
            .mounts;
        let applied = client
            .diff()
            .apply(client.req(diff::ApplyRequest {
                diff: Some(layer.to_proto()),
                mounts,
                payloads: HashMap::new(),
            }))
            .await
            .map_err(rpc_err)
            .with_context(|| format!("cannot apply layer {}", layer.digest));
        let applied = match applied {
            Ok(a) => a.into_inner().applied,
            Err(e) => {
                remove_snapshot(client, &key).await;
                return Err(e);
            }
        };
        let diff_id = &img.config.rootfs.diff_ids[i];
        if let Some(a) = &applied
            && !a.digest.is_empty()
            && &a.digest != diff_id
        {
            remove_snapshot(client, &key).await;
            bail!(
                "layer {} unpacks to {}, but the image config says {diff_id}",
                layer.digest,
                a.digest
            );
        }
        let commit = client
            .snapshots()
            .commit(client.req(snapshots::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain[i].clone(),
                key: key.clone(),
                labels: HashMap::new(),
            }))
            .await;
        match commit {
            Ok(_) => {}
            // Someone else unpacked the same layer meanwhile: theirs is as good as ours.
            Err(s) if s.code() == Code::AlreadyExists => remove_snapshot(client, &key).await,
            Err(s) => {
                remove_snapshot(client, &key).await;
                return Err(rpc_err(s))
                    .with_context(|| format!("cannot commit snapshot {}", chain[i]));
            }
        }
        let mut l = HashMap::new();
        l.insert("containerd.io/uncompressed".to_string(), diff_id.clone());
        set_labels(client, &layer.digest, l).await?;
    }
    let mut l = HashMap::new();
    l.insert(
        format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
        top.clone(),
    );
    set_labels(client, &img.manifest.config.digest, l).await?;
    Ok(top)
}

pub async fn remove_snapshot(client: &Client, key: &str) {
    let _ = client
        .snapshots()
        .remove(client.req(snapshots::RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        }))
        .await;
}

/// Whether the image's top snapshot exists (the image is unpacked).
pub async fn is_unpacked(client: &Client, img: &Resolved) -> Result<bool> {
    match img.chain_ids().last() {
        Some(top) => snapshot_exists(client, top).await,
        None => Ok(false),
    }
}
