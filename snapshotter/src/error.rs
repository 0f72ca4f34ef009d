//! Errors of the snapshotter crate and their error classes.
//!
//! Every [`Error`] names the snapshot, path or filter that was wrong and has a class
//! ([`Code`], containerd's errdefs) that survives the wire: the service layer maps
//! [`Error::code`] to a ttrpc/gRPC status.

use std::io;
use std::path::PathBuf;

/// Error class, containerd's errdefs: the project-wide enum of the `protocol` crate.
pub use protocol::Code;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by [`crate::Snapshotter`] implementations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or name is empty or contains a NUL byte.
    #[error("invalid snapshot key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// No snapshot (active, view or committed) has this key.
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },

    /// A snapshot with this key exists already (active and committed keys share one namespace).
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },

    /// `prepare`/`view` named a parent that is not a committed snapshot.
    #[error("parent {parent:?} is {kind}, not committed: only committed snapshots can be parents")]
    ParentNotCommitted { parent: String, kind: crate::Kind },

    /// `commit` named a key that is not an active snapshot (views cannot be committed).
    #[error("snapshot {key:?} is {kind}, not active: only active snapshots can be committed")]
    NotActive { key: String, kind: crate::Kind },

    /// `mounts` of a committed snapshot: only actives and views are mountable.
    #[error("snapshot {key:?} is committed and cannot be mounted: make a view of it")]
    NotMountable { key: String },

    /// `remove` of a snapshot that other snapshots name as their parent.
    #[error(
        "snapshot {key:?} has {children} child snapshot(s) (e.g. {example:?}): remove them first"
    )]
    HasChildren {
        key: String,
        children: usize,
        example: String,
    },

    /// A `walk` filter could not be parsed or names an unknown field.
    #[error("invalid filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },

    /// An `update` field path is not one of `labels` / `labels.<key>`.
    #[error("cannot update field {path:?} of snapshot {key:?}: only labels are mutable")]
    InvalidFieldpath { key: String, path: String },

    /// A label is malformed or too large.
    #[error("invalid label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: String },

    /// A filesystem operation failed.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Another process (or another instance in this one) has the metadata DB open.
    #[error("snapshotter metadata {} is in use by another instance", path.display())]
    Locked { path: PathBuf },

    /// The metadata DB file cannot be opened: damaged (the message names it and why) or
    /// unreadable.
    #[error("snapshotter metadata {0}")]
    Open(durable::OpenError),

    /// The metadata DB failed.
    #[error("snapshotter metadata: {context}: {source}")]
    Db {
        context: String,
        #[source]
        source: Box<redb::Error>,
    },

    /// A stored metadata record cannot be decoded.
    #[error("snapshotter metadata record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },

    /// The host or this backend cannot do what was asked.
    #[error("unsupported: {what}")]
    Unsupported { what: String },

    /// [`crate::staging::Staging::adopt`] onto a snapshot that cannot take the staged layer.
    #[error("cannot adopt a staged layer as snapshot {key:?}: {reason}")]
    CannotAdopt { key: String, reason: &'static str },

    /// Giving a staged layer's implicit directories their parents' attributes failed.
    #[error("staged layer of snapshot {key:?}: {source}")]
    Layer {
        key: String,
        #[source]
        source: crate::apply::ApplyError,
    },
}

impl Error {
    /// The error class, for the wire.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidKey { .. }
            | Error::InvalidFilter { .. }
            | Error::InvalidFieldpath { .. }
            | Error::InvalidLabel { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::ParentNotCommitted { .. }
            | Error::NotActive { .. }
            | Error::NotMountable { .. }
            | Error::HasChildren { .. }
            | Error::CannotAdopt { .. } => Code::FailedPrecondition,
            Error::Layer { source, .. } => source.code(),
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Code::NotFound,
            // A full disk or quota: the caller can free space and retry (containerd's clients
            // get ENOSPC as an unclassified error; the wire has a class for it).
            Error::Io { source, .. } if out_of_space(source) => Code::ResourceExhausted,
            Error::Open(e) => e.code(),
            // A full disk is ResourceExhausted here too.
            Error::Db { source, .. } => durable::code_of(source),
            Error::Io { .. } => Code::Internal,
            Error::Locked { .. } => Code::Unavailable,
            Error::Corrupt { .. } => Code::DataLoss,
            Error::Unsupported { .. } => Code::Unimplemented,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn db<E: Into<redb::Error>>(context: impl Into<String>) -> impl FnOnce(E) -> Error {
        let context = context.into();
        move |e| Error::Db {
            context,
            source: Box::new(e.into()),
        }
    }
}

/// True for ENOSPC and EDQUOT.
pub(crate) fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_containerd_errdefs() {
        let nf = Error::NotFound { key: "k".into() };
        assert_eq!(nf.code(), Code::NotFound);
        assert!(nf.to_string().contains("\"k\""), "{nf}");
        let e = Error::ParentNotCommitted {
            parent: "p".into(),
            kind: crate::Kind::Active,
        };
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            Error::InvalidKey {
                key: String::new(),
                reason: "empty"
            }
            .code(),
            Code::InvalidArgument
        );
        let io_nf = Error::io("open", "/x")(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(io_nf.code(), Code::NotFound);
        assert!(io_nf.to_string().contains("failed to open /x"), "{io_nf}");
        for errno in [28, 122] {
            // ENOSPC, EDQUOT: out of space, naming the path that could not be written.
            let full = Error::io("write", "/root/snap")(io::Error::from_raw_os_error(errno));
            assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
            assert!(full.to_string().contains("/root/snap"), "{full}");
        }
    }
}
