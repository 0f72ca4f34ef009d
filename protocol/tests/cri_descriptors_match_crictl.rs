//! Our CRI .proto (`proto/cri/runtime/v1/api.proto`) against the one Kubernetes compiled into
//! crictl: every message, enum and service of `runtime.v1` must exist on both sides with exactly
//! the same fields (number, name, type, label, message/enum type, oneof), enum values and
//! methods (name, request, response, streaming).
//!
//! The reference is the real crictl v1.36.0 (k8s.io/cri-api v0.36.0). Its protobuf code comes
//! from a recent protoc-gen-go, which embeds each file's `FileDescriptorProto` raw (not
//! gzipped, unlike containerd 1.6's ctr), under the file's Kubernetes source path
//! (`staging/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`).
//!
//! crictl is found through `CRICTL`, else `PATH`, else /usr/local/bin/crictl. Without it the
//! test skips with a note, unless `CORRAL_REQUIRE_ROOT=1` (how CI runs), where it fails.

mod common;

use common::Index;

const PACKAGE: &str = "runtime.v1";

#[test]
fn our_cri_proto_matches_the_one_compiled_into_crictl() {
    let crictl = common::find_program("CRICTL", "crictl", "/usr/local/bin/crictl");
    let binary = match std::fs::read(&crictl) {
        Ok(binary) => binary,
        Err(e) => {
            let why = format!(
                "cannot read {}: {e}; this test needs crictl v1.36.0 \
                 (shared/cri-tools/install.sh), or CRICTL pointing at it",
                crictl.display()
            );
            if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
                panic!("{why} (CORRAL_REQUIRE_ROOT=1 is set)");
            }
            eprintln!("note: skipping, {why} (set CORRAL_REQUIRE_ROOT=1 to make it fail)");
            return;
        }
    };

    let cri_files: Vec<_> = common::raw_descriptors(&binary)
        .into_iter()
        .filter(|f| f.package() == PACKAGE)
        .collect();
    assert_eq!(
        cri_files.len(),
        1,
        "expected one {PACKAGE} descriptor in {}, found {:?}",
        crictl.display(),
        cri_files.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    // Our file imports nothing; if theirs did, types from the imports would be compared by
    // name only.
    assert!(
        cri_files[0].dependency.is_empty(),
        "crictl's {PACKAGE} imports {:?}",
        cri_files[0].dependency
    );
    let mut theirs = Index::default();
    theirs.add_file(&cri_files[0]);

    let mut ours = Index::default();
    for file in common::our_descriptors()
        .iter()
        .filter(|f| f.package() == PACKAGE)
    {
        ours.add_file(file);
    }

    // Sanity: both services, a nested enum and a map entry were found on both sides.
    for index in [&ours, &theirs] {
        for name in ["runtime.v1.RuntimeService", "runtime.v1.ImageService"] {
            assert!(index.services.contains_key(name), "{name} not found");
        }
        assert!(
            index
                .enums
                .contains_key("runtime.v1.SecurityProfile.ProfileType")
        );
        assert!(
            index
                .messages
                .contains_key("runtime.v1.PodSandboxConfig.LabelsEntry")
        );
    }

    let reference = format!("crictl's {PACKAGE}");
    let mut problems = common::differences(&ours, &theirs, &reference, &[]);
    problems.extend(common::missing(&ours, &theirs, PACKAGE, &reference));
    assert!(
        problems.is_empty(),
        "{} differences from {}:\n{}",
        problems.len(),
        crictl.display(),
        problems.join("\n")
    );
    let methods: usize = ours.services.values().map(Vec::len).sum();
    eprintln!(
        "checked {} messages (map entries included), {} enums, {} services ({methods} methods) \
         against {} ({})",
        ours.messages.len(),
        ours.enums.len(),
        ours.services.len(),
        crictl.display(),
        cri_files[0].name()
    );
}

/// The gRPC health service (`grpc.health.v1`), against the grpc-go compiled into crictl (a
/// recent one: it has List, which containerd 1.6's grpc-go lacks; clients of either call only
/// Check and Watch).
#[test]
fn health_service_matches_grpc_go_in_crictl() {
    const HEALTH: &str = "grpc.health.v1";
    let crictl = common::find_program("CRICTL", "crictl", "/usr/local/bin/crictl");
    let Ok(binary) = std::fs::read(&crictl) else {
        let why = format!("cannot read {}", crictl.display());
        if std::env::var("CORRAL_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("{why} (CORRAL_REQUIRE_ROOT=1 is set)");
        }
        eprintln!("note: skipping, {why}");
        return;
    };
    let mut theirs = Index::default();
    let mut found = 0;
    for f in common::raw_descriptors(&binary)
        .into_iter()
        .filter(|f| f.package() == HEALTH)
    {
        theirs.add_file(&f);
        found += 1;
    }
    assert_eq!(
        found,
        1,
        "expected one {HEALTH} descriptor in {}",
        crictl.display()
    );
    let mut ours = Index::default();
    for file in common::our_descriptors()
        .iter()
        .filter(|f| f.package() == HEALTH)
    {
        ours.add_file(file);
    }
    assert!(ours.services.contains_key("grpc.health.v1.Health"));
    let reference = format!("crictl's {HEALTH}");
    let mut problems = common::differences(&ours, &theirs, &reference, &[]);
    problems.extend(common::missing(&ours, &theirs, HEALTH, &reference));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
