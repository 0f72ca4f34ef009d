//! The containerd 1.6 daemon gRPC API: prost messages, tonic clients and servers.
//!
//! Generated at build time from our own `proto/` files; the module tree mirrors the proto
//! packages (`containerd.services.tasks.v1` → [`containerd::services::tasks::v1`]), which is
//! what ctr and the containerd client library see on the wire.
//!
//! Every generated server trait has default method bodies answering `Unimplemented`, so a
//! service implements what it supports and nothing answers by accident.
//!
//! With feature `cri`, the same tree also holds the Kubernetes CRI (`runtime::v1`:
//! `runtime_service_server`, `image_service_client`, ...) and corral-cri's on-disk records
//! (`corral::cri::v1`).

// `deprecated`: CRI marks a few fields deprecated (e.g. `seccomp_profile_path`) and prost turns
// that into `#[deprecated]`, which the generated code itself then touches.
#[allow(
    clippy::all,
    clippy::pedantic,
    deprecated,
    missing_docs,
    rustdoc::all,
    unused_qualifications
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/grpc/mod.rs"));
}

pub use generated::*;

pub mod any;
pub mod authority;
pub mod client;
pub mod health;
pub mod limits;
pub mod unix;

pub use prost;
pub use prost_types;
pub use tonic;
