//! corral-cri's error: a code that survives the wire (kubelet and crictl branch on NotFound,
//! InvalidArgument, ...) and a message that names the object and the cause.
//!
//! Errors from corrald keep corrald's code, so "container not found" stays NotFound all the
//! way to kubelet, and the message gets our context in front (`start container <id>: ...`).

use protocol::Code;
use protocol::grpc::tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Code::NotFound, message)
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Code::InvalidArgument, message)
    }

    pub fn precondition(message: impl Into<String>) -> Error {
        Error::new(Code::FailedPrecondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Code::Internal, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Error {
        Error::new(Code::Unimplemented, message)
    }

    pub fn is_not_found(&self) -> bool {
        self.code == Code::NotFound
    }

    /// The same error with `what` in front of its message.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        Error {
            code: self.code,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        let code = Code::of_grpc(&s);
        let message = match (code, s.message()) {
            (Code::Unavailable, m) => format!("corrald is not reachable: {m}"),
            (_, "") => format!("{code:?}"),
            (_, m) => m.to_string(),
        };
        Error { code, message }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.code.grpc_status(e.message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::AlreadyExists => Code::AlreadyExists,
            std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            std::io::ErrorKind::InvalidInput => Code::InvalidArgument,
            _ => Code::Internal,
        };
        Error::new(code, e.to_string())
    }
}

/// `.context()` on results, like anyhow's, but keeping the code.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }

    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_context_and_the_wire() {
        let e: std::result::Result<(), Status> = Err(Status::not_found("container x: not found"));
        let e = e.context("start container x").unwrap_err();
        assert_eq!(e.code, Code::NotFound);
        assert_eq!(e.message, "start container x: container x: not found");
        let s: Status = e.into();
        assert_eq!(s.code(), protocol::grpc::tonic::Code::NotFound);

        let e: Error = Status::unavailable("").into();
        assert!(e.message.contains("not reachable"), "{e}");
        let e: Error = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        assert!(e.is_not_found());
    }
}
