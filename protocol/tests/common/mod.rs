//! Shared by the tests that hold our .proto files against the descriptors compiled into real
//! Go binaries: finding those descriptors, reducing each type to what the wire depends on, and
//! listing the differences.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use protocol::grpc::prost::Message;
use protocol::grpc::prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, ServiceDescriptorProto,
};

/// Every type, by full name (without the leading dot), reduced to what the wire depends on:
/// one line per field, enum value or method, sorted.
#[derive(Default)]
pub struct Index {
    pub messages: BTreeMap<String, Vec<String>>,
    pub enums: BTreeMap<String, Vec<String>>,
    pub services: BTreeMap<String, Vec<String>>,
}

impl Index {
    pub fn add_file(&mut self, file: &FileDescriptorProto) {
        let package = file.package();
        for m in &file.message_type {
            self.add_message(package, m);
        }
        for e in &file.enum_type {
            self.add_enum(package, e);
        }
        for s in &file.service {
            self.add_service(package, s);
        }
    }

    fn add_message(&mut self, scope: &str, m: &DescriptorProto) {
        let name = format!("{scope}.{}", m.name());
        let mut fields: Vec<String> = m
            .field
            .iter()
            .map(|f| {
                let mut line = format!(
                    "{} {} {:?} {:?} {}",
                    f.number(),
                    f.name(),
                    f.r#type(),
                    f.label(),
                    f.type_name()
                );
                // Members of a real oneof share one slot on the wire; name it. (proto3
                // `optional` makes a synthetic oneof, which changes nothing on the wire.)
                if let Some(i) = f.oneof_index
                    && !f.proto3_optional()
                {
                    let oneof = m.oneof_decl.get(i as usize).map_or("?", |o| o.name());
                    line.push_str(&format!(" oneof {oneof}"));
                }
                line
            })
            .collect();
        fields.sort();
        for n in &m.nested_type {
            self.add_message(&name, n);
        }
        for e in &m.enum_type {
            self.add_enum(&name, e);
        }
        self.messages.insert(name, fields);
    }

    fn add_enum(&mut self, scope: &str, e: &EnumDescriptorProto) {
        let mut values: Vec<String> = e
            .value
            .iter()
            .map(|v| format!("{} {}", v.number(), v.name()))
            .collect();
        values.sort();
        self.enums.insert(format!("{scope}.{}", e.name()), values);
    }

    fn add_service(&mut self, package: &str, s: &ServiceDescriptorProto) {
        let mut methods: Vec<String> = s
            .method
            .iter()
            .map(|m| {
                format!(
                    "{}({}{}) -> {}{}",
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    m.input_type(),
                    if m.server_streaming() { "stream " } else { "" },
                    m.output_type()
                )
            })
            .collect();
        methods.sort();
        self.services
            .insert(format!("{package}.{}", s.name()), methods);
    }
}

/// Descriptors that Go protobuf code embeds gzipped (gogo and the older protoc-gen-go, as in
/// containerd 1.6): gzip members that decode as a `FileDescriptorProto` named `*.proto`.
pub fn gzipped_descriptors(binary: &[u8]) -> Vec<FileDescriptorProto> {
    const GZIP: &[u8] = &[0x1f, 0x8b, 0x08];
    let mut files = Vec::new();
    let mut at = 0;
    while let Some(pos) = binary[at..].windows(3).position(|w| w == GZIP) {
        let start = at + pos;
        at = start + 1;
        let mut raw = Vec::new();
        if flate2::read::GzDecoder::new(&binary[start..])
            .read_to_end(&mut raw)
            .is_err()
        {
            continue;
        }
        if let Ok(file) = FileDescriptorProto::decode(raw.as_slice())
            && file.name().ends_with(".proto")
        {
            files.push(file);
        }
    }
    files
}

/// Our descriptors: everything under `proto/` compiled by protox, as build.rs does, without
/// the well-known types protox adds.
pub fn our_descriptors() -> Vec<FileDescriptorProto> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut files = Vec::new();
    proto_files(&root, &root, &mut files);
    let fds = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("{e:?}"));
    fds.file
        .into_iter()
        .filter(|f| !f.name().starts_with("google/protobuf/"))
        .collect()
}

fn proto_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            proto_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
}

/// Differences between our types and the reference's, one line each. Every type of ours must
/// exist in the reference with exactly its items, less the `(type, item)` pairs in `extras`
/// (fields we add on purpose). Types only the reference has are not reported.
pub fn differences(
    ours: &Index,
    theirs: &Index,
    reference: &str,
    extras: &[(&str, &str)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (kind, ours, theirs) in [
        ("message", &ours.messages, &theirs.messages),
        ("enum", &ours.enums, &theirs.enums),
        ("service", &ours.services, &theirs.services),
    ] {
        for (name, mine) in ours {
            let mine: Vec<&String> = mine
                .iter()
                .filter(|item| !extras.contains(&(name.as_str(), item.as_str())))
                .collect();
            match theirs.get(name) {
                None => problems.push(format!("{kind} {name}: not in {reference}")),
                Some(ref_items) => {
                    let lacking: Vec<_> = ref_items.iter().filter(|i| !mine.contains(i)).collect();
                    let extra: Vec<_> = mine.iter().filter(|i| !ref_items.contains(i)).collect();
                    if !lacking.is_empty() || !extra.is_empty() {
                        problems.push(format!(
                            "{kind} {name}: {reference} has {lacking:?} that we lack; \
                             we have {extra:?} that {reference} lacks"
                        ));
                    }
                }
            }
        }
    }
    problems
}
