//! Unpack: an image's layers into committed snapshots named by their chain IDs.
//!
//! Used by the pull (layers are unpacked as they arrive) and by Transfer/Unpack (an image that
//! came another way, e.g. `corral images import`, with every layer already in the store).
//!
//! With a snapshotter that can stage ([`snapshotter::staging`], overlayfs), every layer is
//! extracted as soon as its blob is in, at most [`parallelism`] at once, each into a directory
//! of its own; the snapshots are then made strictly in chain order:
//!
//! ```text
//!  layer i arrives ─▶ stage task i: chainID(i) exists? skip : stage_dir + stage_layer,
//!                                   check the diffID                   (concurrent, bounded)
//!  in order i = 0..n: await stage task i ─▶ prepare `extract-… <chainID(i)>` on chainID(i-1),
//!                     adopt the staged dir, commit as chainID(i), label the layer blob
//! ```
//!
//! Without one (native), layer i is applied onto the prepared snapshot's mounts once it and
//! layers 0..i are in, one after the other, as containerd does.
//!
//! Either way the chain IDs, parents, events and labels are the same, and so is the tree
//! (the staging tests check that attribute for attribute). A failure stops the other
//! extractions at their next read and waits for them, so that when unpack returns nothing is
//! left staged; the snapshot being made is removed. Dropping the unpack future (a cancelled
//! pull) stops them too; they remove their directories as they end.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use content::{BlobReader, ContentStore, DamageProbe, Digest};
use protocol::grpc::any::{SNAPSHOT_COMMIT, SNAPSHOT_PREPARE, pack};
use protocol::grpc::containerd::events::{SnapshotCommit, SnapshotPrepare};
use snapshotter::{Mount, Snapshotter, StagedLayer};
use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    BUSY, Desc, Error, Kind, LABEL_REF_SNAPSHOT_PREFIX, LABEL_UNCOMPRESSED, MAX_CONFIG_SIZE,
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_OCI_INDEX, Progress, State, bad_image, blocking,
    create_lease, delete_lease, diff_ids_of, label_blob, manifest_parts, parse_doc, progress,
    reference,
};
use crate::metadata::{self, Blob, CONTENT, Descriptor, Labels, Time, key};
use crate::services::Shared;
use crate::snapshots::{self, Namespaced};

/// Unpacks the image manifest `manifest` (in the content store, visible in `ns`) into
/// `snapshotter` (empty: overlayfs) as a pull does, and labels its config with the top
/// snapshot: for images that came another way (`corral images import`). The blobs and
/// snapshots are held by a lease of our own while we work; afterwards the config's label holds
/// the snapshots, and whatever holds the config (an image record) holds the rest. Returns the
/// top chain ID.
pub async fn unpack_manifest(
    d: Shared,
    ns: &str,
    manifest: Descriptor,
    snapshotter: &str,
) -> Result<String, Error> {
    let sn = if snapshotter.is_empty() {
        "overlayfs"
    } else {
        snapshotter
    }
    .to_string();
    if !d.snapshotters.contains_key(&sn) {
        return Err(Error::NoSnapshotter(sn));
    }
    let name = manifest.digest.clone();
    if matches!(
        manifest.media_type.as_str(),
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST
    ) {
        return Err(bad_image(
            &name,
            "descriptor",
            "is an index: unpack the manifest chosen from it",
        ));
    }
    let lease = create_lease(&d, ns).await?;
    let result = unpack_manifest_in_lease(&d, ns, &lease, &name, &sn).await;
    delete_lease(&d, ns, lease).await;
    match &result {
        Ok(top) => log::info!("unpacked {name} in {ns} to {top}"),
        Err(e) => {
            log::warn!("unpack {name} in {ns} failed: {e}");
            crate::gc::trigger(d);
        }
    }
    result
}

async fn unpack_manifest_in_lease(
    d: &Shared,
    ns: &str,
    lease: &str,
    name: &str,
    sn: &str,
) -> Result<String, Error> {
    let what = format!("manifest {name}");
    let bytes = read_held(d, ns, lease, name, MAX_CONFIG_SIZE).await?;
    let doc = parse_doc(name, &what, &bytes)?;
    if doc.manifests.is_some() {
        return Err(bad_image(
            name,
            &what,
            "is an index: unpack the manifest chosen from it",
        ));
    }
    let (config, descs) = manifest_parts(name, &what, &doc)?;
    let config_bytes = read_held(d, ns, lease, &config.digest, MAX_CONFIG_SIZE).await?;
    let diff_ids = diff_ids_of(name, &config, &config_bytes, descs.len())?;
    let chain = reference::chain_ids(&diff_ids);
    let Some(top) = chain.last().cloned() else {
        return Err(bad_image(name, &what, "has no layers"));
    };
    // Every layer must be visible in the namespace (as the Diff service requires); hold them.
    let (d2, ns2, lease2, digests) = (
        d.clone(),
        ns.to_string(),
        lease.to_string(),
        descs.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
    );
    blocking(move || {
        let tx = d2.db.write()?;
        for digest in &digests {
            if tx.get::<Blob>(CONTENT, &key(&ns2, &[digest]))?.is_none() {
                return Err(metadata::Error::NotFound(format!("content {digest}")).into());
            }
            tx.add_lease_resource(&ns2, &lease2, "content", digest)?;
        }
        tx.commit()?;
        Ok(())
    })
    .await?;
    let layers: Vec<Layer> = descs
        .into_iter()
        .zip(diff_ids)
        .zip(chain)
        .map(|((desc, diff_id), chain_id)| Layer {
            desc,
            diff_id,
            chain_id,
        })
        .collect();
    // Nobody watches the progress of this one.
    let (progress, _) = mpsc::channel(1);
    let u = Arc::new(Unpacker {
        d: d.clone(),
        ns: ns.to_string(),
        lease: lease.to_string(),
        image: name.to_string(),
        snapshotter: sn.to_string(),
        progress,
    });
    let arrivals = layers.iter().map(|_| arrived()).collect();
    unpack(&u, &layers, arrivals).await?;
    let label = Labels::from([(format!("{LABEL_REF_SNAPSHOT_PREFIX}{sn}"), top.clone())]);
    label_blob(d, ns, &config.digest, label).await?;
    Ok(top)
}

/// Blob `digest` (at most `max` bytes), which must be visible in `ns`, read whole after adding
/// it to `lease`.
async fn read_held(
    d: &Shared,
    ns: &str,
    lease: &str,
    digest: &str,
    max: i64,
) -> Result<Vec<u8>, Error> {
    let (d, ns, lease, digest) = (
        d.clone(),
        ns.to_string(),
        lease.to_string(),
        digest.to_string(),
    );
    blocking(move || {
        let tx = d.db.write()?;
        let blob = tx
            .get::<Blob>(CONTENT, &key(&ns, &[&digest]))?
            .ok_or_else(|| metadata::Error::NotFound(format!("content {digest}")))?;
        if blob.size > max {
            return Err(bad_image(
                &digest,
                "blob",
                format!("is {} bytes, more than the {max} accepted", blob.size),
            ));
        }
        tx.add_lease_resource(&ns, &lease, "content", &digest)?;
        tx.commit()?;
        let r = d.content.reader_at(&Digest::parse(&digest)?)?;
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
        Ok(buf)
    })
    .await
}

/// Resolves once a layer's blob is in the content store (or with the error that kept it out).
pub(super) type Arrival = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// An arrival for a blob that is there already.
pub(super) fn arrived() -> Arrival {
    Box::pin(async { Ok(()) })
}

/// Where, and for whom, layers are unpacked.
pub(super) struct Unpacker {
    pub d: Shared,
    pub ns: String,
    /// Holds the chain IDs (and what the caller put there) until the config's label does.
    pub lease: String,
    /// The image, for error messages.
    pub image: String,
    pub snapshotter: String,
    pub progress: mpsc::Sender<Progress>,
}

/// One layer to unpack.
#[derive(Clone)]
pub(super) struct Layer {
    pub desc: Desc,
    pub diff_id: String,
    pub chain_id: String,
}

/// How long a commit waits for another pull committing the same chain ID, and how often it
/// looks (a commit measures the layer's disk use: a big layer takes a while).
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// The most layers extracted at once: one per CPU, at least two (an extraction waits on the
/// disk as much as it computes, and runs its decompression on a thread of its own).
pub fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

impl Unpacker {
    async fn emit(&self, p: Progress) {
        // A client that went away does not stop the unpack.
        let _ = self.progress.send(p).await;
    }

    fn view<'a>(&'a self, backend: &'a dyn Snapshotter) -> Namespaced<'a> {
        Namespaced {
            db: &self.d.db,
            busy: &BUSY,
            ns: &self.ns,
            name: &self.snapshotter,
            backend,
            lease: Some(&self.lease),
        }
    }

    /// The layer blob's uncompressed bytes come out of the reader; `cancel` makes reads fail.
    fn reader(
        &self,
        l: &Layer,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<(Cancellable<BlobReader>, DamageProbe), Error> {
        let digest = Digest::parse(&l.desc.digest)?;
        let inner = BlobReader::new(self.d.content.reader_at(&digest)?, 0)?;
        let probe = inner.probe();
        Ok((Cancellable { inner, cancel }, probe))
    }

    /// The error of a failed apply: a layer damaged on disk makes the apply fail in some way,
    /// and then that is what is reported (and the blob quarantined).
    fn apply_error(
        &self,
        l: &Layer,
        probe: &DamageProbe,
        source: snapshotter::apply::ApplyError,
    ) -> Error {
        match (probe.damaged(), Digest::parse(&l.desc.digest)) {
            (Some(actual), Ok(digest)) => {
                Error::Damaged(crate::integrity::damaged(&self.d, &digest, actual))
            }
            _ => Error::Apply {
                digest: l.desc.digest.clone(),
                source,
            },
        }
    }

    fn check_diff_id(&self, index: usize, l: &Layer, actual: &str) -> Result<(), Error> {
        if actual == l.diff_id {
            return Ok(());
        }
        Err(Error::DiffIdMismatch {
            name: self.image.clone(),
            index,
            digest: l.desc.digest.clone(),
            expected: l.diff_id.clone(),
            actual: actual.to_string(),
        })
    }
}

/// A reader that fails once its flag is set: stops an extraction whose unpack has failed.
struct Cancellable<R> {
    inner: R,
    cancel: Option<Arc<AtomicBool>>,
}

impl<R: Read> Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(std::io::Error::other("unpack cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Stops the stage tasks when the unpack fails or its future is dropped.
struct Cancel {
    flag: Arc<AtomicBool>,
    tx: watch::Sender<bool>,
}

impl Cancel {
    fn new() -> Cancel {
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            tx: watch::channel(false).0,
        }
    }

    fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.tx.send_replace(true);
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        self.set();
    }
}

/// Unpacks `layers` (bottom first) as their `arrivals` resolve. See the module docs.
pub(super) async fn unpack(
    u: &Arc<Unpacker>,
    layers: &[Layer],
    arrivals: Vec<Arrival>,
) -> Result<(), Error> {
    let backend =
        u.d.snapshotters
            .get(&u.snapshotter)
            .cloned()
            .ok_or_else(|| Error::NoSnapshotter(u.snapshotter.clone()))?;
    // Hold every chain ID in the lease before looking: a snapshot that exists now cannot be
    // collected before the config's label points at it.
    let (c, chains) = (
        u.clone(),
        layers
            .iter()
            .map(|l| l.chain_id.clone())
            .collect::<Vec<_>>(),
    );
    blocking(move || {
        let tx = c.d.db.write()?;
        let kind = snapshots::lease_resource_type(&c.snapshotter);
        for chain in &chains {
            tx.add_lease_resource(&c.ns, &c.lease, &kind, chain)?;
        }
        tx.commit()?;
        Ok(())
    })
    .await?;
    if backend.staging().is_some() {
        staged(u, backend, layers, arrivals).await
    } else {
        for (i, arrival) in arrivals.into_iter().enumerate() {
            arrival.await?;
            u.emit(layer_progress(&layers[i], i, State::Unpacking))
                .await;
            let made = make(u, &backend, i, layers, None).await?;
            finish(u, i, layers, made).await?;
        }
        Ok(())
    }
}

fn layer_progress(l: &Layer, index: usize, state: State) -> Progress {
    progress(&l.desc, Kind::Layer, index, l.desc.size as u64, state)
}

fn parent_of(layers: &[Layer], index: usize) -> String {
    index
        .checked_sub(1)
        .map(|p| layers[p].chain_id.clone())
        .unwrap_or_default()
}

async fn staged(
    u: &Arc<Unpacker>,
    backend: Arc<dyn Snapshotter>,
    layers: &[Layer],
    arrivals: Vec<Arrival>,
) -> Result<(), Error> {
    let cancel = Cancel::new();
    let permits = Arc::new(Semaphore::new(parallelism()));
    let mut tasks: Vec<_> = layers
        .iter()
        .zip(arrivals)
        .enumerate()
        .map(|(i, (l, arrival))| {
            tokio::spawn(stage(
                u.clone(),
                backend.clone(),
                i,
                l.clone(),
                arrival,
                permits.clone(),
                cancel.flag.clone(),
                cancel.tx.subscribe(),
            ))
        })
        .collect();
    for i in 0..tasks.len() {
        let result = match (&mut tasks[i]).await {
            Ok(Ok(staged)) => match make(u, &backend, i, layers, Some(staged)).await {
                Ok(made) => finish(u, i, layers, made).await,
                Err(e) => Err(e),
            },
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Worker(e.to_string())),
        };
        if let Err(e) = result {
            // The others stop at their next read (or before starting) and drop what they
            // staged; wait for that, so a failed unpack leaves nothing behind.
            cancel.set();
            for t in &mut tasks[i + 1..] {
                let _ = t.await;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Stage task: waits for the blob and a permit, then extracts the layer into a staging
/// directory (`None` if its snapshot exists already).
#[allow(clippy::too_many_arguments)]
async fn stage(
    u: Arc<Unpacker>,
    backend: Arc<dyn Snapshotter>,
    index: usize,
    layer: Layer,
    arrival: Arrival,
    permits: Arc<Semaphore>,
    flag: Arc<AtomicBool>,
    mut cancelled: watch::Receiver<bool>,
) -> Result<Option<StagedLayer>, Error> {
    let mut cancelled2 = cancelled.clone();
    tokio::select! {
        r = arrival => r?,
        _ = cancelled.wait_for(|c| *c) => return Err(Error::Cancelled),
    }
    let _permit = tokio::select! {
        p = permits.acquire_owned() => p.map_err(|e| Error::Worker(e.to_string()))?,
        _ = cancelled2.wait_for(|c| *c) => return Err(Error::Cancelled),
    };
    if flag.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    u.emit(layer_progress(&layer, index, State::Unpacking))
        .await;
    let started = std::time::Instant::now();
    let digest = layer.desc.digest.clone();
    let staged = blocking(move || {
        let view = u.view(backend.as_ref());
        match view.stat(&layer.chain_id) {
            Ok(_) => return Ok(None),
            Err(snapshots::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = view.stage_dir()?;
        let (reader, probe) = u.reader(&layer, Some(flag))?;
        let media = Some(layer.desc.media_type.as_str()).filter(|m| !m.is_empty());
        let staged = snapshotter::apply::stage_layer(reader, media, dir, index > 0)
            .map_err(|source| u.apply_error(&layer, &probe, source))?;
        u.check_diff_id(index, &layer, &staged.applied.diff_id)?;
        Ok(Some(staged))
    })
    .await?;
    log::debug!(
        "unpack: layer {index} {digest} staged in {:?}",
        started.elapsed()
    );
    Ok(staged)
}

/// Makes the snapshot `chainID(index)` on its parent: prepare, fill (adopt the staged layer,
/// or apply the blob onto the mounts), commit. `None` if it exists (before, or made by another
/// pull meanwhile); else the extract key it was made under.
async fn make(
    u: &Arc<Unpacker>,
    backend: &Arc<dyn Snapshotter>,
    index: usize,
    layers: &[Layer],
    staged: Option<Option<StagedLayer>>,
) -> Result<Option<String>, Error> {
    let (u2, backend, layer, parent) = (
        u.clone(),
        backend.clone(),
        layers[index].clone(),
        parent_of(layers, index),
    );
    let started = std::time::Instant::now();
    let made = blocking(move || {
        let view = u2.view(backend.as_ref());
        match view.stat(&layer.chain_id) {
            Ok(_) => return Ok(None),
            Err(snapshots::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let t = Time::now();
        let key = format!(
            "extract-{}{:09}-{index} {}",
            t.seconds, t.nanos, layer.chain_id
        );
        let mounts = view.prepare(&key, &parent, Labels::new(), false)?;
        let filled = match staged {
            Some(Some(s)) => view.adopt(&key, s).map_err(Error::from),
            // Not staged (the sequential path), or staged as existing and gone since.
            _ => apply(&u2, index, &layer, &mounts),
        };
        let fail = |e: Error| {
            if let Err(r) = view.remove(&key) {
                log::warn!("unpack: removing {key} after a failed unpack: {r}");
            }
            Err(e)
        };
        if let Err(e) = filled {
            return fail(e);
        }
        let mut waited = std::time::Duration::ZERO;
        loop {
            match view.commit(&layer.chain_id, &key, Labels::new()) {
                Ok(()) => return Ok(Some(key)),
                // Another pull of the same image got there first.
                Err(snapshots::Error::AlreadyExists { .. }) => {
                    let _ = view.remove(&key);
                    return Ok(None);
                }
                // Another pull is committing the same chain ID right now: once it is done,
                // ours is AlreadyExists (or, had it failed, goes in).
                Err(snapshots::Error::Busy { .. }) if waited < BUSY_PATIENCE => {
                    std::thread::sleep(BUSY_RETRY);
                    waited += BUSY_RETRY;
                }
                Err(e) => return fail(e.into()),
            }
        }
    })
    .await?;
    log::debug!(
        "unpack: layer {index} {} committed in {:?}",
        layers[index].desc.digest,
        started.elapsed()
    );
    Ok(made)
}

/// The sequential apply of one layer onto the prepared snapshot's mounts.
fn apply(u: &Unpacker, index: usize, layer: &Layer, mounts: &[Mount]) -> Result<(), Error> {
    let (reader, probe) = u.reader(layer, None)?;
    let media = Some(layer.desc.media_type.as_str()).filter(|m| !m.is_empty());
    let applied = snapshotter::apply::apply_to_mounts(mounts, reader, media)
        .map_err(|source| u.apply_error(layer, &probe, source))?;
    u.check_diff_id(index, layer, &applied.diff_id)
}

/// Events, the layer blob's `containerd.io/uncompressed` label, progress.
async fn finish(
    u: &Arc<Unpacker>,
    index: usize,
    layers: &[Layer],
    made: Option<String>,
) -> Result<(), Error> {
    let layer = &layers[index];
    let state = match made {
        Some(key) => {
            u.d.events.publish(
                &u.ns,
                "/snapshot/prepare",
                pack(
                    SNAPSHOT_PREPARE,
                    &SnapshotPrepare {
                        key: key.clone(),
                        parent: parent_of(layers, index),
                    },
                ),
            );
            u.d.events.publish(
                &u.ns,
                "/snapshot/commit",
                pack(
                    SNAPSHOT_COMMIT,
                    &SnapshotCommit {
                        key,
                        name: layer.chain_id.clone(),
                    },
                ),
            );
            State::Unpacked
        }
        None => State::Exists,
    };
    label_blob(
        &u.d,
        &u.ns,
        &layer.desc.digest,
        Labels::from([(LABEL_UNCOMPRESSED.to_string(), layer.diff_id.clone())]),
    )
    .await?;
    u.emit(layer_progress(layer, index, state)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The unpack paths on real overlay snapshotters (root): staged against sequential, and
    //! what failures and cancellation leave behind.

    use std::collections::BTreeMap;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use content::{ContentStore, WriterOpts};
    use sha2::{Digest as _, Sha256};
    use snapshotter::{Info, OverlaySnapshotter, Usage};

    use super::*;
    use crate::services::Daemon;
    use protocol::Code;

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CORRAL_REQUIRE_ROOT").as_deref() != Ok("1"),
            "needs root and CORRAL_REQUIRE_ROOT=1"
        );
        eprintln!("skipping: needs root (overlay whiteouts)");
        false
    }

    /// The overlay snapshotter with its staging hidden: the sequential path.
    struct Sequential(OverlaySnapshotter);

    impl Snapshotter for Sequential {
        fn stat(&self, key: &str) -> snapshotter::Result<Info> {
            self.0.stat(key)
        }
        fn update(&self, info: &Info, paths: &[&str]) -> snapshotter::Result<Info> {
            self.0.update(info, paths)
        }
        fn usage(&self, key: &str) -> snapshotter::Result<Usage> {
            self.0.usage(key)
        }
        fn mounts(&self, key: &str) -> snapshotter::Result<Vec<Mount>> {
            self.0.mounts(key)
        }
        fn prepare(
            &self,
            key: &str,
            parent: Option<&str>,
            labels: snapshotter::Labels,
        ) -> snapshotter::Result<Vec<Mount>> {
            self.0.prepare(key, parent, labels)
        }
        fn view(
            &self,
            key: &str,
            parent: Option<&str>,
            labels: snapshotter::Labels,
        ) -> snapshotter::Result<Vec<Mount>> {
            self.0.view(key, parent, labels)
        }
        fn commit(
            &self,
            name: &str,
            key: &str,
            labels: snapshotter::Labels,
        ) -> snapshotter::Result<()> {
            self.0.commit(name, key, labels)
        }
        fn remove(&self, key: &str) -> snapshotter::Result<()> {
            self.0.remove(key)
        }
        fn walk(
            &self,
            filters: &[&str],
            f: &mut dyn FnMut(Info) -> snapshotter::Result<()>,
        ) -> snapshotter::Result<()> {
            self.0.walk(filters, f)
        }
        fn cleanup(&self) -> snapshotter::Result<()> {
            self.0.cleanup()
        }
    }

    struct Env {
        d: Shared,
        dir: tempfile::TempDir,
    }

    impl Env {
        fn new() -> Env {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path();
            let opts = snapshotter::Options {
                overlay_index_off: Some(true),
                ..Default::default()
            };
            let staged = OverlaySnapshotter::open_with(p.join("staged"), opts.clone()).unwrap();
            let seq = OverlaySnapshotter::open_with(p.join("seq"), opts).unwrap();
            let mut snapshotters: BTreeMap<String, Arc<dyn Snapshotter>> = BTreeMap::new();
            snapshotters.insert("overlayfs".into(), Arc::new(staged));
            snapshotters.insert("seq".into(), Arc::new(Sequential(seq)));
            let d = Arc::new(Daemon {
                db: crate::metadata::Db::open(&p.join("meta.redb")).unwrap(),
                events: Default::default(),
                gc: Default::default(),
                root: p.to_path_buf(),
                content: Arc::new(content::LocalStore::open(p.join("content")).unwrap()),
                snapshotters,
            });
            Env { d, dir }
        }

        fn staging(&self) -> Vec<PathBuf> {
            let s = self.dir.path().join("staged/staging");
            std::fs::read_dir(s)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        }

        fn view<'a>(&'a self, sn: &'a str) -> Namespaced<'a> {
            Namespaced {
                db: &self.d.db,
                busy: &BUSY,
                ns: "ns",
                name: sn,
                backend: self.d.snapshotters[sn].as_ref(),
                lease: None,
            }
        }

        fn kinds(&self, sn: &str) -> Vec<(String, snapshotter::Kind)> {
            self.view(sn)
                .list(&[])
                .unwrap()
                .into_iter()
                .map(|i| (i.name, i.kind))
                .collect()
        }

        /// Stores `data` and makes it visible in namespace `ns`.
        fn put(&self, data: &[u8], media_type: &str) -> Descriptor {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
            let parsed = Digest::parse(&digest).unwrap();
            let mut w = self
                .d
                .content
                .writer(
                    WriterOpts::new(format!("t-{digest}"))
                        .total(data.len() as u64)
                        .expected(parsed),
                )
                .unwrap();
            w.write_all(data).unwrap();
            match w.commit(Some(data.len() as u64), Some(&parsed), Labels::new()) {
                Ok(_) | Err(content::Error::AlreadyExists(_)) => {}
                Err(e) => panic!("{e}"),
            }
            let tx = self.d.db.write().unwrap();
            tx.ensure_namespace("ns").unwrap();
            tx.record_blob("ns", &digest, data.len() as u64, Labels::new(), true)
                .unwrap();
            // Held, as an import's lease or image record holds them: a failed unpack starts
            // garbage collection.
            if tx
                .get::<crate::metadata::Lease>(crate::metadata::LEASES, &key("ns", &["hold"]))
                .unwrap()
                .is_none()
            {
                tx.put(
                    crate::metadata::LEASES,
                    &key("ns", &["hold"]),
                    &crate::metadata::Lease {
                        labels: Labels::new(),
                        created_at: Time::now(),
                    },
                )
                .unwrap();
            }
            tx.add_lease_resource("ns", "hold", "content", &digest)
                .unwrap();
            tx.commit().unwrap();
            Descriptor {
                media_type: media_type.into(),
                digest,
                size: data.len() as i64,
                annotations: Default::default(),
            }
        }

        /// Stores layers (gzipped tars), a config naming `diff_ids` and the manifest.
        fn image(&self, layers: &[Vec<u8>], diff_ids: &[String]) -> (Descriptor, Vec<Descriptor>) {
            let descs: Vec<Descriptor> = layers
                .iter()
                .map(|l| self.put(l, "application/vnd.oci.image.layer.v1.tar+gzip"))
                .collect();
            let config = serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            });
            let config = self.put(
                &serde_json::to_vec(&config).unwrap(),
                "application/vnd.oci.image.config.v1+json",
            );
            let desc = |d: &Descriptor| serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": super::super::MEDIA_TYPE_OCI_MANIFEST,
                "config": desc(&config),
                "layers": descs.iter().map(desc).collect::<Vec<_>>(),
            });
            let m = self.put(
                &serde_json::to_vec(&manifest).unwrap(),
                super::super::MEDIA_TYPE_OCI_MANIFEST,
            );
            (m, descs)
        }

        fn label(&self, digest: &str, label: &str) -> Option<String> {
            self.d
                .db
                .get::<Blob>(CONTENT, &key("ns", &[digest]))
                .unwrap()
                .and_then(|b| b.labels.get(label).cloned())
        }
    }

    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o710);
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o640);
            }
            h.set_size(data.len() as u64);
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(raw: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    }

    fn sha(raw: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(raw)))
    }

    /// Four layers: whiteouts, an opaque dir, implicit parents, a dir replaced by a file.
    fn layer_tars() -> Vec<Vec<u8>> {
        vec![
            tar(&[
                ("etc/", b""),
                ("etc/a", b"a"),
                ("d/", b""),
                ("d/x", b"x"),
                ("v/", b""),
            ]),
            tar(&[
                ("etc/b/c", b"c"),
                ("etc/.wh.a", b""),
                ("v/.wh..wh..opq", b""),
            ]),
            tar(&[("d", b"file now"), ("etc/b/d", b"d")]),
            tar(&[("v/w/deep", b"deep"), ("new/", b"")]),
        ]
    }

    fn tree(root: &Path) -> BTreeMap<String, (u32, u32, String)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let content = if m.is_dir() {
                    stack.push(p.clone());
                    String::new()
                } else if m.is_file() {
                    sha(&std::fs::read(&p).unwrap())
                } else {
                    format!("rdev {}", m.rdev())
                };
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, (m.mode(), m.uid(), content));
            }
        }
        out
    }

    fn merged(env: &Env, sn: &str, top: &str) -> BTreeMap<String, (u32, u32, String)> {
        let view = env.view(sn);
        let key = format!("view-{sn}");
        let mounts = view.prepare(&key, top, Labels::new(), true).unwrap();
        let target = tempfile::tempdir().unwrap();
        let g = snapshotter::MountGuard::mount(&mounts, target.path()).unwrap();
        let t = tree(g.target());
        drop(g);
        view.remove(&key).unwrap();
        t
    }

    fn no_lease(env: &Env) {
        let leases: Vec<(String, crate::metadata::Lease)> =
            env.d.db.list(crate::metadata::LEASES, "ns").unwrap();
        let names: Vec<&str> = leases.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [key("ns", &["hold"])],
            "only the test's own lease is left"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staged_and_sequential_unpack_agree() {
        if !is_root() {
            return;
        }
        let env = Env::new();
        let tars = layer_tars();
        let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
        let layers: Vec<Vec<u8>> = tars.iter().map(|t| gz(t)).collect();
        let (m, descs) = env.image(&layers, &diff_ids);
        let chain = reference::chain_ids(&diff_ids);
        let top = unpack_manifest(env.d.clone(), "ns", m.clone(), "")
            .await
            .unwrap();
        assert_eq!(&top, chain.last().unwrap());
        let top2 = unpack_manifest(env.d.clone(), "ns", m.clone(), "seq")
            .await
            .unwrap();
        assert_eq!(top, top2);
        for sn in ["overlayfs", "seq"] {
            let kinds = env.kinds(sn);
            assert!(
                kinds
                    .iter()
                    .all(|(_, k)| *k == snapshotter::Kind::Committed)
            );
            let mut names: Vec<&String> = kinds.iter().map(|(n, _)| n).collect();
            let mut want: Vec<&String> = chain.iter().collect();
            names.sort();
            want.sort();
            assert_eq!(names, want, "{sn}");
            for (i, c) in chain.iter().enumerate() {
                let parent = if i == 0 { "" } else { &chain[i - 1] };
                assert_eq!(env.view(sn).stat(c).unwrap().parent, parent);
            }
        }
        assert!(env.staging().is_empty());
        for (d, id) in descs.iter().zip(&diff_ids) {
            assert_eq!(env.label(&d.digest, LABEL_UNCOMPRESSED).as_ref(), Some(id));
        }
        no_lease(&env);
        let (a, b) = (merged(&env, "overlayfs", &top), merged(&env, "seq", &top));
        assert_eq!(a, b);
        let names: Vec<&str> = a.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "d", "etc", "etc/b", "etc/b/c", "etc/b/d", "new", "v", "v/w", "v/w/deep"
            ]
        );
        // etc/ was implicit in layers 1 and 2: it kept layer 0's mode.
        assert_eq!(a["etc"].0 & 0o7777, 0o710);

        // Again: everything exists, nothing is staged or made.
        let again = unpack_manifest(env.d.clone(), "ns", m, "").await.unwrap();
        assert_eq!(again, top);
        assert_eq!(env.kinds("overlayfs").len(), chain.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_layers_leave_nothing_staged_or_active() {
        if !is_root() {
            return;
        }
        let env = Env::new();
        let tars = layer_tars();
        let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
        let mut layers: Vec<Vec<u8>> = tars.iter().map(|t| gz(t)).collect();
        // Layer 2 is corrupt gzip (its digest is what the manifest says: the store has it).
        let n = layers[2].len();
        layers[2].truncate(n / 2);
        layers[2].extend_from_slice(&[0x55; 40]);
        let (m, _) = env.image(&layers, &diff_ids);
        for sn in ["overlayfs", "seq"] {
            let e = unpack_manifest(env.d.clone(), "ns", m.clone(), sn)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{sn}: {e}");
            assert!(
                e.to_string().contains(&m.digest) || e.to_string().contains("gzip"),
                "{e}"
            );
            assert!(
                env.kinds(sn)
                    .iter()
                    .all(|(_, k)| *k == snapshotter::Kind::Committed),
                "{sn}: {:?}",
                env.kinds(sn)
            );
        }
        assert!(env.staging().is_empty(), "{:?}", env.staging());
        no_lease(&env);

        // A diff ID the config gets wrong: DataLoss naming both.
        let env = Env::new();
        let layers: Vec<Vec<u8>> = tars.iter().map(|t| gz(t)).collect();
        let mut wrong = diff_ids.clone();
        wrong[1] = sha(b"something else");
        let (m, _) = env.image(&layers, &wrong);
        for sn in ["overlayfs", "seq"] {
            let e = unpack_manifest(env.d.clone(), "ns", m.clone(), sn)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::DataLoss, "{sn}: {e}");
            assert!(e.to_string().contains(&diff_ids[1]) && e.to_string().contains(&wrong[1]));
            let kinds = env.kinds(sn);
            assert!(
                kinds
                    .iter()
                    .all(|(_, k)| *k == snapshotter::Kind::Committed)
                    && kinds.len() <= 1,
                "{sn}: only layer 0 may be committed: {kinds:?}"
            );
        }
        assert!(env.staging().is_empty(), "{:?}", env.staging());

        // Not visible in the namespace: NotFound, before anything is made.
        let e = unpack_manifest(
            env.d.clone(),
            "ns",
            Descriptor {
                media_type: super::super::MEDIA_TYPE_OCI_MANIFEST.into(),
                digest: sha(b"nothing"),
                size: 7,
                annotations: Default::default(),
            },
            "",
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
    }

    /// Waits for `cond` (polling), panicking with `what` after 20 s.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_unpack_leaves_nothing_staged() {
        if !is_root() {
            return;
        }
        let env = Env::new();
        let tars = layer_tars();
        let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
        let layers: Vec<Vec<u8>> = tars.iter().map(|t| gz(t)).collect();
        let (_, descs) = env.image(&layers, &diff_ids);
        let chain = reference::chain_ids(&diff_ids);
        let tx = env.d.db.write().unwrap();
        tx.put(
            crate::metadata::LEASES,
            &key("ns", &["l"]),
            &crate::metadata::Lease {
                labels: Labels::new(),
                created_at: Time::now(),
            },
        )
        .unwrap();
        tx.commit().unwrap();
        let u = Arc::new(Unpacker {
            d: env.d.clone(),
            ns: "ns".into(),
            lease: "l".into(),
            image: "test".into(),
            snapshotter: "overlayfs".into(),
            progress: mpsc::channel(1).0,
        });
        let to_unpack: Vec<Layer> = descs
            .iter()
            .zip(&diff_ids)
            .zip(&chain)
            .map(|((d, id), c)| Layer {
                desc: Desc {
                    media_type: d.media_type.clone(),
                    digest: d.digest.clone(),
                    size: d.size,
                    platform: None,
                    annotations: Default::default(),
                    urls: None,
                },
                diff_id: id.clone(),
                chain_id: c.clone(),
            })
            .collect();
        // Layer 1 never arrives: 2 and 3 are staged and wait for it.
        let arrivals: Vec<Arrival> = (0..4)
            .map(|i| {
                if i == 1 {
                    Box::pin(std::future::pending()) as Arrival
                } else {
                    arrived()
                }
            })
            .collect();
        let task = tokio::spawn(async move { unpack(&u, &to_unpack, arrivals).await });
        eventually("layer 0 committed, layers 2 and 3 staged", || {
            env.view("overlayfs").stat(&chain[0]).is_ok() && env.staging().len() == 2
        })
        .await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        eventually("the staging area empty", || env.staging().is_empty()).await;
        assert_eq!(
            env.kinds("overlayfs"),
            [(chain[0].clone(), snapshotter::Kind::Committed)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_unpacks_of_one_image() {
        if !is_root() {
            return;
        }
        let env = Env::new();
        let tars = layer_tars();
        let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
        let layers: Vec<Vec<u8>> = tars.iter().map(|t| gz(t)).collect();
        let (m, _) = env.image(&layers, &diff_ids);
        let runs: Vec<_> = (0..4)
            .map(|_| tokio::spawn(unpack_manifest(env.d.clone(), "ns", m.clone(), "")))
            .collect();
        let chain = reference::chain_ids(&diff_ids);
        for r in runs {
            assert_eq!(&r.await.unwrap().unwrap(), chain.last().unwrap());
        }
        let kinds = env.kinds("overlayfs");
        assert!(
            kinds
                .iter()
                .all(|(_, k)| *k == snapshotter::Kind::Committed)
        );
        let names: Vec<&String> = kinds.iter().map(|(n, _)| n).collect();
        let mut want: Vec<&String> = chain.iter().collect();
        want.sort();
        assert_eq!(names, want);
        assert!(env.staging().is_empty());
    }
}
