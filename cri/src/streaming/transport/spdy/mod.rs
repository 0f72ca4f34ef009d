//! SPDY/3.1 for kubelet's streaming clients.

pub(crate) mod dictionary;
pub(crate) mod frame;
pub(crate) mod headers;
