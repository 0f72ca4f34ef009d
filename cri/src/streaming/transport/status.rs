//! What goes on the error channel when a remote command ends, in the form the negotiated
//! protocol version expects (client-go's error decoders, tools/remotecommand):
//!
//! - v4 and v5: a metav1.Status as JSON. Success is `{"metadata":{},"status":"Success"}`; a
//!   non-zero exit is a Failure with reason `NonZeroExitCode` and the code as the message of an
//!   `ExitCode` cause (the client parses it as an unsigned 8-bit number); any other error is
//!   kubelet's InternalError status, whose message the client prints.
//! - v1 to v3: nothing on success, else the status message as plain text (the client prints
//!   "error executing remote command: " before it).

use serde::Serialize;

use super::Outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// `channel.k8s.io` (and WebSocket without a subprotocol).
    V1,
    V2,
    /// Adds the resize stream.
    V3,
    /// Adds the Status JSON on the error stream.
    V4,
    /// Adds the CLOSE signal for stdin (WebSocket only).
    V5,
}

/// Longest message we put in a status; a backend's error text can be anything.
const MAX_MESSAGE: usize = 16 << 10;

#[derive(Serialize)]
struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn status(outcome: &Outcome) -> Status {
    match outcome {
        Outcome::Success | Outcome::Exit(0) => Status {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        },
        Outcome::Exit(code) => Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!(
                "command terminated with non-zero exit code: exit status {code}"
            )),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: Some("ExitCode"),
                    message: code.to_string(),
                }],
            }),
            code: None,
        },
        Outcome::Error(msg) => {
            let msg = clip(msg.clone());
            Status {
                metadata: Empty {},
                status: "Failure",
                message: Some(format!("Internal error occurred: {msg}")),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: msg,
                    }],
                }),
                code: Some(500),
            }
        }
    }
}

/// The bytes for the error stream; empty means write nothing.
pub(crate) fn encode(outcome: &Outcome, version: Version) -> Vec<u8> {
    let s = status(outcome);
    if version >= Version::V4 {
        serde_json::to_vec(&s).expect("a Status always serializes")
    } else {
        s.message.unwrap_or_default().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(o: Outcome, v: Version) -> String {
        String::from_utf8(encode(&o, v)).unwrap()
    }

    #[test]
    fn v4_forms_match_kubelets() {
        assert_eq!(
            text(Outcome::Success, Version::V4),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            text(Outcome::Exit(0), Version::V5),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            text(Outcome::Exit(3), Version::V4),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            text(Outcome::Error("no such file".into()), Version::V5),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: no such file","reason":"InternalError","details":{"causes":[{"message":"no such file"}]},"code":500}"#
        );
    }

    #[test]
    fn older_versions_get_plain_text() {
        assert_eq!(text(Outcome::Success, Version::V3), "");
        assert_eq!(
            text(Outcome::Exit(2), Version::V2),
            "command terminated with non-zero exit code: exit status 2"
        );
        assert_eq!(
            text(Outcome::Error("boom".into()), Version::V1),
            "Internal error occurred: boom"
        );
    }

    #[test]
    fn long_messages_are_clipped() {
        let out = encode(&Outcome::Error("é".repeat(MAX_MESSAGE)), Version::V4);
        assert!(out.len() < 3 * MAX_MESSAGE);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }
}
