//! A busybox test image, built at test time without network.
//!
//! The image is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) packed in a tar
//! that `ctr images import` accepts. Its single gzip layer holds the host's static busybox as
//! `/bin/busybox` plus one symlink per applet the tests use, `/etc/passwd`, `/etc/group` and the
//! usual empty directories. Everything is deterministic (fixed mtimes, sorted entries), so the
//! digests are stable for a given busybox binary.
//!
//! The index entry carries two annotations: `io.containerd.image.name` (which containerd's importer
//! uses verbatim as the image name) and `org.opencontainers.image.ref.name` (the tag, for tools
//! that only know the OCI annotation).
//!
//! ```text
//! index.json ──► manifest ──► config  (os/arch, Cmd ["sh"], rootfs.diff_ids = [sha256(layer tar)])
//!                        └──► layer   (tar+gzip: bin/busybox, bin/sh → busybox, …, etc/passwd, tmp/)
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Name under which the harness imports the test image.
pub const IMAGE_REF: &str = "docker.io/library/busybox:test";

/// Busybox applets linked into `/bin` of the image.
pub const APPLETS: &[&str] = &[
    "[",
    "awk",
    "cat",
    "cp",
    "cut",
    "date",
    "dd",
    "echo",
    "env",
    "false",
    "grep",
    "head",
    "hostname",
    "httpd",
    "id",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mkfifo",
    "mount",
    "mv",
    "nc",
    "nproc",
    "pidof",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "stty",
    "tail",
    "tee",
    "test",
    "timeout",
    // critest's benchmarks run `top` in their containers.
    "top",
    "touch",
    "tr",
    "true",
    "tty",
    "uname",
    "uniq",
    "wc",
    "wget",
    "xargs",
    "yes",
];

/// Fixed mtime of every entry (2023-11-14), so the layer digest does not depend on the clock.
const MTIME: u64 = 1_700_000_000;

/// Media type of the OCI image manifests built here.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Path of the static busybox put into the image: `$CORRAL_TEST_BUSYBOX` or `/bin/busybox`.
pub fn busybox_path() -> PathBuf {
    std::env::var_os("CORRAL_TEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// The image tar for [`IMAGE_REF`], built once per process and shared by all tests.
///
/// Panics with a message naming the busybox path if the image cannot be built.
pub fn test_image_tar() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let busybox = busybox_path();
        build_image_tar(&busybox, IMAGE_REF).unwrap_or_else(|e| {
            panic!(
                "cannot build the busybox test image from {}: {e} \
                 (install busybox-static or set CORRAL_TEST_BUSYBOX to a static busybox)",
                busybox.display()
            )
        })
    })
}

/// GOARCH-style name of the architecture this test binary runs on.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Builds an OCI image layout tar named `reference` around the static busybox at `busybox`.
pub fn build_image_tar(busybox: &Path, reference: &str) -> io::Result<Vec<u8>> {
    let busybox_bytes = std::fs::read(busybox)?;
    if !busybox_bytes.starts_with(b"\x7fELF") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an ELF executable", busybox.display()),
        ));
    }

    let layer_tar = layer_tar(&busybox_bytes)?;
    let diff_id = sha256_digest(&layer_tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar)?;
    let layer = gz.finish()?;

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "corral integration harness (busybox)" }],
    }))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": [descriptor(MEDIA_LAYER, &layer)],
    }))?;
    let tag = reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let mut manifest_desc = descriptor(MEDIA_MANIFEST, &manifest);
    manifest_desc["annotations"] = serde_json::json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": tag,
    });
    manifest_desc["platform"] = serde_json::json!({ "architecture": oci_arch(), "os": "linux" });
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }))?;

    let mut out = tar::Builder::new(Vec::new());
    add_dir(&mut out, "blobs/", 0o755)?;
    add_dir(&mut out, "blobs/sha256/", 0o755)?;
    for blob in [&layer, &config, &manifest] {
        let hex = hex::encode(Sha256::digest(blob));
        add_file(&mut out, &format!("blobs/sha256/{hex}"), 0o644, blob)?;
    }
    add_file(&mut out, "index.json", 0o644, &index)?;
    add_file(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    out.into_inner()
}

/// The blobs of a multi-layer busybox image, for tests that push or pack images themselves.
pub struct ImageBlobs {
    /// OCI manifest (media type `application/vnd.oci.image.manifest.v1+json`).
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    /// Gzip layers, base first: busybox, then one per `extra` entry.
    pub layers: Vec<Vec<u8>>,
    /// The same layers uncompressed (their sha256 are the config's diff_ids).
    pub layer_tars: Vec<Vec<u8>>,
}

impl ImageBlobs {
    /// containerd's chain IDs of the layers (chainID(n) = sha256(chainID(n-1) + " " +
    /// diffID(n))), computed here independently of the code under test.
    pub fn chain_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.layer_tars {
            let diff = sha256_digest(t);
            let id = match out.last() {
                None => diff,
                Some(parent) => sha256_digest(format!("{parent} {diff}").as_bytes()),
            };
            out.push(id);
        }
        out
    }
}

/// Builds a busybox image with one extra layer per `extra` entry, each holding the given
/// `(path, contents)` regular files (mode 0644, parents must exist in a lower layer).
pub fn image_blobs(busybox: &Path, extra: &[Vec<(String, Vec<u8>)>]) -> io::Result<ImageBlobs> {
    let mut layer_tars = vec![layer_tar(&std::fs::read(busybox)?)?];
    for files in extra {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            add_file(&mut b, path, 0o644, data)?;
        }
        layer_tars.push(b.into_inner()?);
    }
    image_from_layer_tars(layer_tars)
}

/// Builds an image from uncompressed layer tars as given (base first), gzip-compressing them.
/// Tests of hostile layers pass tars whose headers the `tar` crate would refuse to write.
pub fn image_from_layer_tars(layer_tars: Vec<Vec<u8>>) -> io::Result<ImageBlobs> {
    let mut layers = Vec::new();
    for t in &layer_tars {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(t)?;
        layers.push(gz.finish()?);
    }
    let diff_ids: Vec<String> = layer_tars.iter().map(|t| sha256_digest(t)).collect();
    let (manifest, config) = manifest_for_gzip_layers(&layers, &diff_ids)?;
    Ok(ImageBlobs {
        manifest,
        config,
        layers,
        layer_tars,
    })
}

/// OCI manifest and config (in that order) of an image made of already compressed gzip
/// `layers` (base first) whose uncompressed tars have the digests `diff_ids` (`sha256:<hex>`).
/// For callers that build big layers as a stream and never hold the tars in memory.
pub fn manifest_for_gzip_layers(
    layers: &[Vec<u8>],
    diff_ids: &[String],
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    manifest_with_run_config(layers, diff_ids, serde_json::json!({ "Cmd": ["sh"] }))
}

/// Like [`manifest_for_gzip_layers`], with `run_config` as the config's `config` object
/// (Entrypoint, Cmd, Env, User, StopSignal, ...).
pub fn manifest_with_run_config(
    layers: &[Vec<u8>],
    diff_ids: &[String],
    run_config: serde_json::Value,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": run_config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))?;
    let layer_descs: Vec<_> = layers.iter().map(|l| descriptor(MEDIA_LAYER, l)).collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": layer_descs,
    }))?;
    Ok((manifest, config))
}

/// The uncompressed tar of the test image's single layer (the busybox root filesystem), e.g. to
/// build an OCI bundle for plain `runc run`.
pub fn busybox_layer_tar() -> io::Result<Vec<u8>> {
    layer_tar(&std::fs::read(busybox_path())?)
}

/// An OCI image layout tar of `img` named `reference`. Layers are stored last-first, so an
/// import spends its time writing the big upper layers before anything else.
pub fn oci_layout_tar(img: &ImageBlobs, reference: &str) -> io::Result<Vec<u8>> {
    oci_layout_tar_named(img, &[reference])
}

/// Like [`oci_layout_tar`], with one index entry per name in `references`: one import gives
/// the image all of them.
pub fn oci_layout_tar_named(img: &ImageBlobs, references: &[&str]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "blobs/", 0o755)?;
    add_dir(&mut b, "blobs/sha256/", 0o755)?;
    for blob in img.layers.iter().rev().chain([&img.config, &img.manifest]) {
        let path = format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob)));
        add_file(&mut b, &path, 0o644, blob)?;
    }
    let manifests: Vec<serde_json::Value> = references
        .iter()
        .map(|r| {
            let mut d = descriptor(MEDIA_MANIFEST, &img.manifest);
            d["annotations"] = serde_json::json!({ "io.containerd.image.name": r });
            d
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))?;
    add_file(&mut b, "index.json", 0o644, &index)?;
    add_file(
        &mut b,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    b.into_inner()
}

fn layer_tar(busybox: &[u8]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("home/", 0o755),
        ("proc/", 0o555),
        ("root/", 0o700),
        ("run/", 0o755),
        ("sys/", 0o555),
        ("tmp/", 0o1777),
        ("var/", 0o755),
    ] {
        add_dir(&mut b, dir, mode)?;
    }
    add_file(&mut b, "bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        b.append_data(&mut h, format!("bin/{applet}"), io::empty())?;
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    add_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    b.into_inner()
}

pub(crate) fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

pub(crate) fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, io::empty())
}

pub(crate) fn add_file(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data)
}

pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub(crate) fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": sha256_digest(blob),
        "size": blob.len(),
    })
}

/// An OCI image layout tar named `reference` holding only `/pause`, our own static pause
/// program (`integration/images/pause.c`, compiled here with `cc -static`), as its entrypoint:
/// the pod sandbox image for CRI tests, built without a registry.
pub fn pause_image_tar(reference: &str) -> io::Result<Vec<u8>> {
    oci_layout_tar(&pause_image_blobs(serde_json::json!({}))?, reference)
}

/// The blobs of our pause image (see [`pause_image_tar`]); `labels` become the config's
/// `Labels`, so that two pause images can differ (critest pulls a `pause:3.9` that must not be
/// the sandbox image). With no labels the digests are those of [`pause_image_tar`].
pub fn pause_image_blobs(labels: serde_json::Value) -> io::Result<ImageBlobs> {
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "pause", 0o755, &compile_static("pause.c")?)?;
    let layer_tar = b.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar)?;
    let layers = vec![gz.finish()?];
    let mut run_config = serde_json::json!({ "Entrypoint": ["/pause"], "User": "65535:65535" });
    if labels.as_object().is_some_and(|l| !l.is_empty()) {
        run_config["Labels"] = labels;
    }
    let (manifest, config) =
        manifest_with_run_config(&layers, &[sha256_digest(&layer_tar)], run_config)?;
    Ok(ImageBlobs {
        manifest,
        config,
        layers,
        layer_tars: vec![layer_tar],
    })
}

/// Compiles `integration/images/<source>` (one C file of ours) with `cc -static -Os -s` and
/// returns the executable.
pub fn compile_static(source: &str) -> io::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("a.out");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("images")
        .join(source);
    let out = std::process::Command::new("cc")
        .args(["-static", "-Os", "-s", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "cc -static {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::read(&bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_layout_is_consistent_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF fake busybox").unwrap();
        let a = build_image_tar(&fake, "example.com/x:t1").unwrap();
        let b = build_image_tar(&fake, "example.com/x:t1").unwrap();
        assert_eq!(a, b, "image tar must be deterministic");

        let mut files = std::collections::BTreeMap::new();
        for e in tar::Archive::new(&a[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(path, data);
        }
        // Every blob is stored under its own digest.
        for (path, data) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(hex, hex::encode(Sha256::digest(data)), "blob {path}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "example.com/x:t1"
        );
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "t1");
        let blob = |d: &serde_json::Value| {
            let d = d.as_str().unwrap().strip_prefix("sha256:").unwrap();
            files[&format!("blobs/sha256/{d}")].clone()
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&m["digest"])).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        let layer_gz = blob(&manifest["layers"][0]["digest"]);
        let mut layer = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer_gz[..]), &mut layer)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(&layer));
        assert_eq!(config["config"]["Cmd"][0], "sh");

        let mut names = Vec::new();
        for e in tar::Archive::new(&layer[..]).entries().unwrap() {
            let e = e.unwrap();
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        assert!(names.iter().any(|n| n == "bin/busybox"));
        assert!(names.iter().any(|n| n == "bin/sh"));
        assert!(names.iter().any(|n| n == "etc/passwd"));
    }

    #[test]
    fn rejects_a_non_elf_busybox() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"#!/bin/sh\n").unwrap();
        let err = build_image_tar(&fake, IMAGE_REF).unwrap_err();
        assert!(err.to_string().contains("not an ELF"), "{err}");
    }
}
