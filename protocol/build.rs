//! Generates rust-protobuf messages and async ttrpc services from `proto/` at build time,
//! with ttrpc-codegen (pure Rust: no protoc needed).

#[cfg(feature = "ttrpc")]
use std::fs;
#[cfg(feature = "ttrpc")]
use std::path::{Path, PathBuf};

#[cfg(feature = "ttrpc")]
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

#[cfg(feature = "ttrpc")]
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

#[cfg(not(feature = "ttrpc"))]
fn main() {}

#[cfg(feature = "ttrpc")]
fn main() {
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

#[cfg(feature = "ttrpc")]
/// Generated files start with `#![...]` and `//!` lines, which are not allowed in a file that
/// is `include!`d into a module; drop them (the crate sets the lints it needs itself).
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
