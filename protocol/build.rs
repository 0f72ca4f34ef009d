//! Generates code from `proto/` at build time, in pure Rust (no protoc needed):
//!
//! - feature `ttrpc`: rust-protobuf messages and async ttrpc services (ttrpc-codegen), into
//!   `$OUT_DIR/ttrpc/`;
//! - feature `grpc`: prost messages and tonic clients/servers for the daemon API (protox +
//!   tonic-prost-build), into `$OUT_DIR/grpc/`;
//! - feature `cri` (implies `grpc`): also the Kubernetes CRI `runtime.v1` and corral-cri's
//!   records, in the same invocation so that they join the same module tree.
//!
//! The two families share some .proto files (Mount, Process, the task events) but never
//! generated code: ttrpc 0.10 uses rust-protobuf, tonic 0.14 uses prost 0.14.

fn main() {
    #[cfg(feature = "ttrpc")]
    ttrpc::generate();
    #[cfg(feature = "grpc")]
    grpc::generate();
}

#[cfg(feature = "ttrpc")]
mod ttrpc {
    use std::fs;
    use std::path::{Path, PathBuf};

    use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

    const PROTOS: &[&str] = &[
        "proto/types/mount.proto",
        "proto/types/task.proto",
        "proto/task/shim.proto",
        "proto/events/task_events.proto",
        "proto/services/ttrpc_events/events.proto",
        "proto/runc/options.proto",
        "proto/cgroups/v1_metrics.proto",
        "proto/cgroups/v2_metrics.proto",
    ];

    pub fn generate() {
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("ttrpc");
        fs::create_dir_all(&out).unwrap();
        for p in PROTOS {
            println!("cargo:rerun-if-changed={p}");
        }
        Codegen::new()
            .out_dir(&out)
            .inputs(PROTOS)
            .include("proto")
            .rust_protobuf()
            .customize(Customize {
                async_all: true,
                ..Default::default()
            })
            .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
            .run()
            .expect("ttrpc code generation failed");
        strip_inner_attributes(&out);
    }

    /// Generated files start with `#![...]` and `//!` lines, which are not allowed in a file
    /// that is `include!`d into a module; drop them (the crate sets the lints it needs itself).
    fn strip_inner_attributes(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).unwrap();
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
                    .collect();
                fs::write(&path, kept.join("\n")).unwrap();
            }
        }
    }
}

#[cfg(feature = "grpc")]
mod grpc {
    use std::fs;
    use std::path::PathBuf;

    /// Relative to `proto/`; imports between them use the same form.
    const PROTOS: &[&str] = &[
        "types/mount.proto",
        "types/descriptor.proto",
        "types/platform.proto",
        "types/metrics.proto",
        "types/task.proto",
        "google/rpc/status.proto",
        "events/task_events.proto",
        // What Tasks.Metrics carries (cgroup v1 metrics in an Any), read by corral-cri's stats.
        "cgroups/v1_metrics.proto",
        "events/container.proto",
        "events/content.proto",
        "events/namespace.proto",
        "events/snapshot.proto",
        "events/image.proto",
        "services/version/v1/version.proto",
        "services/introspection/v1/introspection.proto",
        "services/namespaces/v1/namespace.proto",
        "services/containers/v1/containers.proto",
        "services/images/v1/images.proto",
        "services/content/v1/content.proto",
        "services/snapshots/v1/snapshots.proto",
        "services/diff/v1/diff.proto",
        "services/leases/v1/leases.proto",
        "services/events/v1/events.proto",
        "services/tasks/v1/tasks.proto",
        // gRPC's standard health service (grpc-go's clients check it).
        "grpc/health/v1/health.proto",
        // corral's own API (not in containerd).
        "corral/services/transfer/v1/transfer.proto",
    ];

    /// With feature `cri`: the Kubernetes CRI and corral-cri's on-disk records.
    const CRI_PROTOS: &[&str] = &["cri/runtime/v1/api.proto", "corral/cri/v1/records.proto"];

    pub fn generate() {
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("grpc");
        fs::create_dir_all(&out).unwrap();
        let mut protos = PROTOS.to_vec();
        // Cargo tells build scripts the enabled features through the environment.
        if std::env::var_os("CARGO_FEATURE_CRI").is_some() {
            protos.extend_from_slice(CRI_PROTOS);
        }
        for p in PROTOS.iter().chain(CRI_PROTOS) {
            println!("cargo:rerun-if-changed=proto/{p}");
        }
        // One compile and one code generation for everything: `include_file` then writes a
        // single module tree, where `corral.cri.v1` and `corral.services.transfer.v1` share
        // the `corral` module.
        let fds = protox::compile(&protos, ["proto"]).unwrap_or_else(|e| panic!("{e:?}"));
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            // Every server method gets a default body answering Unimplemented: a service may
            // implement a subset, and ctr treats Unimplemented as "fall back" (ListStream).
            .generate_default_stubs(true)
            // google.protobuf.* map to ::prost_types (Empty to `()`), tonic-prost-build's
            // default; content chunks are `Bytes` so they are not copied on the way through.
            .bytes(".containerd.services.content.v1.ReadContentResponse.data")
            .bytes(".containerd.services.content.v1.WriteContentRequest.data")
            .out_dir(&out)
            // One file per proto package, plus a module tree that `include!`s them.
            .include_file("mod.rs")
            .compile_fds(fds)
            .expect("gRPC code generation failed");
    }
}
