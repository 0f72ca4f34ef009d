//! WebSocket (RFC 6455) for kubelet's streaming clients.

pub(crate) mod frame;
