//! Pod networking: network namespaces (and, to come, CNI plugins) for corral-cri's sandboxes.

pub mod netns;

pub use netns::NetNs;
