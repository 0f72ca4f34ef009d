//! Errors of the content store, each with a [`Code`] class that survives the wire.

use std::path::PathBuf;

/// Error class, as containerd's errdefs: the project-wide enum of the `protocol` crate.
pub use protocol::Code;

/// Every error a [`crate::ContentStore`] returns. Messages name the object and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: &'static str },

    #[error("content {0} not found")]
    NotFound(crate::Digest),

    #[error("content {0} already exists")]
    AlreadyExists(crate::Digest),

    #[error("ingest ref {0:?} not found")]
    RefNotFound(String),

    #[error("ingest ref {0:?} is locked by another writer")]
    RefLocked(String),

    #[error("unexpected commit size for ref {ref_:?}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        ref_: String,
        expected: u64,
        actual: u64,
    },

    #[error("unexpected commit digest for ref {ref_:?}: expected {expected}, got {actual}")]
    DigestMismatch {
        ref_: String,
        expected: crate::Digest,
        actual: crate::Digest,
    },

    #[error("ref {ref_:?} was opened with {what} {stored}, now given {given}")]
    ExpectationConflict {
        ref_: String,
        what: &'static str,
        stored: String,
        given: String,
    },

    #[error("write to ref {ref_:?} at offset {offset}, but it holds {current} bytes")]
    WriteOffset {
        ref_: String,
        offset: u64,
        current: u64,
    },

    #[error("read of {digest} at offset {offset} is past its end ({size} bytes)")]
    ReadPastEnd {
        digest: crate::Digest,
        offset: u64,
        size: u64,
    },

    #[error("writer for ref {0:?} is closed (already committed)")]
    WriterClosed(String),

    #[error("truncate of ref {ref_:?} to {size} bytes: only truncation to 0 is supported")]
    TruncateUnsupported { ref_: String, size: u64 },

    #[error("invalid filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The disk ran out of space (or quota) while an ingest was written; the ingest was
    /// removed so that its bytes do not keep the disk full.
    #[error(
        "no space left for ingest {ref_:?} on the disk of {}: {source} (the partial ingest was removed)",
        path.display()
    )]
    IngestOutOfSpace {
        ref_: String,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The label database failed; `code` classifies the cause (a full disk is
    /// ResourceExhausted).
    #[error("label database {}: {message}", path.display())]
    Database {
        path: PathBuf,
        code: Code,
        message: String,
    },

    #[error("content root {} holds {what}", path.display())]
    Corrupt { path: PathBuf, what: String },

    /// A blob read to its end hashed to something else than its digest: its file is damaged.
    #[error("content {digest} is damaged on disk: its bytes hash to {actual}")]
    Damaged {
        digest: crate::Digest,
        actual: crate::Digest,
    },
}

impl Error {
    /// The class of this error, for the service layer to turn into a ttrpc/gRPC status.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidDigest { .. }
            | Error::InvalidFilter { .. }
            | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) | Error::RefNotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::RefLocked(_) => Code::Unavailable,
            // containerd answers "unexpected commit size/digest" with FailedPrecondition.
            Error::SizeMismatch { .. }
            | Error::DigestMismatch { .. }
            | Error::ExpectationConflict { .. }
            | Error::WriterClosed(_) => Code::FailedPrecondition,
            Error::WriteOffset { .. } | Error::ReadPastEnd { .. } => Code::OutOfRange,
            Error::TruncateUnsupported { .. } => Code::Unimplemented,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                // A full disk or quota: the client can free space and retry.
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    Code::ResourceExhausted
                }
                _ => Code::Internal,
            },
            Error::IngestOutOfSpace { .. } => Code::ResourceExhausted,
            Error::Database { code, .. } => *code,
            Error::Corrupt { .. } | Error::Damaged { .. } => Code::DataLoss,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<protocol::filters::ParseError> for Error {
    fn from(e: protocol::filters::ParseError) -> Error {
        Error::InvalidFilter {
            filter: e.filter,
            reason: e.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_resource_exhausted_and_names_the_path() {
        for errno in [28, 122] {
            // ENOSPC, EDQUOT.
            let full =
                Error::io("write", "/root/ingest/data")(std::io::Error::from_raw_os_error(errno));
            assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
            assert!(full.to_string().contains("/root/ingest/data"), "{full}");
        }
        let other = Error::io("write", "/x")(std::io::Error::from_raw_os_error(5));
        assert_eq!(other.code(), Code::Internal);
        let ingest = Error::IngestOutOfSpace {
            ref_: "ns/layer-1".into(),
            path: "/disk/ingest/ab/data".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(ingest.code(), Code::ResourceExhausted);
        let msg = ingest.to_string();
        assert!(
            msg.contains("/disk/ingest/ab/data") && msg.contains("removed"),
            "{msg}"
        );
    }
}
