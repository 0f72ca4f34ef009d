//! Ids and names as kubelet expects them: ids are 64 random hex digits (as containerd's), names
//! are built from the CRI metadata so that a retried create finds the name taken.

use std::io::Read;

use protocol::grpc::runtime::v1::{ContainerMetadata, PodSandboxMetadata};

/// 32 random bytes as 64 hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    // getrandom(2) cannot fail for 32 bytes once the pool is initialised; /dev/urandom is the
    // same source and needs no unsafe code.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `<name>_<namespace>_<uid>_<attempt>`, containerd's sandbox name.
pub fn sandbox_name(m: &PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`, containerd's container name.
pub fn container_name(c: &ContainerMetadata, pod: &PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        c.name, pod.name, pod.namespace, pod.uid, c.attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }
}
