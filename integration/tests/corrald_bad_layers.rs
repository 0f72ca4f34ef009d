//! Hostile layers through corrald: `ctr images import` of an image whose layer tries to write
//! outside the snapshot (`..`, absolute paths, through a symlink, a hard link out) fails with a
//! clear error, nothing lands outside, and what was stored before is intact.

use std::fs;
use std::path::Path;

use integration::image::{busybox_path, image_from_layer_tars, oci_layout_tar};
use integration::{Corrald, IMAGE_REF, require_root};

/// A tar entry written raw, so the name is not sanitised on the way in.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn layer(entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        raw_entry(&mut out, name, *kind, *link, data);
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn hostile_layers_are_refused_and_nothing_escapes() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let work = tempfile::tempdir().unwrap();
    // A good image first: it must survive everything below.
    let good = work.path().join("good.tar");
    fs::write(&good, integration::image::test_image_tar()).unwrap();
    ctr.ok(&["images", "import", good.to_str().unwrap()]);

    let sentinel = work.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    let sentinel_s = sentinel.to_str().unwrap().to_string();
    let busybox_layer = {
        let img = integration::image::image_blobs(&busybox_path(), &[]).unwrap();
        img.layer_tars[0].clone()
    };
    use tar::EntryType::{Regular, Symlink};
    let hard = tar::EntryType::Link;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            layer(&[("../../../../corral-escape", Regular, None, b"x")]),
        ),
        (
            "absolute",
            layer(&[(
                &format!(
                    "/../../{}/corral-escape",
                    sentinel_s.trim_start_matches('/')
                ),
                Regular,
                None,
                b"x",
            )]),
        ),
        (
            "symlink",
            layer(&[
                ("out", Symlink, Some(&sentinel_s), b""),
                ("out/corral-escape", Regular, None, b"x"),
            ]),
        ),
        (
            "hardlink",
            layer(&[(
                "passwd-copy",
                hard,
                Some("../../../../../../etc/passwd"),
                b"",
            )]),
        ),
    ];
    for (name, bad) in cases {
        let img = image_from_layer_tars(vec![busybox_layer.clone(), bad]).unwrap();
        let reference = format!("docker.io/test/hostile:{name}");
        let path = work.path().join(format!("{name}.tar"));
        fs::write(&path, oci_layout_tar(&img, &reference).unwrap()).unwrap();
        let out = ctr.run(&["images", "import", path.to_str().unwrap()]);
        assert!(
            !out.success(),
            "{name}: hostile layer accepted: {}",
            out.describe()
        );
        assert!(
            out.stderr.contains("invalid argument")
                || out.stderr.contains("escape")
                || out.stderr.contains("outside"),
            "{name}: unclear error: {}",
            out.describe()
        );
        assert!(
            listing(&sentinel).is_empty(),
            "{name}: wrote into {sentinel_s}"
        );
    }
    // Nothing named corral-escape anywhere under the daemon's directory or /tmp's top level.
    let dir = d.root().parent().unwrap().to_path_buf();
    let found = std::process::Command::new("find")
        .arg(&dir)
        .args(["-name", "corral-escape"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "escaped file: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    assert!(!Path::new("/corral-escape").exists() && !Path::new("/tmp/corral-escape").exists());

    // The good image is intact and the daemon still serves.
    let check = ctr.ok(&["images", "check"]);
    let line = check
        .lines()
        .find(|l| l.starts_with(IMAGE_REF))
        .unwrap_or_else(|| panic!("{IMAGE_REF} missing: {check}"));
    assert!(line.contains("complete"), "{line}");
}
