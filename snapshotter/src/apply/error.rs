//! Errors of layer apply and diff.

use std::io;

use crate::error::Code;

/// Why a layer could not be applied (or a diff not produced).
///
/// Every variant names the offending path or object; `code()` classifies it for the wire.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A path in the layer is unusable: `..`, escaping absolute path, overlong, NUL, empty name.
    #[error("invalid path {path:?} in layer: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A parent component of an entry (or of a hardlink target) is a symlink; we never follow them.
    #[error(
        "refusing {path:?}: component {component:?} is a symlink (writes through symlinks are not allowed)"
    )]
    SymlinkInPath { path: String, component: String },
    /// A parent component exists but is not a directory.
    #[error("refusing {path:?}: component {component:?} is not a directory")]
    NotADirectory { path: String, component: String },
    /// A hardlink entry points at something we refuse to link.
    #[error("invalid hardlink {path:?} -> {target:?}: {reason}")]
    BadHardlink {
        path: String,
        target: String,
        reason: String,
    },
    /// The kernel refuses an extended attribute the layer carries (a malformed
    /// `security.capability` or ACL, an overlong name or value).
    #[error("xattr {key:?} of {path:?} in layer: {source}")]
    BadXattr {
        path: String,
        key: String,
        #[source]
        source: io::Error,
    },
    /// Creating this entry needs privileges we do not have.
    #[error("{what} {path:?} requires running as root")]
    NeedsRoot { what: &'static str, path: String },
    /// The layer holds an entry type we do not extract.
    #[error("unsupported tar entry type {kind} for {path:?}")]
    UnsupportedEntry { path: String, kind: String },
    /// The media type names a format we do not decode.
    #[error("unsupported layer media type {media_type:?}")]
    UnsupportedMediaType { media_type: String },
    /// The media type and the stream's magic bytes disagree.
    #[error("layer media type {media_type:?} says {expected} but the data looks like {found}")]
    MediaTypeMismatch {
        media_type: String,
        expected: &'static str,
        found: &'static str,
    },
    /// The stream is not a valid (compressed) tar.
    #[error("corrupt layer: {context}: {source}")]
    Corrupt {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Reading the layer stream failed (not a format problem).
    #[error("reading layer stream: {0}")]
    Read(#[source] io::Error),
    /// Writing the diff stream failed.
    #[error("writing diff stream: {0}")]
    Write(#[source] io::Error),
    /// The mounts cannot be used as an apply/diff target.
    #[error("unsupported mounts for {op}: {reason}")]
    BadMounts { op: &'static str, reason: String },
    /// A filesystem operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ApplyError {
    /// The error class, for mapping onto the wire.
    pub fn code(&self) -> Code {
        match self {
            ApplyError::InvalidPath { .. }
            | ApplyError::SymlinkInPath { .. }
            | ApplyError::NotADirectory { .. }
            | ApplyError::BadHardlink { .. }
            | ApplyError::BadXattr { .. }
            | ApplyError::MediaTypeMismatch { .. }
            | ApplyError::Corrupt { .. }
            | ApplyError::BadMounts { .. } => Code::InvalidArgument,
            ApplyError::NeedsRoot { .. } => Code::FailedPrecondition,
            ApplyError::UnsupportedEntry { .. } | ApplyError::UnsupportedMediaType { .. } => {
                Code::Unimplemented
            }
            ApplyError::Read(_) | ApplyError::Write(_) => Code::Unavailable,
            // A layer that fills the disk: the caller may free space and retry.
            ApplyError::Io { source, .. } if crate::error::out_of_space(source) => {
                Code::ResourceExhausted
            }
            ApplyError::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => Code::NotFound,
                io::ErrorKind::AlreadyExists => Code::AlreadyExists,
                // The snapshot's disk is full: the client can free space and unpack again.
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    Code::ResourceExhausted
                }
                _ => Code::Internal,
            },
        }
    }

    /// The error with a path inside the layer made a path under `root`, the directory the
    /// layer was applied to: a full disk is then named by the message.
    pub(crate) fn under(self, root: &std::path::Path) -> Self {
        match self {
            ApplyError::Io { op, path, source } if !path.starts_with('/') => ApplyError::Io {
                op,
                path: root.join(&path).display().to_string(),
                source,
            },
            e => e,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl AsRef<[u8]>, source: io::Error) -> Self {
        ApplyError::Io {
            op,
            path: String::from_utf8_lossy(path.as_ref()).into_owned(),
            source,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = ApplyError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk while applying is ResourceExhausted, and the message names the file on
    /// that disk, not only its path inside the layer.
    #[test]
    fn out_of_space_names_the_file_under_the_apply_root() {
        let e = ApplyError::io("write", "tmp/big", io::Error::from_raw_os_error(28))
            .under(std::path::Path::new("/disk/snapshots/3/fs"));
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            e.to_string().contains("/disk/snapshots/3/fs/tmp/big"),
            "{e}"
        );
        let root = ApplyError::io("open apply root", "/abs", io::Error::from_raw_os_error(5))
            .under(std::path::Path::new("/elsewhere"));
        assert!(root.to_string().contains("\"/abs\""), "{root}");
        assert_eq!(root.code(), Code::Internal);
    }

    /// Found by the layer fuzz target: a layer that filled the disk was answered Internal.
    #[test]
    fn a_full_disk_is_resource_exhausted() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = ApplyError::io("write", "big", io::Error::from_raw_os_error(errno));
            assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
            assert!(e.to_string().contains("\"big\""), "{e}");
        }
        let other = ApplyError::io("write", "f", io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(other.code(), Code::Internal);
    }
}
