//! `corral-cri`: the Kubernetes Container Runtime Interface (`runtime.v1`) served on a unix
//! socket, implemented as an ordinary client of corrald's public gRPC API — as the standalone
//! cri-containerd once was. kubelet (or crictl) talks CRI to us; we talk containerd's API to
//! corrald, in one namespace (`k8s.io`). corral-cri never reaches into corrald's internals and
//! keeps no database: pods and containers are corrald containers whose labels and extensions
//! carry the CRI records, so `ctr -n k8s.io containers ls` shows them and a restarted
//! corral-cri rebuilds its whole view by asking corrald.
//!
//! What lives where:
//!
//! ```text
//!  kubelet / crictl ──CRI──▶ corral-cri ──containerd API──▶ corrald ──ttrpc──▶ shim ──▶ runc
//!                              │                              (records, images,   (one per
//!                              │                               snapshots, tasks)   container;
//!                              ▼                                                    writes the
//!                    <root>/netns/<pod>        network namespaces (bind mounts)     CRI log)
//!                    <root>/sandboxes/<pod>/   hostname, hosts, resolv.conf, shm/
//!                    CNI plugins               pod networking (ADD/CHECK/DEL)
//! ```
//!
//! corrald owns everything that must outlive us: the records, the image store, the tasks and
//! their shims. Our shim writes container logs itself, so logging goes on while corral-cri and
//! corrald are both down. What corral-cri holds in memory is a cache of corrald's records, and
//! what corrald cannot know (network namespaces, per-pod files) is on disk under `--root`,
//! named by pod id, so that start-up can match the two and remove what no record accounts for.

pub mod config;
pub mod container;
pub mod core;
pub mod corrald;
pub mod error;
pub mod events;
pub mod host;
#[cfg(any(test, feature = "fuzzing"))]
pub mod hostile;
pub mod ids;
pub mod image;
pub mod monitor;
pub mod network;
pub mod oci;
pub mod records;
mod recover;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod system;

// The unit tests' hostile-input cases check the largest allocation (see `protocol::fuzzing`).
#[cfg(test)]
#[global_allocator]
static ALLOC: protocol::fuzzing::CountingAlloc = protocol::fuzzing::CountingAlloc;
