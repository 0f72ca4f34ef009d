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

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use protocol::grpc::prost::Message;
use protocol::grpc::prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, ServiceDescriptorProto,
};

/// Every type, by full name (without the leading dot), reduced to what the wire depends on.
#[derive(Default)]
struct Index {
    messages: BTreeMap<String, Vec<String>>,
    enums: BTreeMap<String, Vec<String>>,
    services: BTreeMap<String, Vec<String>>,
}

impl Index {
    fn add_file(&mut self, file: &FileDescriptorProto) {
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
                format!(
                    "{} {} {:?} {:?} {}",
                    f.number(),
                    f.name(),
                    f.r#type(),
                    f.label(),
                    f.type_name()
                )
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

/// The descriptors embedded in a Go binary: gzip members that decode as a
/// `FileDescriptorProto` whose name ends in `.proto`.
fn embedded_descriptors(binary: &[u8]) -> Vec<FileDescriptorProto> {
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

fn compare(
    kind: &str,
    ours: &BTreeMap<String, Vec<String>>,
    theirs: &BTreeMap<String, Vec<String>>,
    problems: &mut Vec<String>,
) {
    for (name, mine) in ours {
        let mine: Vec<String> = mine
            .iter()
            .filter(|item| !KNOWN_EXTRAS.contains(&(name.as_str(), item.as_str())))
            .cloned()
            .collect();
        let mine = &mine;
        match theirs.get(name) {
            None => problems.push(format!("{kind} {name}: not in containerd 1.6")),
            Some(ref_items) if ref_items != mine => {
                let missing: Vec<_> = ref_items.iter().filter(|i| !mine.contains(i)).collect();
                let extra: Vec<_> = mine.iter().filter(|i| !ref_items.contains(i)).collect();
                problems.push(format!(
                    "{kind} {name}: containerd has {missing:?} that we lack; we have {extra:?} that containerd lacks"
                ));
            }
            Some(_) => {}
        }
    }
}

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
    for file in embedded_descriptors(&binary) {
        theirs.add_file(&file);
    }
    assert!(
        theirs
            .services
            .contains_key("containerd.services.tasks.v1.Tasks"),
        "no containerd descriptors found in {}",
        ctr.display()
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut files = Vec::new();
    proto_files(&root, &root, &mut files);
    let fds = protox::compile(&files, [&root]).unwrap();
    let mut ours = Index::default();
    for file in fds
        .file
        .iter()
        .filter(|f| !f.name().starts_with("google/protobuf/"))
        // corral's own API (`corral.*`) is not containerd's.
        .filter(|f| !f.package().starts_with("corral."))
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

    let mut problems = Vec::new();
    compare("message", &ours.messages, &theirs.messages, &mut problems);
    compare("enum", &ours.enums, &theirs.enums, &mut problems);
    compare("service", &ours.services, &theirs.services, &mut problems);
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
