//! Snapshotters: filesystem snapshots arranged in parent chains, handed out as mounts.
//!
//! This crate holds the [`Snapshotter`] contract (containerd's semantics: active, view and
//! committed snapshots sharing one key space; mounts returned as data, never performed), two
//! backends sharing one redb-backed engine — [`OverlaySnapshotter`] (one overlayfs layer per
//! snapshot) and [`NativeSnapshotter`] (plain copies, for hosts without overlay) — and the
//! conformance suite both pass. It holds no namespaces, leases or garbage collection: the
//! supervisor maps its namespaced keys onto a snapshotter and decides what to remove.
//!
//! ```text
//! prepare("a", None)  ──commit("L1","a")──▶ L1 (committed)
//!                                            │ parent
//! prepare("b", L1)    ──commit("L2","b")──▶ L2 (committed)
//!                                            │ parent
//! prepare("ctr", L2)  ─▶ active "ctr": mounts = overlay upper=ctr lower=L2:L1
//! view("v", L2)       ─▶ view "v":     mounts = overlay lower=L2:L1 (read-only)
//! ```
//!
//! Overlay layers are independent directories, so an image's layers can also be extracted
//! concurrently ahead of their parents and adopted in chain order ([`staging`]).
pub mod apply;
pub mod diff;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod hostile;
mod metadata;
pub mod mount;
pub mod native;
pub mod overlay;
mod snapshotter;
pub mod staging;
#[doc(hidden)]
pub mod testsuite;

pub use error::{Code, Error, Result};
#[doc(hidden)]
pub use metadata::Failpoint;
pub use metadata::Options;
pub use mount::{Mount, MountError, MountGuard};
pub use native::NativeSnapshotter;
pub use overlay::OverlaySnapshotter;
pub use snapshotter::{Filter, Info, Kind, Labels, MAX_LABEL_SIZE, Snapshotter, Usage};
pub use staging::{StageDir, StagedLayer, Staging};

// The unit tests' hostile-input cases check the largest allocation (see `protocol::fuzzing`).
#[cfg(test)]
#[global_allocator]
static ALLOC: protocol::fuzzing::CountingAlloc = protocol::fuzzing::CountingAlloc;
