//! The wire contract of corral.
//!
//! Our own `.proto` files (in `proto/`) for the parts of containerd 1.6 that the shim and the
//! supervisor speak, compiled at build time. Same package names, message names and field
//! numbers as containerd 1.6, so the real containerd, ctr and `containerd-shim-runc-v2`
//! interoperate with us. This crate holds no behaviour beyond the [`Code`] mapping, the names
//! of corral's own [`annotations`], small helpers to pack messages into `Any`, the log
//! line format ([`logfmt`]) that corrald, corral-cri and the shim share with containerd, and
//! systemd's readiness protocol ([`sd_notify`]) that both daemons speak.
//!
//! Two code families, one per feature, generated from the same files where they overlap:
//!
//! | feature | transport | crates | modules |
//! |---|---|---|---|
//! | `ttrpc` (default) | ttrpc: shim task API, event forwarding | rust-protobuf 3, ttrpc 0.10 | [`shim`], [`shim_ttrpc`], [`events_ttrpc`], [`task_events`], … |
//! | `grpc` | gRPC: the daemon API ctr and CRI call | prost 0.14, tonic 0.14 | `grpc::containerd::services::*::v1`, `grpc::any`, `grpc::unix` |
//! | `cri` (implies `grpc`) | gRPC: the Kubernetes CRI kubelet and crictl call | prost 0.14, tonic 0.14 | `grpc::runtime::v1`, `grpc::corral::cri::v1` |
//!
//! The types are distinct Rust types even where the proto is shared (e.g. `Mount`); with both
//! features, `convert` turns one into the other.

pub mod annotations;
mod code;
#[cfg(all(feature = "grpc", feature = "ttrpc"))]
pub mod convert;
pub mod filters;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(any(test, feature = "fuzzing"))]
pub mod hostile;
#[cfg(feature = "image")]
pub mod image;
pub mod logfmt;
pub mod oci;
pub mod sd_notify;
#[cfg(feature = "ttrpc")]
pub mod ttrpc_gen;

pub use code::Code;
#[cfg(feature = "ttrpc")]
pub use code::bad_payloads_are_invalid_argument;

// The unit tests' hostile-input cases check the largest allocation (see `fuzzing`).
#[cfg(test)]
#[global_allocator]
static ALLOC: fuzzing::CountingAlloc = fuzzing::CountingAlloc;
#[cfg(feature = "ttrpc")]
pub use ttrpc_gen::*;

#[cfg(feature = "ttrpc")]
pub use protobuf;
#[cfg(feature = "ttrpc")]
pub use ttrpc;
