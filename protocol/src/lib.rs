//! The wire contract of corral.
//!
//! Our own `.proto` files (in `proto/`) for the parts of containerd 1.6 that the shim and the
//! supervisor speak over ttrpc, compiled at build time. Same package names, message names and
//! field numbers as containerd 1.6, so the real containerd, ctr and `containerd-shim-runc-v2`
//! interoperate with us. This crate holds no behaviour beyond the [`Code`] mapping and small
//! helpers to pack messages into `Any`.

mod code;
#[cfg(feature = "ttrpc")]
pub mod ttrpc_gen;

pub use code::Code;
#[cfg(feature = "ttrpc")]
pub use ttrpc_gen::*;

#[cfg(feature = "ttrpc")]
pub use protobuf;
#[cfg(feature = "ttrpc")]
pub use ttrpc;
