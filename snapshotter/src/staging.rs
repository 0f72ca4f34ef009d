//! Staging: a layer extracted before its parent snapshot exists, adopted in chain order.
//!
//! The sequential unpack of an image prepares layer n's snapshot on layer n-1's committed one,
//! applies the layer, commits it, and only then starts layer n+1. With overlayfs, a layer's
//! snapshot directory holds only that layer's own entries (whiteouts become char 0/0 devices
//! and opaque xattrs, which need nothing from below), so every layer can be extracted at the
//! same time into a directory of its own; only the chain (prepare on the parent, commit as the
//! chain ID) has to stay in order:
//!
//! ```text
//!  layer 0 ─stage_dir─▶ stage_layer ─┐          (concurrently, as the blobs arrive)
//!  layer 1 ─stage_dir─▶ stage_layer ─┼──┐
//!  layer 2 ─stage_dir─▶ stage_layer ─┼──┼──┐
//!                                    ▼  ▼  ▼    (in chain order)
//!          prepare(k0, None)   adopt(k0)   commit(chain0, k0)
//!          prepare(k1, chain0) adopt(k1)   commit(chain1, k1)
//!          prepare(k2, chain1) adopt(k2)   commit(chain2, k2)
//! ```
//!
//! The one thing a layer takes from below is the attributes of the directories it creates
//! without listing them (an entry `a/b/f` with no `a/` entry): those are recorded while
//! staging and fixed from the parents' directories by [`Staging::adopt`], when the parents are
//! committed. The result is the same tree, attribute for attribute, as the sequential
//! [`crate::apply::apply_to_mounts`] on the prepared snapshot's mounts.
//!
//! Only backends whose layers are independent directories can stage: [`Snapshotter::staging`]
//! is `None` for the others (the native snapshotter copies its parent into every snapshot), and
//! callers unpack sequentially there.
//!
//! Crash safety: staging directories live under `<root>/staging/` on the snapshotter's own
//! filesystem (adoption is a rename) and are removed when dropped; whatever a crash leaves
//! there is removed when the snapshotter is opened again.
//!
//! [`Snapshotter::staging`]: crate::Snapshotter::staging

use std::path::{Path, PathBuf};

use crate::apply::Applied;
use crate::error::Result;

/// A backend that can adopt layers extracted ahead of their parents. See the [module
/// docs](self).
pub trait Staging: Send + Sync {
    /// A new, empty directory on the snapshotter's filesystem for
    /// [`crate::apply::stage_layer`]. Removed when dropped unless adopted.
    fn stage_dir(&self) -> Result<StageDir>;

    /// Makes `layer` the layer of the active snapshot `key`, which must be freshly prepared
    /// (its layer empty) and not mounted: the staged directory replaces the empty one (a
    /// rename), takes the owner and mode the empty one had (prepare gives it the parent's
    /// root owner), and the directories the layer created implicitly take the attributes of
    /// the parents' directories. Then commit `key` as usual.
    ///
    /// Errors: `NotFound` (no `key`), `FailedPrecondition` (`key` is not active, already has
    /// content, or its parent-or-not does not match what the layer was staged for).
    fn adopt(&self, key: &str, layer: StagedLayer) -> Result<()>;
}

/// A staging directory, removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct StageDir {
    path: PathBuf,
}

impl StageDir {
    pub(crate) fn new(path: PathBuf) -> StageDir {
        StageDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StageDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Left for the next open of the snapshotter, which empties the staging area.
            Err(e) => log::warn!("removing staging dir {}: {e}", self.path.display()),
        }
    }
}

/// A layer extracted into a [`StageDir`] by [`crate::apply::stage_layer`], waiting for
/// [`Staging::adopt`]. Dropping it removes the directory.
#[derive(Debug)]
pub struct StagedLayer {
    pub(crate) dir: StageDir,
    /// Directories the layer needed but did not list (relative paths, creation order).
    pub(crate) implicit_dirs: Vec<Vec<u8>>,
    /// Whether it was staged for a snapshot with a parent (overlay whiteouts) or without.
    pub(crate) on_parent: bool,
    /// The diffID and uncompressed size, as the sequential apply reports them.
    pub applied: Applied,
}

impl StagedLayer {
    /// Where the layer is (until adopted).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
