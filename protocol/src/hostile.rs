//! Hostile-input properties of this crate (see [`crate::fuzzing`] for how they run): the filter
//! language and the HTTP/2 front of our gRPC servers. Each panics when the property fails.

use crate::Code;
use crate::filters::{Fields, Filters};

/// An object with a few fields, for `Filters::matches`.
struct Object;

impl Fields for Object {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [one] if one == "name" => Some("docker.io/library/busybox:latest".into()),
            [one] if one == "topic" => Some("/tasks/exit".into()),
            [labels, key] if labels == "labels" && key == "a" => Some("b".into()),
            [labels, key] if labels == "labels" && key == "empty" => Some(String::new()),
            _ => None,
        }
    }
}

/// containerd's filter language: each line of the input is one filter of a list.
///
/// Property: the list parses, or fails with InvalidArgument naming the filter that failed;
/// a parsed list matches without panicking; parsing is bounded (regular expressions
/// included).
pub fn filters(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let list: Vec<&str> = text.split('\n').collect();
    match Filters::parse_all(&list) {
        Ok(f) => {
            let _ = f.matches(&Object);
        }
        Err(e) => {
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(
                list.contains(&e.filter.as_str()),
                "the error names {:?}, not one of the filters {list:?}",
                e.filter
            );
            assert!(e.to_string().contains(&format!("{:?}", e.filter)), "{e}");
        }
    }
}

#[cfg(feature = "grpc")]
pub use front::grpc_front;

#[cfg(feature = "grpc")]
mod front {
    use crate::grpc::authority::{Front, MAX_HEADER_BLOCK, MAX_HEADER_LIST, REPLACEMENT_AUTHORITY};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    const SAFE_FRAME: usize = 16_384;

    /// What the front made of a byte stream fed in some way.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        out: Vec<u8>,
        error: Option<String>,
    }

    /// Feeds `input` to a new front in pieces of `chunk` bytes (0: all at once), handing
    /// pass-through bytes around it as the server connection does when `bypass` is set.
    fn feed(input: &[u8], chunk: usize, bypass: bool) -> Outcome {
        let mut front = Front::new();
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            if bypass && let Some(n) = front.passthrough() {
                let n = n.min(rest.len());
                if n > 0 {
                    out.extend_from_slice(&rest[..n]);
                    front.passed(n);
                    rest = &rest[n..];
                    continue;
                }
            }
            let n = if chunk == 0 {
                rest.len()
            } else {
                chunk.min(rest.len())
            };
            if let Err(e) = front.from_client(&rest[..n], &mut out) {
                return Outcome {
                    out,
                    error: Some(e.to_string()),
                };
            }
            rest = &rest[n..];
        }
        Outcome { out, error: None }
    }

    /// The HTTP/2 front (`protocol::grpc::authority`): the first byte of the input is a chunk
    /// size, the rest what a client sends on the socket.
    ///
    /// Property: how the bytes arrive (at once, in chunks, with pass-through) changes nothing;
    /// a stream the front accepts comes out as well-formed frames whose header blocks decode
    /// on their own and carry an `:authority` the HTTP/2 server accepts; output and memory stay
    /// within the front's limits.
    pub fn grpc_front(data: &[u8]) {
        let Some((&chunk, input)) = data.split_first() else {
            return;
        };
        let whole = feed(input, 0, false);
        let pieces = feed(input, usize::from(chunk).max(1), false);
        let bypassed = feed(input, usize::from(chunk).max(1), true);
        assert_eq!(whole, pieces, "fed in chunks of {chunk}");
        assert_eq!(
            whole, bypassed,
            "fed in chunks of {chunk}, with pass-through"
        );
        // A header block grows by at most its list limit when re-encoded; the rest is copied.
        let frames = input.len() / 9 + 1;
        assert!(
            whole.out.len() <= input.len() + frames.min(64) * (MAX_HEADER_LIST + 1024),
            "{} bytes out of {}",
            whole.out.len(),
            input.len()
        );
        if whole.out.starts_with(PREFACE) {
            check_frames(&whole.out[PREFACE.len()..], whole.error.is_none());
        }
    }

    /// The frames the server reads: every complete header block decodes with a fresh decoder
    /// (the front re-encodes without the dynamic table) and its authority is acceptable.
    fn check_frames(mut bytes: &[u8], complete: bool) {
        let mut block: Option<Vec<u8>> = None;
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (kind, flags) = (bytes[3], bytes[4]);
            if bytes.len() < 9 + len {
                // A frame the front is still passing through: only the tail may be cut.
                assert!(!matches!(kind, HEADERS | CONTINUATION) || !complete);
                return;
            }
            let payload = &bytes[9..9 + len];
            bytes = &bytes[9 + len..];
            match kind {
                HEADERS | CONTINUATION => {
                    assert!(len <= SAFE_FRAME, "a header frame of {len} bytes");
                    let mut fragment = payload;
                    if kind == HEADERS {
                        assert_eq!(flags & PADDED, 0, "the front drops padding");
                        assert!(block.is_none(), "HEADERS inside a header block");
                        if flags & PRIORITY != 0 {
                            fragment = &fragment[5..];
                        }
                        block = Some(Vec::new());
                    }
                    let b = block.as_mut().expect("CONTINUATION after HEADERS");
                    b.extend_from_slice(fragment);
                    if flags & END_HEADERS != 0 {
                        let b = block.take().expect("a block");
                        assert!(b.len() <= MAX_HEADER_BLOCK + MAX_HEADER_LIST);
                        let fields = loona_hpack::Decoder::new()
                            .decode(&b)
                            .expect("a re-encoded header block decodes on its own");
                        for (name, value) in fields {
                            if name == b":authority" && value != REPLACEMENT_AUTHORITY {
                                let ok = std::str::from_utf8(&value).ok().is_some_and(|v| {
                                    v.parse::<tonic::codegen::http::uri::Authority>().is_ok()
                                });
                                assert!(ok, "authority {value:?} passed to the server");
                            }
                        }
                    }
                }
                _ => assert!(block.is_none(), "frame {kind:#x} inside a header block"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::{Target, run};

    #[test]
    fn filters() {
        run(
            &Target {
                name: "filters",
                cases: 20_000,
                max_alloc: 1 << 20,
                dict: &[
                    b"==", b"!=", b"~=", b",", b".", b"labels.", b"\"", b"/", b"|", b"\\x41",
                    b"\\u00e9", b"\\", b"(", b"*", b"{1000}", b"[",
                ],
            },
            super::filters,
        );
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_front() {
        run(
            &Target {
                name: "grpc_front",
                cases: 20_000,
                max_alloc: 4 << 20,
                dict: &[
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                    &[0, 0, 0, 1, 4, 0, 0, 0, 1],
                    &[0, 0, 0, 9, 4, 0, 0, 0, 1],
                    &[0x41],
                    &[0x3f, 0xe1, 0x1f],
                    &[0xff, 0xff, 0xff, 0xff, 0x0f],
                    b"%2F",
                ],
            },
            super::grpc_front,
        );
    }
}
