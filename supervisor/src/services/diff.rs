//! containerd.services.diff.v1.Diff: layers onto mounts (Apply) and mounts into layers (Diff).
//!
//! Apply reads the layer blob from the content store (it must be visible in the caller's
//! namespace), decompresses it by media type or magic bytes and unpacks it onto the mounts with
//! OCI whiteout semantics (`snapshotter::apply`); the answer is the uncompressed layer's
//! descriptor, whose digest is the diffID. Diff writes the layer between two mount lists into
//! the content store under the given ref and labels (plus `containerd.io/uncompressed`), records
//! it in the namespace and attaches it to the call's lease. Both run on the blocking pool.

use std::io::Write;

use content::{BlobReader, ContentStore, ContentWriter, Digest, WriterOpts};
use protocol::Code;
use protocol::grpc::containerd::services::diff::v1::diff_server::Diff;
use protocol::grpc::containerd::services::diff::v1::*;
use protocol::grpc::containerd::types::Descriptor;
use snapshotter::apply::Compression;
use tonic::{Request, Response, Status};

use super::snapshots::mount_from_wire;
use super::{Daemon, Shared, blocking_long, db_err, lease, namespace};
use crate::metadata::{Blob, CONTENT, Labels, Time, key};

/// What Apply answers: the uncompressed layer.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// What Diff writes when the request names no media type (containerd's default).
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The label containerd puts on compressed layers: the diffID.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

pub struct DiffService {
    pub daemon: Shared,
}

fn apply_err(e: snapshotter::apply::ApplyError) -> Status {
    let code = e.code();
    if code == Code::Internal {
        log::error!("diff: {e}");
    }
    code.grpc_status(e.to_string())
}

fn store_err(e: content::Error) -> Status {
    e.code().grpc_status(e.to_string())
}

/// Applies the blob `desc` (visible in `ns`) onto `mounts`.
fn apply(
    d: &Daemon,
    ns: &str,
    desc: Descriptor,
    mounts: Vec<snapshotter::Mount>,
) -> Result<Descriptor, Status> {
    let digest = Digest::parse(&desc.digest).map_err(|e| {
        Code::InvalidArgument.grpc_status(format!("layer digest {:?}: {e}", desc.digest))
    })?;
    let not_found =
        || Code::NotFound.grpc_status(format!("content digest {}: not found", desc.digest));
    if d.db
        .get::<Blob>(CONTENT, &key(ns, &[&desc.digest]))
        .map_err(db_err)?
        .is_none()
    {
        return Err(not_found());
    }
    let reader = d.content.reader_at(&digest).map_err(|e| match e.code() {
        // Recorded, but the file is gone.
        Code::NotFound => crate::integrity::missing(d, ns, &digest),
        _ => store_err(e),
    })?;
    let reader = BlobReader::new(reader, 0).map_err(store_err)?;
    let probe = reader.probe();
    let media_type = Some(desc.media_type.as_str()).filter(|m| !m.is_empty());
    let applied =
        snapshotter::apply::apply_to_mounts(&mounts, reader, media_type).map_err(|e| {
            // A layer damaged on disk makes the apply fail in some way; say why.
            if let Some(actual) = probe.damaged() {
                return crate::integrity::damaged(d, &digest, actual);
            }
            let s = apply_err(e);
            Status::new(
                s.code(),
                format!("apply layer {}: {}", desc.digest, s.message()),
            )
        })?;
    Ok(Descriptor {
        media_type: MEDIA_TYPE_LAYER.into(),
        digest: applied.diff_id,
        size: applied.size as i64,
        annotations: Default::default(),
    })
}

/// The compression a Diff media type asks for.
fn compression_of(media_type: &str) -> Result<Compression, Status> {
    match Compression::from_media_type(Some(media_type)) {
        Ok(Some(c)) => Ok(c),
        _ => Err(Code::InvalidArgument
            .grpc_status(format!("unsupported diff media type {media_type:?}"))),
    }
}

/// `std::io::Write` into a content ingest, in the chunks it is given (callers buffer).
struct IngestWrite<'a>(&'a mut dyn ContentWriter);

impl Write for IngestWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A ref for a Diff that names none (containerd makes one up too).
fn fresh_ref() -> String {
    let t = Time::now();
    format!("diff-{}-{}-{}", t.seconds, t.nanos, std::process::id())
}

#[allow(clippy::too_many_arguments)]
fn diff(
    d: &Daemon,
    ns: &str,
    lease: Option<&str>,
    left: Vec<snapshotter::Mount>,
    right: Vec<snapshotter::Mount>,
    media_type: String,
    reference: String,
    mut labels: Labels,
) -> Result<Descriptor, Status> {
    let media_type = if media_type.is_empty() {
        MEDIA_TYPE_LAYER_GZIP.to_string()
    } else {
        media_type
    };
    let compression = compression_of(&media_type)?;
    let reference = if reference.is_empty() {
        fresh_ref()
    } else {
        reference
    };
    // Ingest refs are per namespace in the store (as the content service keeps them).
    let store_ref = format!("{ns}/{reference}");
    let mut w = d
        .content
        .writer(WriterOpts::new(store_ref.clone()))
        .map_err(store_err)?;
    if w.offset() > 0 {
        w.truncate(0).map_err(store_err)?;
    }
    let diffed = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, IngestWrite(w.as_mut()));
        let r = snapshotter::diff::diff_mounts(&left, &right, &mut out, compression);
        let flushed = out.flush();
        let diffed = r.map_err(apply_err)?;
        flushed.map_err(|e| Code::Internal.grpc_status(format!("write diff {reference}: {e}")))?;
        diffed
    };
    labels.insert(LABEL_UNCOMPRESSED.into(), diffed.diff_id.clone());
    let size = diffed.compressed_size;
    let expected = Digest::parse(&diffed.digest).map_err(store_err)?;
    // From the moment the bytes are (or are found) on disk until they are recorded here, hold
    // off deletions that unlink bytes no namespace references.
    let _g = super::content::BLOB_LOCK
        .read()
        .unwrap_or_else(|e| e.into_inner());
    let digest = match w.commit(Some(size), Some(&expected), Labels::new()) {
        Ok(dg) => dg,
        // The same layer is stored already (another namespace or an earlier diff).
        Err(content::Error::AlreadyExists(dg)) => dg,
        Err(e) => {
            let _ = d.content.abort(&store_ref);
            return Err(store_err(e));
        }
    };
    drop(w);
    record_blob(d, ns, lease, &digest.to_string(), size, labels)?;
    Ok(Descriptor {
        media_type,
        digest: digest.to_string(),
        size: size as i64,
        annotations: Default::default(),
    })
}

/// Makes the stored blob visible in `ns` with `labels` (merged over existing ones), attached to
/// the call's lease. Callers hold `BLOB_LOCK` (read).
fn record_blob(
    d: &Daemon,
    ns: &str,
    lease: Option<&str>,
    digest: &str,
    size: u64,
    labels: Labels,
) -> Result<(), Status> {
    let tx = d.db.write().map_err(db_err)?;
    tx.record_blob(ns, digest, size, labels, true)
        .map_err(db_err)?;
    attach_to_lease(&tx, ns, lease, digest)?;
    tx.commit().map_err(db_err)
}

/// Attaches a blob a Diff created to the call's lease (resource type `content`).
fn attach_to_lease(
    tx: &crate::metadata::Tx,
    ns: &str,
    lease: Option<&str>,
    digest: &str,
) -> Result<(), Status> {
    match lease {
        Some(l) => tx
            .add_lease_resource(ns, l, "content", digest)
            .map_err(db_err),
        None => Ok(()),
    }
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Code::InvalidArgument.grpc_status("diff descriptor is required"))?;
        let mounts = r.mounts.into_iter().map(mount_from_wire).collect();
        let d = self.daemon.clone();
        let applied = blocking_long(move || apply(&d, &ns, desc, mounts)).await?;
        Ok(Response::new(ApplyResponse {
            applied: Some(applied),
        }))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let left = r.left.into_iter().map(mount_from_wire).collect();
        let right = r.right.into_iter().map(mount_from_wire).collect();
        let d = self.daemon.clone();
        let desc = blocking_long(move || {
            diff(
                &d,
                &ns,
                lease.as_deref(),
                left,
                right,
                r.media_type,
                r.r#ref,
                r.labels.into_iter().collect(),
            )
        })
        .await?;
        Ok(Response::new(DiffResponse { diff: Some(desc) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn daemon(dir: &std::path::Path) -> Daemon {
        Daemon {
            db: crate::metadata::Db::open(&dir.join("meta.redb")).unwrap(),
            events: Default::default(),
            root: dir.to_path_buf(),
            content: Arc::new(content::LocalStore::open(dir.join("content")).unwrap()),
            snapshotters: Default::default(),
            gc: Default::default(),
        }
    }

    fn bind(dir: &std::path::Path) -> snapshotter::Mount {
        snapshotter::Mount {
            kind: "bind".into(),
            source: dir.display().to_string(),
            target: String::new(),
            options: vec!["rw".into(), "rbind".into()],
        }
    }

    /// Diff of a directory against nothing, then Apply of that layer elsewhere: same files,
    /// and the descriptors agree (Apply's digest is the diffID Diff labelled the blob with).
    #[test]
    fn diff_then_apply_round_trip_and_visibility() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hello"), b"hello layer").unwrap();

        let desc = diff(
            &d,
            "ns1",
            None,
            vec![],
            vec![bind(&src)],
            String::new(),
            "r1".into(),
            Labels::new(),
        )
        .unwrap();
        assert_eq!(desc.media_type, MEDIA_TYPE_LAYER_GZIP);
        let blob: Blob =
            d.db.get(CONTENT, &key("ns1", &[&desc.digest]))
                .unwrap()
                .expect("diff recorded the blob in its namespace");
        let diff_id = blob.labels[LABEL_UNCOMPRESSED].clone();

        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        let applied = apply(&d, "ns1", desc.clone(), vec![bind(&dst)]).unwrap();
        assert_eq!(applied.media_type, MEDIA_TYPE_LAYER);
        assert_eq!(applied.digest, diff_id);
        assert_eq!(
            std::fs::read(dst.join("etc/hello")).unwrap(),
            b"hello layer"
        );

        // Another namespace cannot apply a blob it cannot see.
        let e = apply(&d, "ns2", desc.clone(), vec![bind(&dst)]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains(&desc.digest), "{}", e.message());

        // A bad media type for Diff is refused before anything is written.
        let e = diff(
            &d,
            "ns1",
            None,
            vec![],
            vec![bind(&src)],
            "text/plain".into(),
            String::new(),
            Labels::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn apply_of_a_corrupt_layer_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        let data = b"\x1f\x8b this is not gzip";
        let mut w = d.content.writer(WriterOpts::new("x")).unwrap();
        w.write_all(data).unwrap();
        let dg = w.commit(None, None, Labels::new()).unwrap();
        record_blob(
            &d,
            "ns",
            None,
            &dg.to_string(),
            data.len() as u64,
            Labels::new(),
        )
        .unwrap();
        let dst = tempfile::tempdir().unwrap();
        let desc = Descriptor {
            media_type: MEDIA_TYPE_LAYER_GZIP.into(),
            digest: dg.to_string(),
            size: data.len() as i64,
            annotations: Default::default(),
        };
        let e = apply(&d, "ns", desc, vec![bind(dst.path())]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(&dg.to_string()), "{}", e.message());
    }
}
