//! The shim's error: a message with a [`Code`] that goes on the wire unchanged.

use protocol::Code;

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Error {
    pub code: Code,
    pub msg: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: Code, msg: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
        }
    }

    pub fn not_found(msg: impl Into<String>) -> Error {
        Error::new(Code::NotFound, msg)
    }

    pub fn precondition(msg: impl Into<String>) -> Error {
        Error::new(Code::FailedPrecondition, msg)
    }

    /// A failed runc command; `msg` is runc's own message.
    pub fn runc(cmd: &str, msg: String) -> Error {
        Error::new(Code::Unknown, format!("runc {cmd} failed: {msg}"))
    }

    /// True when runc said the process or container is already gone. Kill maps that to
    /// NotFound, which callers read as "already finished" (shared/protocol.md §2.4).
    pub fn is_gone(&self) -> bool {
        [
            "container not running",
            "no such process",
            "does not exist",
            "not exist",
        ]
        .iter()
        .any(|g| self.msg.contains(g))
    }

    pub fn code(&self) -> Code {
        self.code
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        e.code.ttrpc_status(e.msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_gone_messages() {
        assert!(Error::runc("kill", "container not running".into()).is_gone());
        let e = Error::runc("create", "exec: \"nope\": executable file not found".into());
        assert!(!e.is_gone());
        assert_eq!(e.code(), Code::Unknown);
        assert!(e.msg.contains("runc create failed"));
    }
}
