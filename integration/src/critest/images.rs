//! The images critest pulls, as look-alikes built here: our static busybox, our own small
//! static programs, and image configs that give critest what its tests read.
//!
//! critest's image names are fixed (only the busybox and web-server images can be replaced by
//! `-test-images-file`), so each look-alike is pushed under the repository and tag critest
//! asks for, and the registry hosts `registry.k8s.io`, `gcr.io` and `k8s.gcr.io` are mirrored
//! to the local registry ([`super::Setup`]).
//!
//! | image (repository:tag)                           | layers              | config              |
//! |--------------------------------------------------|---------------------|---------------------|
//! | `e2e-test-images/busybox:1.29-2`                 | rootfs              | Cmd sh              |
//! | `e2e-test-images/nginx:1.14-2`                   | rootfs + nginx      | Cmd nginx -g …      |
//! | `e2e-test-images/httpd:2.4.39-4`                 | rootfs + httpd      | Cmd httpd-foreground, StopSignal SIGWINCH |
//! | `e2e-test-images/nonewprivs:1.3`                 | rootfs + nnp (setuid root) | Entrypoint nnp |
//! | `k8s-staging-cri-tools/test-image-user-*`        | rootfs              | User 1002, www-data, 1003:users, www-data:users |
//! | `k8s-staging-cri-tools/test-image-predefined-group` | rootfs + passwd/group | User 1000 (in group 50000) |
//! | `k8s-staging-cri-tools/test-image-{latest,tag:test,tag:all,1,2,3}` | rootfs + a file named after it | distinct ids |
//! | `k8s-staging-cri-tools/test-image-tags:{1,2,3}`  | rootfs + a file     | one image, three tags |
//! | `k8s-staging-cri-tools/hostnet-nginx-<arch>`     | rootfs + nginx      | LISTEN_PORT=12003   |
//! | `pause:3.9`                                      | our pause           | a label, so it is not the sandbox image |
//! | `pause:3.10`                                     | our pause           | the sandbox image, as imported by the CRI node |
//!
//! The rootfs layer holds the busybox binary with every applet as a hard link at the path
//! busybox lists for it. Hard links, not symlinks: critest's MaskedPaths test masks `/bin/ls`,
//! and a runtime masks a path by mounting over what it resolves to — through a symlink that
//! would be the busybox binary itself, and every applet would break.
//!
//! Not built: `test-image-digest@sha256:9700f9…` (a pinned digest of upstream's image, which
//! no look-alike can have) and the Windows images.

use std::io::{self, Write};
use std::path::Path;

use crate::image::{
    ImageBlobs, add_dir, add_file, compile_static, header, manifest_with_run_config, oci_arch,
    pause_image_blobs, sha256_digest,
};

/// The registry hosts critest pulls from; all of them are mirrored to the local registry.
pub const MIRRORED_HOSTS: &[&str] = &["registry.k8s.io", "gcr.io", "k8s.gcr.io"];

/// critest's default container image (`-test-images-file` `defaultTestContainerImage`).
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// critest's web server image (`-test-images-file` `webServerTestImage`).
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const E2E: &str = "registry.k8s.io/e2e-test-images";
const CRI_TOOLS: &str = "gcr.io/k8s-staging-cri-tools";

/// One image of the family: its blobs and every reference critest knows it by.
pub struct TestImage {
    /// Full references (`registry.k8s.io/e2e-test-images/busybox:1.29-2`).
    pub references: Vec<String>,
    pub blobs: ImageBlobs,
}

impl TestImage {
    /// `(repository, tag)` pairs to push: the reference without its registry host. Mirrored
    /// hosts share one local registry, so `registry.k8s.io/pause:3.9` and
    /// `k8s.gcr.io/pause:3.9` are one push.
    pub fn pushes(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .references
            .iter()
            .map(|r| {
                let path = r.split_once('/').map_or(r.as_str(), |(_, p)| p);
                let (repo, tag) = path.rsplit_once(':').unwrap_or((path, "latest"));
                (repo.to_string(), tag.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A file, directory or hard link of a layer.
enum Entry {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    /// A hard link at the first path to the second (both relative to the root).
    Link(String, &'static str),
}

/// A layer: its tar, the tar's digest (the config's diff_id) and its gzip (the blob).
#[derive(Clone)]
struct Layer {
    tar: Vec<u8>,
    diff_id: String,
    gz: Vec<u8>,
}

impl Layer {
    fn new(entries: Vec<Entry>) -> io::Result<Layer> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match e {
                Entry::Dir(path, mode) => add_dir(&mut b, path, mode)?,
                Entry::File(path, mode, data) => add_file(&mut b, &path, mode, &data)?,
                Entry::Link(path, target) => {
                    let mut h = header(tar::EntryType::Link, 0o755, 0);
                    h.set_link_name(target)?;
                    b.append_data(&mut h, path, io::empty())?;
                }
            }
        }
        let tar = b.into_inner()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar)?;
        Ok(Layer {
            diff_id: sha256_digest(&tar),
            gz: gz.finish()?,
            tar,
        })
    }
}

fn image(
    references: &[String],
    layers: &[&Layer],
    config: serde_json::Value,
) -> io::Result<TestImage> {
    let gz: Vec<Vec<u8>> = layers.iter().map(|l| l.gz.clone()).collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let (manifest, config) = manifest_with_run_config(&gz, &diff_ids, config)?;
    Ok(TestImage {
        references: references.to_vec(),
        blobs: ImageBlobs {
            manifest,
            config,
            layers: gz,
            layer_tars: layers.iter().map(|l| l.tar.clone()).collect(),
        },
    })
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\n\
sys:x:3:3:sys:/dev:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
nobody:x:65534:65534:nobody:/home:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sys:x:3:\n\
www-data:x:33:\n\
users:x:100:\n\
nogroup:x:65534:\n";

/// The busybox root filesystem: directories, `/bin/busybox`, one hard link per applet
/// (`applets`: paths such as `usr/bin/id`), `/etc/passwd` and `/etc/group`.
fn rootfs_layer(busybox: &[u8], applets: &[String]) -> io::Result<Layer> {
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::Dir("dev/", 0o755),
        Entry::Dir("etc/", 0o755),
        Entry::Dir("home/", 0o755),
        Entry::Dir("proc/", 0o555),
        Entry::Dir("root/", 0o700),
        Entry::Dir("run/", 0o755),
        Entry::Dir("sbin/", 0o755),
        Entry::Dir("sys/", 0o555),
        Entry::Dir("tmp/", 0o1777),
        Entry::Dir("usr/", 0o755),
        Entry::Dir("usr/bin/", 0o755),
        Entry::Dir("usr/sbin/", 0o755),
        Entry::Dir("var/", 0o755),
        Entry::Dir("var/run/", 0o755),
        Entry::Dir("var/www/", 0o755),
        Entry::File("bin/busybox".into(), 0o755, busybox.to_vec()),
    ];
    for a in applets {
        entries.push(Entry::Link(a.clone(), "bin/busybox"));
    }
    entries.push(Entry::File("etc/passwd".into(), 0o644, PASSWD.into()));
    entries.push(Entry::File("etc/group".into(), 0o644, GROUP.into()));
    Layer::new(entries)
}

/// A layer with one file at the root named `name` (the `ADD ${TEST} ${TEST}` of upstream's
/// image-test Dockerfile), so that images built from it have distinct ids.
fn marker_layer(name: &str) -> io::Result<Layer> {
    Layer::new(vec![Entry::File(
        name.to_string(),
        0o644,
        format!("{name}\n").into_bytes(),
    )])
}

fn refs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Builds every image critest pulls, around the static `busybox` (with its `applets` paths).
pub fn build_all(busybox: &Path, applets: &[String]) -> io::Result<Vec<TestImage>> {
    let rootfs = rootfs_layer(&std::fs::read(busybox)?, applets)?;
    let webserver = compile_static("webserver.c")?;
    let nnp = compile_static("nonewprivs.c")?;
    let shell = serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"] });
    let mut out = Vec::new();

    out.push(image(&refs(&[BUSYBOX]), &[&rootfs], shell.clone())?);

    // nginx: /usr/sbin/nginx, started as upstream's image starts it.
    let nginx = Layer::new(vec![
        Entry::Dir("usr/share/", 0o755),
        Entry::Dir("usr/share/nginx/", 0o755),
        Entry::Dir("usr/share/nginx/html/", 0o755),
        Entry::File("usr/sbin/nginx".into(), 0o755, webserver.clone()),
    ])?;
    let nginx_config = |port: Option<u16>| {
        let mut env = vec![PATH_ENV.to_string()];
        if let Some(p) = port {
            env.push(format!("LISTEN_PORT={p}"));
        }
        serde_json::json!({
            "Env": env,
            "Cmd": ["nginx", "-g", "daemon off;"],
            "ExposedPorts": { format!("{}/tcp", port.unwrap_or(80)): {} },
            "StopSignal": "SIGTERM",
        })
    };
    out.push(image(
        &refs(&[NGINX]),
        &[&rootfs, &nginx],
        nginx_config(None),
    )?);
    // hostnet-nginx: nginx on port 12003 (upstream's default.conf), for host-network pods.
    out.push(image(
        &[format!("{CRI_TOOLS}/hostnet-nginx-{}", oci_arch())],
        &[&rootfs, &nginx],
        nginx_config(Some(12003)),
    )?);

    // httpd: upstream's image runs httpd-foreground and stops with SIGWINCH (graceful stop).
    let httpd = Layer::new(vec![
        Entry::Dir("usr/local/", 0o755),
        Entry::Dir("usr/local/apache2/", 0o755),
        Entry::Dir("usr/local/apache2/htdocs/", 0o755),
        Entry::Dir("usr/local/bin/", 0o755),
        Entry::File("usr/local/bin/httpd-foreground".into(), 0o755, webserver),
    ])?;
    out.push(image(
        &[format!("{E2E}/httpd:2.4.39-4")],
        &[&rootfs, &httpd],
        serde_json::json!({
            "Env": [format!("{PATH_ENV}:/usr/local/apache2/bin")],
            "Cmd": ["httpd-foreground"],
            "WorkingDir": "/usr/local/apache2",
            "ExposedPorts": { "80/tcp": {} },
            "StopSignal": "SIGWINCH",
        }),
    )?);

    // nonewprivs: a setuid-root program that prints its effective uid.
    let nonewprivs = Layer::new(vec![
        Entry::Dir("usr/local/", 0o755),
        Entry::Dir("usr/local/bin/", 0o755),
        Entry::File("usr/local/bin/nnp".into(), 0o4755, nnp),
    ])?;
    out.push(image(
        &[format!("{E2E}/nonewprivs:1.3")],
        &[&rootfs, &nonewprivs],
        serde_json::json!({ "Env": [PATH_ENV], "Entrypoint": ["/usr/local/bin/nnp"] }),
    )?);

    // Images whose only point is their USER (ImageStatus uid/username).
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:users"),
        ("test-image-user-username-group", "www-data:users"),
    ] {
        out.push(image(
            &[format!("{CRI_TOOLS}/{name}")],
            &[&rootfs],
            serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"], "User": user }),
        )?);
    }

    // default-user (1000) is a member of group-defined-in-image (50000) in /etc/group.
    let predefined = Layer::new(vec![
        Entry::Dir("home/default-user/", 0o755),
        Entry::File(
            "etc/passwd".into(),
            0o644,
            format!("{PASSWD}default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
                .into_bytes(),
        ),
        Entry::File(
            "etc/group".into(),
            0o644,
            format!("{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
                .into_bytes(),
        ),
    ])?;
    out.push(image(
        &[format!("{CRI_TOOLS}/test-image-predefined-group")],
        &[&rootfs, &predefined],
        serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"], "User": "1000" }),
    )?);

    // Tags and ids: each of these is an image of its own...
    for (reference, marker) in [
        ("test-image-latest", "test-image-latest"),
        ("test-image-tag:test", "test-image-tag-test"),
        ("test-image-tag:all", "test-image-tag-all"),
        ("test-image-1:latest", "test-image-1"),
        ("test-image-2:latest", "test-image-2"),
        ("test-image-3:latest", "test-image-3"),
    ] {
        out.push(image(
            &[format!("{CRI_TOOLS}/{reference}")],
            &[&rootfs, &marker_layer(marker)?],
            shell.clone(),
        )?);
    }
    // ...and this one image has three tags.
    out.push(image(
        &[1, 2, 3].map(|n| format!("{CRI_TOOLS}/test-image-tags:{n}")),
        &[&rootfs, &marker_layer("test-image-tags")?],
        shell,
    )?);

    // pause:3.9 from two registries (one image, two names); it must not be the CRI node's
    // sandbox image (pause:3.10), which critest would remove with it.
    let pause39 = pause_image_blobs(serde_json::json!({ "io.corral.test.pause": "3.9" }))?;
    out.push(TestImage {
        references: refs(&["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"]),
        blobs: pause39,
    });
    out.push(TestImage {
        references: refs(&[crate::cri::PAUSE_REF]),
        blobs: pause_image_blobs(serde_json::json!({}))?,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_strip_the_host_and_share_mirrored_names() {
        let img = TestImage {
            references: refs(&[
                "registry.k8s.io/pause:3.9",
                "k8s.gcr.io/pause:3.9",
                "gcr.io/k8s-staging-cri-tools/test-image-latest",
            ]),
            blobs: ImageBlobs {
                manifest: vec![],
                config: vec![],
                layers: vec![],
                layer_tars: vec![],
            },
        };
        assert_eq!(
            img.pushes(),
            vec![
                (
                    "k8s-staging-cri-tools/test-image-latest".into(),
                    "latest".into()
                ),
                ("pause".into(), "3.9".into()),
            ]
        );
    }

    #[test]
    fn rootfs_links_applets_to_busybox() {
        let layer = rootfs_layer(b"\x7fELF", &refs(&["bin/ls", "usr/bin/id"])).unwrap();
        let mut links = Vec::new();
        for e in tar::Archive::new(&layer.tar[..]).entries().unwrap() {
            let e = e.unwrap();
            if e.header().entry_type() == tar::EntryType::Link {
                let target = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                links.push((e.path().unwrap().to_string_lossy().into_owned(), target));
            }
        }
        assert_eq!(
            links,
            vec![
                ("bin/ls".to_string(), "bin/busybox".to_string()),
                ("usr/bin/id".to_string(), "bin/busybox".to_string()),
            ]
        );
        assert_eq!(layer.diff_id, sha256_digest(&layer.tar));
    }
}
