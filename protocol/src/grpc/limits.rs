//! Message size limits as containerd's, and the error a message past them gets.
//!
//! containerd serves its API with grpc-go limited to 16 MiB per message each way (its `[grpc]
//! max_recv_message_size` and `max_send_message_size`, and what ctr and the Go client dial
//! with). A message past the limit fails the call with ResourceExhausted and grpc-go's text
//! (`grpc: received message larger than max (N vs. M)`), which clients test for. tonic checks
//! the same limits (before allocating the message: a 4 GiB length prefix costs nothing) but
//! answers OutOfRange with a message of its own; [`SizeErrorLayer`] turns those answers into
//! grpc-go's, whether the status travels in the response headers (a refused request) or in the
//! trailers (a response too large to send, or a streaming request that grew too large).
//!
//! ```ignore
//! Server::builder()
//!     .layer(SizeErrorLayer)
//!     .add_service(VersionServer::new(svc)
//!         .max_decoding_message_size(limits.recv)
//!         .max_encoding_message_size(limits.send))
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::Frame;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tonic::codegen::{Bytes, StdError};

/// containerd's default for both directions (`defaults.DefaultMaxRecvMsgSize`).
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// The largest limit that can be configured: grpc-go's are `int` and gRPC's length prefix is
/// 32 bits; containerd's config cannot say more either.
pub const MAX_CONFIGURABLE: usize = i32::MAX as usize;

/// A server's message limits, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    /// The largest request message accepted.
    pub recv: usize,
    /// The largest response message sent.
    pub send: usize,
}

impl Default for MessageLimits {
    fn default() -> MessageLimits {
        MessageLimits {
            recv: DEFAULT_MAX_MESSAGE,
            send: DEFAULT_MAX_MESSAGE,
        }
    }
}

impl MessageLimits {
    /// Limits from a config's `max_recv_message_size` and `max_send_message_size`, where 0
    /// means the default (as an absent key in containerd's config). An error names the key.
    pub fn from_config(recv: usize, send: usize) -> Result<MessageLimits, String> {
        let pick = |key: &str, v: usize| match v {
            0 => Ok(DEFAULT_MAX_MESSAGE),
            v if v > MAX_CONFIGURABLE => Err(format!(
                "grpc.{key} = {v}: at most {MAX_CONFIGURABLE} bytes (2 GiB - 1)"
            )),
            v => Ok(v),
        };
        Ok(MessageLimits {
            recv: pick("max_recv_message_size", recv)?,
            send: pick("max_send_message_size", send)?,
        })
    }
}

const OUT_OF_RANGE: &[u8] = b"11";
const RESOURCE_EXHAUSTED: &str = "8";
const STATUS: &str = "grpc-status";
const MESSAGE: &str = "grpc-message";

/// grpc-go's message for what tonic reports as `message` (percent-decoded), if it is one of
/// tonic's size errors.
fn grpc_go_message(message: &str) -> Option<String> {
    let (prefix, theirs) = if let Some(rest) =
        message.strip_prefix("Error, decoded message length too large: found ")
    {
        (rest, "grpc: received message larger than max")
    } else if let Some(rest) =
        message.strip_prefix("Error, encoded message length too large: found ")
    {
        (rest, "grpc: trying to send message larger than max")
    } else {
        return None;
    };
    // "<len> bytes, the limit is: <limit> bytes"
    let (len, rest) = prefix.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (len, limit): (u64, u64) = (len.parse().ok()?, limit.parse().ok()?);
    Some(format!("{theirs} ({len} vs. {limit})"))
}

/// Decodes a `grpc-message` value (gRPC percent-encodes bytes outside printable ASCII, and
/// `%`).
fn percent_decode(v: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%'
            && i + 2 < v.len()
            && let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Rewrites a status carried in `map` (headers or trailers) if it is a tonic size error.
fn rewrite(map: &mut HeaderMap) {
    if map.get(STATUS).map(HeaderValue::as_bytes) != Some(OUT_OF_RANGE) {
        return;
    }
    let Some(message) = map.get(MESSAGE).map(|m| percent_decode(m.as_bytes())) else {
        return;
    };
    let Some(theirs) = grpc_go_message(&message) else {
        return;
    };
    // Printable ASCII only: nothing to encode.
    if let Ok(v) = HeaderValue::from_str(&theirs) {
        map.insert(STATUS, HeaderValue::from_static(RESOURCE_EXHAUSTED));
        map.insert(MESSAGE, v);
    }
}

/// A tower layer for a tonic server: see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeErrorLayer;

/// The layers of a server builder that added only [`SizeErrorLayer`]: what its `Router` is
/// generic over, for functions that return one.
pub type SizeErrorLayers = tower::layer::util::Stack<SizeErrorLayer, tower::layer::util::Identity>;

impl<S> tower::Layer<S> for SizeErrorLayer {
    type Service = SizeErrors<S>;

    fn layer(&self, inner: S) -> SizeErrors<S> {
        SizeErrors(inner)
    }
}

/// The service [`SizeErrorLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct SizeErrors<S>(S);

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for SizeErrors<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let (mut parts, body) = answer.await?.into_parts();
            // A request refused before any service code ran: the status is in the headers
            // of a trailers-only answer.
            rewrite(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                tonic::body::Body::new(Trailers(Box::pin(body))),
            ))
        })
    }
}

/// A response body whose trailers go through [`rewrite`].
struct Trailers<B>(Pin<Box<B>>);

impl<B> http_body::Body for Trailers<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut frame = ready!(self.0.as_mut().poll_frame(cx));
        if let Some(Ok(f)) = frame.as_mut()
            && let Some(t) = f.trailers_mut()
        {
            rewrite(t);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_size_errors_become_grpc_gos() {
        assert_eq!(
            grpc_go_message(
                "Error, decoded message length too large: found 17825792 bytes, the limit is: \
                 16777216 bytes"
            )
            .as_deref(),
            Some("grpc: received message larger than max (17825792 vs. 16777216)")
        );
        assert_eq!(
            grpc_go_message(
                "Error, encoded message length too large: found 20 bytes, the limit is: 10 bytes"
            )
            .as_deref(),
            Some("grpc: trying to send message larger than max (20 vs. 10)")
        );
        for other in [
            "index out of range",
            "Error, decoded message length too large: found x bytes, the limit is: 1 bytes",
            "Error, decoded message length too large: found 5 bytes",
        ] {
            assert_eq!(grpc_go_message(other), None, "{other}");
        }
    }

    #[test]
    fn only_tonics_size_statuses_are_rewritten() {
        let mut m = HeaderMap::new();
        m.insert(STATUS, HeaderValue::from_static("11"));
        m.insert(
            MESSAGE,
            HeaderValue::from_static(
                "Error, decoded message length too large: found 2000 bytes, the limit is: 1000 bytes",
            ),
        );
        rewrite(&mut m);
        assert_eq!(m[STATUS], "8");
        assert_eq!(
            m[MESSAGE],
            "grpc: received message larger than max (2000 vs. 1000)"
        );

        // Our own OutOfRange errors, and other codes, pass untouched.
        let mut ours = HeaderMap::new();
        ours.insert(STATUS, HeaderValue::from_static("11"));
        ours.insert(MESSAGE, HeaderValue::from_static("offset 9 past the end"));
        let before = ours.clone();
        rewrite(&mut ours);
        assert_eq!(ours, before);
        let mut other = HeaderMap::new();
        other.insert(STATUS, HeaderValue::from_static("13"));
        other.insert(
            MESSAGE,
            HeaderValue::from_static(
                "Error, decoded message length too large: found 2 bytes, the limit is: 1 bytes",
            ),
        );
        let before = other.clone();
        rewrite(&mut other);
        assert_eq!(other, before);
    }

    #[test]
    fn messages_are_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%25c"), "a b%c");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }

    #[test]
    fn config_values() {
        assert_eq!(
            MessageLimits::from_config(0, 0).unwrap(),
            MessageLimits::default()
        );
        assert_eq!(
            MessageLimits::from_config(1024, 2048).unwrap(),
            MessageLimits {
                recv: 1024,
                send: 2048
            }
        );
        let e = MessageLimits::from_config(0, usize::MAX).unwrap_err();
        assert!(e.contains("max_send_message_size"), "{e}");
    }
}
