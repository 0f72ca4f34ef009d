//! Layer apply: unpack an OCI layer (tar, tar+gzip, tar+zstd) onto a snapshot's mounts.
//!
//! What it is: the "applier" half of containerd's diff service (`apply.Apply`): it streams a
//! layer into a directory, converting whiteouts for the target, and returns the layer's diffID
//! (sha256 of the uncompressed stream) and uncompressed size, computed while applying.
//! What it is not: a content store client or an unpack policy (which layers, which snapshot).
//!
//! ```text
//!  apply_to_mounts(mounts)
//!   ├─ one bind mount      → apply_layer(source, WhiteoutMode::Delete)      (no mount)
//!   ├─ one overlay mount   → apply_layer(upperdir, WhiteoutMode::Overlay)   (no mount)
//!   └─ anything else       → mount in a temp dir (root), apply with Delete, unmount
//! ```
//!
//! Whiteouts: in [`WhiteoutMode::Delete`] `.wh.<name>` removes `<name>` and `.wh..wh..opq`
//! empties its directory of what lower layers put there. In [`WhiteoutMode::Overlay`] they
//! become overlayfs whiteouts (char device 0/0) and opaque dirs (`trusted.overlay.opaque=y`) in
//! the upperdir, which hide the lowerdirs in the merged view. Either way, entries of the same
//! layer are never hidden by its own whiteouts (OCI image spec).
//!
//! Safety: no entry is ever written outside `root`; see `extract.rs` for how. Bad entries stop
//! the apply with an [`ApplyError`] naming the entry; entries before it stay applied (the
//! caller discards the half-applied snapshot, as containerd does).
//!
//! Durability: apply does not fsync; the snapshotter syncs the filesystem before it commits.
//!
//! Staged: [`stage_layer`] extracts a layer into a staging directory before its parent snapshot
//! exists, so the layers of an image can be extracted concurrently; the snapshotter adopts the
//! directory later, in chain order (see [`crate::staging`]).
//!
//! Speed: decompression and hashing run on one thread, tar extraction on another, joined by a
//! bounded channel of 256 KiB chunks: no temporary copy of the layer is made.

mod error;
mod extract;
mod fsutil;
mod inherit;
mod mounts;
mod stream;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use crate::error::Code;
pub use error::{ApplyError, Result};
pub use mounts::{apply_to_mounts, overlay_dirs};
pub use stream::{Compression, detect};

pub(crate) use extract::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
pub(crate) use fsutil::lxattrs;
pub(crate) use inherit::inherit;
pub(crate) use mounts::{MountedDir, is_bind};
pub(crate) use stream::sha256_string;

/// How whiteout entries are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Whiteouts delete: for plain directories (native snapshots, bind mounts, mounted views).
    Delete,
    /// The root is an overlayfs upperdir: whiteouts become overlay whiteouts and opaque dirs.
    /// `lowerdirs` (top first, as in the `lowerdir=` option) give the attributes of parent
    /// directories that the layer does not list but has to create in the upperdir.
    Overlay { lowerdirs: Vec<PathBuf> },
}

/// Result of applying a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed layer, every byte up to EOF.
    pub diff_id: String,
    /// Size of the uncompressed layer in bytes.
    pub size: u64,
}

/// Applies one layer stream onto `root`.
///
/// `media_type` selects the compression (`...tar`, `...tar+gzip`, `...tar.gzip`,
/// `...tar+zstd`); when it is `None` or generic (`application/octet-stream`) the magic bytes
/// decide. A specific media type that the magic bytes contradict is an error.
///
/// Errors: [`Code::InvalidArgument`] for a malformed or malicious layer (path escapes, writes
/// through symlinks, bad hardlinks, corrupt compression or tar), [`Code::FailedPrecondition`]
/// for entries that need root when we are not, [`Code::Unimplemented`] for unknown media types
/// or tar entry types, [`Code::Internal`] for filesystem failures.
pub fn apply_layer(
    reader: impl Read + Send,
    media_type: Option<&str>,
    root: &Path,
    mode: WhiteoutMode,
) -> Result<Applied> {
    let extractor = extract::Extractor::new(root, mode)?;
    let (_implicit, digest) =
        stream::run(reader, media_type, |r| extractor.run(r)).map_err(|e| e.under(root))?;
    Ok(Applied {
        diff_id: digest.diff_id,
        size: digest.size,
    })
}

/// Extracts one layer into the empty staging directory `dir`, without looking at any other
/// layer, for [`crate::staging::Staging::adopt`] to make it a snapshot's layer later.
///
/// `on_parent` says whether the snapshot it will become has a parent: then whiteouts become
/// overlay whiteouts and opaque directories, as [`apply_to_mounts`] does on an overlay mount;
/// without one they delete, as it does on a bind mount (so the result is the same as the
/// sequential apply's, byte for byte). The directories the layer needs but does not list are
/// recorded: they get the attributes of the lower layers' directories on adoption.
///
/// Errors as [`apply_layer`]. On error the staging directory is removed (dropped).
pub fn stage_layer(
    reader: impl Read + Send,
    media_type: Option<&str>,
    dir: crate::staging::StageDir,
    on_parent: bool,
) -> Result<crate::staging::StagedLayer> {
    let mode = if on_parent {
        WhiteoutMode::Overlay {
            lowerdirs: Vec::new(),
        }
    } else {
        WhiteoutMode::Delete
    };
    let extractor = extract::Extractor::new(dir.path(), mode)?;
    let (implicit, digest) =
        stream::run(reader, media_type, |r| extractor.run(r)).map_err(|e| e.under(dir.path()))?;
    Ok(crate::staging::StagedLayer {
        dir,
        implicit_dirs: implicit,
        on_parent,
        applied: Applied {
            diff_id: digest.diff_id,
            size: digest.size,
        },
    })
}
