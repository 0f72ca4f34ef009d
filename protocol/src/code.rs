//! `Code`: our errdefs. Every error in corral has a class, and the class survives the wire.
//!
//! The numbers are gRPC's status codes, shared by ttrpc and gRPC. containerd maps them 1:1 to
//! its errdefs (shared/protocol.md §2.2), and clients depend on it: NotFound from Delete/Kill/
//! State means "already gone", so nothing may answer NotFound by accident.

/// The class of an error, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code for a wire number; numbers outside the table become `Unknown`, as in containerd.
    pub fn from_i32(n: i32) -> Code {
        use Code::*;
        match n {
            0 => Ok,
            1 => Canceled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The ttrpc status for this code and message.
    #[cfg(feature = "ttrpc")]
    pub fn ttrpc_status(self, msg: impl Into<String>) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.ttrpc_code(), msg.into()))
    }

    #[cfg(feature = "ttrpc")]
    fn ttrpc_code(self) -> ttrpc::Code {
        <ttrpc::Code as protobuf::Enum>::from_i32(self as i32).unwrap_or(ttrpc::Code::UNKNOWN)
    }

    #[cfg(feature = "ttrpc")]
    /// The code carried by a ttrpc error; transport failures (closed connection, I/O) count as
    /// `Unavailable` so a caller can tell "the shim is gone" from "the shim said no".
    pub fn of_ttrpc(err: &ttrpc::Error) -> Code {
        match err {
            ttrpc::Error::RpcStatus(s) => Code::from_i32(s.code.value()),
            ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed | ttrpc::Error::Socket(_) => {
                Code::Unavailable
            }
            _ => Code::Unknown,
        }
    }

    /// The gRPC status for this code and message (what ctr prints as `ctr: <message>`).
    #[cfg(feature = "grpc")]
    pub fn grpc_status(self, msg: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), msg)
    }

    /// The same number as a tonic code.
    #[cfg(feature = "grpc")]
    pub fn grpc_code(self) -> tonic::Code {
        tonic::Code::from_i32(self as i32)
    }

    /// The code carried by a gRPC status. tonic reports transport failures (no socket,
    /// connection reset) as `Unavailable` itself, so "the daemon is gone" stays distinct.
    #[cfg(feature = "grpc")]
    pub fn of_grpc(status: &tonic::Status) -> Code {
        Code::from_i32(status.code() as i32)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // containerd's errdefs wording, which clients show and sometimes match on.
        let s = match self {
            Code::Ok => "ok",
            Code::Canceled => "context canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid argument",
            Code::DeadlineExceeded => "context deadline exceeded",
            Code::NotFound => "not found",
            Code::AlreadyExists => "already exists",
            Code::PermissionDenied => "permission denied",
            Code::ResourceExhausted => "resource exhausted",
            Code::FailedPrecondition => "failed precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out of range",
            Code::Unimplemented => "not implemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data loss",
            Code::Unauthenticated => "unauthenticated",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for n in 0..=16 {
            assert_eq!(Code::from_i32(n) as i32, n);
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }

    #[cfg(feature = "ttrpc")]
    #[test]
    fn ttrpc_status_keeps_code_and_message() {
        let err = Code::NotFound.ttrpc_status("process does not exist e1");
        match &err {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code.value(), 5);
                assert_eq!(s.message, "process does not exist e1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(Code::of_ttrpc(&err), Code::NotFound);
        assert_eq!(
            Code::of_ttrpc(&ttrpc::Error::RemoteClosed),
            Code::Unavailable
        );
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_status_keeps_code_and_message() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            let status = code.grpc_status(format!("message {n}"));
            assert_eq!(status.code() as i32, n, "{code:?}");
            assert_eq!(status.message(), format!("message {n}"));
            assert_eq!(Code::of_grpc(&status), code);
        }
        assert_eq!(Code::NotFound.grpc_code(), tonic::Code::NotFound);
        assert_eq!(
            Code::FailedPrecondition.grpc_code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            Code::of_grpc(&tonic::Status::unavailable("connection refused")),
            Code::Unavailable
        );
    }
}
