//! corrald driven by the real ctr 1.6 against real image sources: `ctr images pull --plain-http`
//! from a private `docker-registry` holding a multi-layer image the test pushed, `ctr images
//! import` of a `docker save` style archive, and bad input (invalid namespace, truncated blob).

use std::path::Path;

use integration::image::{ImageBlobs, busybox_path, image_blobs};
use integration::registry::Registry;
use integration::{Corrald, require_root};
use sha2::{Digest, Sha256};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Busybox plus two small layers with files.
fn multi_layer_image() -> ImageBlobs {
    let f = |p: &str, d: &str| (p.to_string(), d.as_bytes().to_vec());
    image_blobs(
        &busybox_path(),
        &[
            vec![f("etc/layer-two", "two\n"), f("tmp/a", "a\n")],
            vec![f("etc/layer-three", "three\n"), f("etc/layer-two", "2\n")],
        ],
    )
    .expect("cannot build the multi-layer test image")
}

#[test]
fn pull_multi_layer_image_from_a_local_registry() {
    if !require_root() {
        return;
    }
    let reg = Registry::start();
    let img = multi_layer_image();
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push(
        "test/busybox",
        "multi",
        &blobs,
        &img.manifest,
        MEDIA_MANIFEST,
    )
    .expect("push to the registry");

    let d = Corrald::start();
    let ctr = d.ctr();
    let reference = format!("{}/test/busybox:multi", reg.host());
    let out = ctr.run(&["images", "pull", "--plain-http", &reference]);
    assert!(out.success(), "{}", out.describe());

    let ls = ctr.ok(&["images", "ls"]);
    assert!(
        ls.contains(&reference) && ls.contains(&sha256(&img.manifest)),
        "{ls}"
    );
    let row = ctr.images_check_row(&reference);
    assert!(
        row.contains("complete") && row.contains("true"),
        "not complete and unpacked: {row}"
    );
    let content = ctr.ok(&["content", "ls"]);
    for b in img.layers.iter().chain([&img.config, &img.manifest]) {
        assert!(
            content.contains(&sha256(b)),
            "{} missing:\n{content}",
            sha256(b)
        );
    }
    // Each blob reads back with its bytes.
    for b in &img.layers {
        let got = ctr.run(&["content", "get", &sha256(b)]);
        assert!(got.success(), "{}", got.describe());
        assert_eq!(sha256(&got.stdout), sha256(b));
    }
    ctr.assert_snapshot_chain(&img.chain_ids());

    ctr.ok(&["images", "rm", &reference]);
    let ls = ctr.ok(&["images", "ls", "-q"]);
    assert!(!ls.contains(&reference), "{ls}");
    // Pulling again after rm works (content and snapshots may be reused).
    let out = ctr.run(&["images", "pull", "--plain-http", &reference]);
    assert!(out.success(), "{}", out.describe());
    assert!(ctr.images_check_row(&reference).contains("complete"));
}

/// A `docker save` archive: `manifest.json`, `repositories`, `<id>.json`, `<id>/layer.tar`.
fn docker_save_tar(img: &ImageBlobs, repo: &str, tag: &str) -> Vec<u8> {
    let config_hex = hex::encode(Sha256::digest(&img.config));
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut layers = Vec::new();
    let mut last = String::new();
    for t in &img.layer_tars {
        let id = hex::encode(Sha256::digest(t));
        add(&format!("{id}/VERSION"), b"1.0");
        add(
            &format!("{id}/json"),
            format!(r#"{{"id":"{id}"}}"#).as_bytes(),
        );
        add(&format!("{id}/layer.tar"), t);
        layers.push(format!("{id}/layer.tar"));
        last = id;
    }
    add(&format!("{config_hex}.json"), &img.config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [format!("{repo}:{tag}")],
        "Layers": layers,
    }]);
    add("manifest.json", manifest.to_string().as_bytes());
    let repositories = serde_json::json!({ repo: { tag: last } });
    add("repositories", repositories.to_string().as_bytes());
    b.into_inner().unwrap()
}

#[test]
fn import_docker_save_archive() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    let img = multi_layer_image();
    let path = tmp.path().join("saved.tar");
    std::fs::write(&path, docker_save_tar(&img, "test/saved", "v1")).unwrap();
    let out = ctr.run(&["images", "import", path.to_str().unwrap()]);
    assert!(out.success(), "{}", out.describe());
    let name = "docker.io/test/saved:v1";
    let ls = ctr.ok(&["images", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == name), "{ls}");
    let row = ctr.images_check_row(name);
    assert!(
        row.contains("complete") && row.contains("true"),
        "not complete and unpacked: {row}"
    );
    ctr.assert_snapshot_chain(&img.chain_ids());
    // The config is stored as given.
    let got = ctr.run(&["content", "get", &sha256(&img.config)]);
    assert!(got.success(), "{}", got.describe());
    assert_eq!(got.stdout, img.config);
}

#[test]
fn invalid_namespace_is_rejected_with_invalid_argument() {
    // ctr prints the InvalidArgument code as "invalid argument" after the message.
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    for args in [
        &["images", "ls"][..],
        &["content", "ls"],
        &["snapshots", "ls"],
    ] {
        let out = d.ctr_in("bad/ns").run(args);
        assert!(!out.success(), "{}", out.describe());
        assert!(
            out.stderr.contains("invalid argument") && out.stderr.contains("namespace \"bad/ns\""),
            "{}",
            out.describe()
        );
    }
    // Nothing was created under that name.
    let ls = d.ctr().ok(&["namespaces", "ls"]);
    assert!(!ls.contains("bad/ns"), "{ls}");
}

#[test]
fn truncated_blob_is_rejected_and_nothing_stored() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    let data = b"only thirty-one bytes of a blob";
    let input = tmp.path().join("blob");
    std::fs::write(&input, data).unwrap();
    let size = (data.len() + 100).to_string();
    let c = ctr.command(&["content", "ingest", "--expected-size", &size, "short-1"]);
    let out = std::process::Command::new(c.get_program())
        .args(c.get_args())
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ingest of a short blob succeeded: {stderr}"
    );
    // ctr notices the short stream itself and aborts the write.
    assert!(stderr.contains("expected number of bytes"), "{stderr}");
    let ls = ctr.ok(&["content", "ls"]);
    assert!(!ls.contains(&sha256(data)), "{ls}");
    assert_blob_dir_empty(&d.root());
}

fn assert_blob_dir_empty(root: &Path) {
    let blobs = root.join("io.containerd.content.v1.content/blobs/sha256");
    let n = std::fs::read_dir(&blobs).map(|r| r.count()).unwrap_or(0);
    assert_eq!(n, 0, "blobs stored in {}", blobs.display());
}
