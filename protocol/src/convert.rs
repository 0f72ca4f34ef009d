//! Conversions between the two generated type families (rust-protobuf for ttrpc, prost for
//! gRPC) for messages that share a .proto file or an identical layout: Mount, Process, the
//! task events, Envelope (ttrpc events ↔ gRPC events), Timestamp, Any.
//!
//! Conversion is by the wire: encode with one library, decode with the other. No field list
//! to keep in sync by hand, and `tests/descriptors_match_containerd.rs` already proves both
//! sides have containerd's layout. Only messages with the same layout may be transcoded; a
//! mismatch shows up as a decode error or as lost fields, never as UB.
//!
//! ```
//! use protocol::convert::to_prost;
//! use protocol::grpc::containerd::types::Mount;
//!
//! let mut m = protocol::mount::Mount::new();
//! m.type_ = "overlay".into();
//! let m: Mount = to_prost(&m).unwrap();
//! assert_eq!(m.r#type, "overlay");
//! ```

use crate::Code;

/// A rust-protobuf message as the prost message with the same layout.
pub fn to_prost<B: prost::Message + Default>(
    msg: &impl protobuf::Message,
) -> Result<B, TranscodeError> {
    let bytes = msg.write_to_bytes().map_err(TranscodeError::Encode)?;
    B::decode(bytes.as_slice()).map_err(TranscodeError::Decode)
}

/// A prost message as the rust-protobuf message with the same layout.
pub fn to_protobuf<B: protobuf::Message>(msg: &impl prost::Message) -> Result<B, TranscodeError> {
    B::parse_from_bytes(&msg.encode_to_vec()).map_err(TranscodeError::Parse)
}

/// A transcoding failure means the two types do not share a layout: a bug, hence Internal.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("failed to encode rust-protobuf message: {0}")]
    Encode(#[source] protobuf::Error),
    #[error("failed to decode as prost message: {0}")]
    Decode(#[source] prost::DecodeError),
    #[error("failed to decode as rust-protobuf message: {0}")]
    Parse(#[source] protobuf::Error),
}

impl TranscodeError {
    pub fn code(&self) -> Code {
        Code::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::containerd::services::events::v1 as grpc_events;
    use crate::grpc::containerd::v1::types as grpc_types;
    use crate::grpc::{any, containerd::events::TaskExit};
    use protobuf::well_known_types::{any::Any, timestamp::Timestamp};

    #[test]
    fn ttrpc_envelope_becomes_grpc_envelope() {
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "e1".into(),
            pid: 4242,
            exit_status: 137,
            exited_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
        };
        let packed = any::pack(any::TASK_EXIT, &exit);
        let mut env = crate::events::Envelope::new();
        env.timestamp = protobuf::MessageField::some(Timestamp {
            seconds: 1_700_000_001,
            nanos: 7,
            ..Default::default()
        });
        env.namespace = "ns".into();
        env.topic = "/tasks/exit".into();
        env.event = protobuf::MessageField::some(Any {
            type_url: packed.type_url.clone(),
            value: packed.value.clone(),
            ..Default::default()
        });

        let out: grpc_events::Envelope = to_prost(&env).unwrap();
        assert_eq!(out.namespace, "ns");
        assert_eq!(out.topic, "/tasks/exit");
        assert_eq!(out.timestamp.unwrap().nanos, 7);
        let event: TaskExit = any::unpack(out.event.as_ref().unwrap(), any::TASK_EXIT).unwrap();
        assert_eq!(event, exit);

        let back: crate::events::Envelope = to_protobuf(&out).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn process_keeps_status_enum_and_exit() {
        let p = grpc_types::Process {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 9,
            status: grpc_types::Status::Stopped as i32,
            exit_status: 3,
            terminal: true,
            ..Default::default()
        };
        let t: crate::task::Process = to_protobuf(&p).unwrap();
        assert_eq!(t.status.enum_value(), Ok(crate::task::Status::STOPPED));
        assert_eq!((t.pid, t.exit_status, t.terminal), (9, 3, true));
        assert_eq!(to_prost::<grpc_types::Process>(&t).unwrap(), p);
    }

    #[test]
    fn a_different_layout_is_an_error() {
        // Field 1 of Mount is a string; as a google.protobuf.Timestamp it is not an int64.
        let mut m = crate::mount::Mount::new();
        m.type_ = "bind".into();
        let err = to_prost::<prost_types::Timestamp>(&m).unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
}
