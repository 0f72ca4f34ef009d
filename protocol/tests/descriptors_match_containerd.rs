//! Our .proto files against containerd 1.6's own: every message, enum and service we define
//! must have exactly the fields (number, name, type, label, message type), values and methods
//! that containerd compiled in.
//!
//! The reference is the real `ctr` binary: Go protobuf code embeds each file's descriptor,
//! gzipped, so `/usr/bin/ctr` (containerd 1.6) carries the authoritative wire contract for the
//! daemon API, the events, the shim task API, runc options and cgroups metrics. We find those
//! gzip members, decode them as `FileDescriptorProto`s and compare with what protox makes of
//! `proto/`. Field *names* are compared too: they are not on the wire, but a renamed field is
//! how a wrong number usually starts.

mod common;

use std::path::PathBuf;

use common::Index;

/// Fields we define that containerd 1.6 does not know, on purpose. Unknown fields are skipped
/// by every protobuf decoder, so these cost 1.6 nothing.
const KNOWN_EXTRAS: &[(&str, &str)] = &[
    // From newer containerd/cgroups (the v2 memory peak), which containerd 1.7+ reads.
    (
        "io.containerd.cgroups.v2.MemoryStat",
        "36 max_usage Uint64 Optional ",
    ),
    (
        "io.containerd.cgroups.v2.MemoryStat",
        "37 swap_max_usage Uint64 Optional ",
    ),
];

#[test]
fn our_protos_match_the_ones_compiled_into_ctr() {
    let ctr =
        PathBuf::from(std::env::var_os("CORRAL_CTR").unwrap_or_else(|| "/usr/bin/ctr".into()));
    let binary = std::fs::read(&ctr).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; this test needs containerd 1.6's ctr (Debian package \
             `containerd`), or CORRAL_CTR pointing at it",
            ctr.display()
        )
    });
    let mut theirs = Index::default();
    for file in common::gzipped_descriptors(&binary) {
        theirs.add_file(&file);
    }
    assert!(
        theirs
            .services
            .contains_key("containerd.services.tasks.v1.Tasks"),
        "no containerd descriptors found in {}",
        ctr.display()
    );

    let mut ours = Index::default();
    for file in common::our_descriptors()
        .iter()
        // corral's own API (`corral.*`) is not containerd's; the CRI (`runtime.v1`) and the
        // gRPC health service are checked against crictl (cri_descriptors_match_crictl.rs):
        // containerd 1.6's grpc-go predates the health service's List method.
        .filter(|f| {
            !f.package().starts_with("corral.")
                && !f.package().starts_with("runtime.")
                && !f.package().starts_with("grpc.health.")
        })
    {
        ours.add_file(file);
    }

    // Sanity: the comparison covers both families and the odd image-event package.
    for name in [
        "containerd.task.v2.Task",
        "containerd.services.events.ttrpc.v1.Events",
        "containerd.services.content.v1.Content",
        "containerd.services.introspection.v1.Introspection",
    ] {
        assert!(
            ours.services.contains_key(name),
            "{name} not compiled from proto/"
        );
    }
    assert!(
        ours.messages
            .contains_key("containerd.services.images.v1.ImageCreate")
    );
    assert!(
        ours.messages
            .contains_key("containerd.events.ContainerCreate.Runtime")
    );

    let problems = common::differences(&ours, &theirs, "containerd 1.6", KNOWN_EXTRAS);
    assert!(
        problems.is_empty(),
        "{} differences from containerd 1.6:\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!(
        "checked {} messages, {} enums, {} services against {}",
        ours.messages.len(),
        ours.enums.len(),
        ours.services.len(),
        ctr.display()
    );
}
