//! Shared by the tests that hold our .proto files against the descriptors compiled into real
//! Go binaries (ctr for containerd, crictl for the CRI): finding those descriptors, reducing
//! each type to what the wire depends on, and listing the differences.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

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

/// Descriptors that newer protoc-gen-go embeds raw: each file's serialized
/// `FileDescriptorProto` is a string constant (`file_..._rawDesc`) somewhere in the binary's
/// read-only data, with nothing marking where it starts or ends.
///
/// The start: every serialized descriptor begins with field 1, the file name, directly followed
/// by field 2, the package (tag 0x12); so each `.proto` + 0x12 is a candidate, and the start is
/// the 0x0a tag whose length prefix ends the name exactly there. The end: Go marshals the
/// fields in ascending number order, singular ones once, so we walk the top-level fields while
/// they keep that order and have the right wire type, and stop at the first that does not (the
/// next constant's bytes). What results must decode as a `FileDescriptorProto`.
pub fn raw_descriptors(binary: &[u8]) -> Vec<FileDescriptorProto> {
    let mut files = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&binary[at..], b".proto\x12") {
        let name_end = at + pos + ".proto".len();
        at = name_end;
        let Some(start) = name_field_start(binary, name_end) else {
            continue;
        };
        let end = descriptor_end(binary, start);
        if let Ok(file) = FileDescriptorProto::decode(&binary[start..end])
            && file.name().ends_with(".proto")
        {
            files.push(file);
        }
    }
    files
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where the `1: name` field ending at `name_end` starts: a 0x0a tag, then the name's length
/// as a varint, then that many bytes, the last of them at `name_end - 1`.
fn name_field_start(binary: &[u8], name_end: usize) -> Option<usize> {
    const LONGEST_NAME: usize = 1024;
    for len in ".proto".len()..=LONGEST_NAME.min(name_end) {
        let mut prefix = vec![0x0a];
        encode_varint(len as u64, &mut prefix);
        let Some(start) = name_end.checked_sub(len + prefix.len()) else {
            break;
        };
        if binary[start..start + prefix.len()] == prefix[..] {
            return Some(start);
        }
    }
    None
}

/// The end of the descriptor starting at `start`; see [`raw_descriptors`].
fn descriptor_end(binary: &[u8], start: usize) -> usize {
    // FileDescriptorProto's fields: 1 name, 2 package, 3 dependency, 4 message_type,
    // 5 enum_type, 6 service, 7 extension, 8 options, 9 source_code_info, 10 public_dependency,
    // 11 weak_dependency, 12 syntax, 14 edition. (number, wire type, repeated)
    const FIELDS: &[(u64, u64, bool)] = &[
        (1, 2, false),
        (2, 2, false),
        (3, 2, true),
        (4, 2, true),
        (5, 2, true),
        (6, 2, true),
        (7, 2, true),
        (8, 2, false),
        (9, 2, false),
        (10, 0, true),
        (11, 0, true),
        (12, 2, false),
        (14, 0, false),
    ];
    let mut pos = start;
    let mut last: Option<(u64, bool)> = None;
    loop {
        let Some((tag, after_tag)) = decode_varint(binary, pos) else {
            return pos;
        };
        let (number, wire_type) = (tag >> 3, tag & 7);
        let Some(&(_, _, repeated)) = FIELDS
            .iter()
            .find(|(n, w, _)| *n == number && *w == wire_type)
        else {
            return pos;
        };
        let in_order = match last {
            None => true,
            Some((prev, prev_repeated)) => number > prev || (number == prev && prev_repeated),
        };
        if !in_order {
            return pos;
        }
        let next = if wire_type == 2 {
            match decode_varint(binary, after_tag) {
                Some((len, body)) if body as u64 + len <= binary.len() as u64 => {
                    body + len as usize
                }
                _ => return pos,
            }
        } else {
            match decode_varint(binary, after_tag) {
                Some((_, next)) => next,
                None => return pos,
            }
        };
        last = Some((number, repeated));
        pos = next;
    }
}

fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at `pos` and the position after it.
fn decode_varint(binary: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *binary.get(pos)?;
        pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some((value, pos));
        }
    }
    None
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
/// (fields we add on purpose). Types only the reference has are not reported here; see
/// [`missing`].
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

/// The reference's types under `package.` that we do not define at all.
pub fn missing(ours: &Index, theirs: &Index, package: &str, reference: &str) -> Vec<String> {
    let prefix = format!("{package}.");
    let mut problems = Vec::new();
    for (kind, ours, theirs) in [
        ("message", &ours.messages, &theirs.messages),
        ("enum", &ours.enums, &theirs.enums),
        ("service", &ours.services, &theirs.services),
    ] {
        for name in theirs.keys().filter(|n| n.starts_with(&prefix)) {
            if !ours.contains_key(name) {
                problems.push(format!("{kind} {name}: in {reference}, not in proto/"));
            }
        }
    }
    problems
}

/// A program by name: `env_var` if set, else the first match on `PATH`, else `fallback`.
pub fn find_program(env_var: &str, name: &str, fallback: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(fallback))
}
