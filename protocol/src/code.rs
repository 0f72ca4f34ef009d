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

/// A ttrpc service set whose methods answer a payload that does not decode as their request
/// with InvalidArgument.
///
/// ttrpc's generated handlers answer it with Unknown ("Unpack request error ..."), as Go's
/// ttrpc does for containerd's shims; it is the caller's mistake, and the class must say so.
/// Found by the shim_ttrpc fuzz target. Every ttrpc server of ours registers its services
/// through this.
#[cfg(feature = "ttrpc")]
pub fn bad_payloads_are_invalid_argument(
    services: std::collections::HashMap<String, ttrpc::r#async::Service>,
) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
    use ttrpc::r#async::{MethodHandler, Service};
    services
        .into_iter()
        .map(|(name, s)| {
            let methods = s
                .methods
                .into_iter()
                .map(|(m, h)| {
                    let h: Box<dyn MethodHandler + Send + Sync> = Box::new(StrictPayload(h));
                    (m, h)
                })
                .collect();
            (
                name,
                Service {
                    methods,
                    streams: s.streams,
                },
            )
        })
        .collect()
}

#[cfg(feature = "ttrpc")]
struct StrictPayload(Box<dyn ttrpc::r#async::MethodHandler + Send + Sync>);

#[cfg(feature = "ttrpc")]
#[async_trait::async_trait]
impl ttrpc::r#async::MethodHandler for StrictPayload {
    async fn handler(
        &self,
        ctx: ttrpc::r#async::TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        match self.0.handler(ctx, req).await {
            // The generated handler's message for a payload it cannot decode. A status goes
            // back as a response (an `Err` from a handler is answered Unknown by the server).
            Err(ttrpc::Error::Others(m)) if m.starts_with("Unpack request error") => {
                let mut resp = ttrpc::Response::new();
                resp.set_status(ttrpc::get_status(
                    Code::InvalidArgument.ttrpc_code(),
                    format!(
                        "the request payload does not decode: {}",
                        m.trim_start_matches("Unpack request error").trim()
                    ),
                ));
                Ok(resp)
            }
            r => r,
        }
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

    /// Found by the shim_ttrpc fuzz target: a payload that does not decode was answered
    /// Unknown. Through `bad_payloads_are_invalid_argument` it is InvalidArgument, and a good
    /// payload still reaches the service.
    #[cfg(feature = "ttrpc")]
    #[test]
    fn a_payload_that_does_not_decode_is_invalid_argument() {
        use crate::fuzzing::ttrpc_wire::{SENTINEL_STREAM, call, request};
        use protobuf::Message;

        struct Events;
        #[async_trait::async_trait]
        impl crate::events_ttrpc::Events for Events {
            async fn forward(
                &self,
                _: &ttrpc::r#async::TtrpcContext,
                _: crate::events::ForwardRequest,
            ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
                Ok(Default::default())
            }
        }
        let dir = crate::fuzzing::TempDir::new("corral-ttrpc-payload");
        let socket = dir.path().join("s.sock");
        let sock = socket.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&sock).unwrap();
                let mut server = ttrpc::r#async::Server::new()
                    .add_listener(listener.into())
                    .register_service(bad_payloads_are_invalid_argument(
                        crate::events_ttrpc::create_events(std::sync::Arc::new(Events)),
                    ));
                server.start().await.unwrap();
                tx.send(()).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap();
        let service = "containerd.services.events.ttrpc.v1.Events";
        let garbage = request(SENTINEL_STREAM, service, "Forward", b"\xff\xff\xff");
        let (code, _) = call(&socket, &garbage);
        assert_eq!(code, Code::InvalidArgument);
        let good = crate::events::ForwardRequest::new()
            .write_to_bytes()
            .unwrap();
        let (code, _) = call(
            &socket,
            &request(SENTINEL_STREAM, service, "Forward", &good),
        );
        assert_eq!(code, Code::Ok);
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
