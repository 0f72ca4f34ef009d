//! `corrald`: the corral supervisor daemon.
//!
//! It keeps image, content and snapshot state and serves containerd's gRPC API
//! (`containerd.services.*.v1`) on a unix socket, so `ctr`, CRI adapters and other containerd
//! clients work against it unchanged.
//!
//! ```text
//!   ctr / CRI / corral ──gRPC (unix socket, h2c)──▶ services/ (thin adapters)
//!                                                    │
//!                        metadata/ (redb, namespaced) ┼── content store (blobs, shared)
//!                                                    └── snapshotters (overlayfs, native)
//!   events: daemon + shims ──▶ events::Exchange ──▶ Subscribe streams
//! ```
//!
//! Modules: `config` (TOML + flags), `daemon` (root lock, socket), `metadata` (schema drawn
//! there), `integrity` (damaged content: found at start-up and on read), `events` (exchange), `oom` (OOM kills shims missed), `pull` (image pull from registries), `ttrpc_events` (the
//! `<address>.ttrpc` socket shims forward events to), `services/*` (one file per gRPC service),
//! `server` (wiring).

pub mod config;
pub mod daemon;
pub mod events;
pub mod gc;
#[cfg(any(test, feature = "fuzzing"))]
pub mod hostile;
pub mod integrity;
pub mod lazy_snapshotter;
pub mod metadata;
pub mod oom;
pub mod pull;
pub mod runtime;
pub mod server;
pub mod services;
pub mod snapshots;
pub mod trim;
pub mod ttrpc_events;

// The unit tests' hostile-input cases check the largest allocation (see `protocol::fuzzing`).
#[cfg(test)]
#[global_allocator]
static ALLOC: protocol::fuzzing::CountingAlloc = protocol::fuzzing::CountingAlloc;
