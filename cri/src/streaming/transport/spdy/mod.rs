//! SPDY/3.1 server sessions as kubelet's clients open them (client-go over moby/spdystream):
//! after the HTTP upgrade the client opens one stream per purpose with SYN_STREAM, naming it in
//! a `streamType` header, and we answer each with SYN_REPLY.
//!
//! - exec/attach: `error`, then `stdin`, `stdout`, `stderr` (not with a tty), `resize` (tty,
//!   v3 and later). Once every stream the options ask for is there, the backend gets them.
//! - port-forward: per forwarded connection a pair, `error` and `data`, both carrying `port`
//!   and the same `requestID`; each complete pair goes to the backend.
//!
//! Flow control: we grant the default 64 KiB window per stream and connection and announce
//! what the backend consumes with WINDOW_UPDATE; our own sending honours the peer's window
//! only once the peer has shown it keeps one (see [`super::mux`]).

pub(crate) mod dictionary;
pub(crate) mod frame;
pub(crate) mod headers;
mod session;

pub(crate) use session::{Mode, Ready, start};
