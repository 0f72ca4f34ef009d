//! Hostile-input properties of corrald (see `protocol::fuzzing` for how they run): its
//! configuration file and image references here, and in their own modules the gRPC services,
//! the ttrpc socket shims forward events to, and what registries answer a pull.

mod events_ttrpc;
mod grpc;
mod registry;

pub use events_ttrpc::events_ttrpc;
pub use grpc::grpc_services;
pub use registry::registry;

use protocol::Code;
use protocol::fuzzing::TempDir;

use crate::config::Config;
use crate::pull::reference::{self, Platform};

/// corrald's TOML configuration, read from a file as `corrald --config` does.
///
/// Property: the file loads, or fails with a message naming it; a loaded configuration either
/// validates or is refused naming the key; a valid one writes back (`corrald config default`
/// style) to the same configuration. Reading writes nothing.
pub fn config_corrald(data: &[u8]) {
    let dir = TempDir::new("corral-config");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, data).expect("write the config");
    match Config::load(&path, true) {
        Ok(cfg) => {
            if cfg.validate().is_ok() {
                let text = cfg.to_toml();
                let back: Config = toml::from_str(&text)
                    .unwrap_or_else(|e| panic!("the written config does not read back: {e}"));
                assert_eq!(back, cfg, "a config changed through to_toml");
                let _ = cfg.registry.settings();
            }
        }
        Err(e) => assert!(e.contains(&path.display().to_string()), "{e}"),
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        1,
        "loading the config wrote a file"
    );
}

/// Image references and platforms, as a pull (Transfer, Images) is given them: the first line
/// is the reference, the second the platform.
///
/// Property: a reference parses, or fails with InvalidArgument naming it; a parsed one's
/// normalised name parses again to itself (the image record's name is stable) and names a
/// host and a repository; platforms likewise.
pub fn image_reference(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (reference, platform) = text.split_once('\n').unwrap_or((&text, ""));
    match reference::parse(reference) {
        Ok(r) => {
            assert!(!r.host().is_empty() && !r.repository().is_empty(), "{r:?}");
            let again = reference::parse(&r.name)
                .unwrap_or_else(|e| panic!("normalised {:?} does not parse: {e}", r.name));
            assert_eq!(again.name, r.name, "normalising {reference:?} twice");
            // What clients (the cli, corral-cri) make of the same name.
            assert_eq!(protocol::image::normalize(&r.name), r.name, "{reference:?}");
        }
        Err(e) => {
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.to_string().contains(&format!("{reference:?}")), "{e}");
        }
    }
    match Platform::parse(platform) {
        Ok(p) => {
            let again = Platform::parse(&p.to_string())
                .unwrap_or_else(|e| panic!("platform {p} does not parse: {e}"));
            assert_eq!(again, p);
            assert!(p.matches(&p.os, &p.architecture, p.variant.as_deref()));
        }
        Err(e) => {
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.to_string().contains(&format!("{platform:?}")), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::fuzzing::{Target, run};

    #[test]
    fn config_corrald() {
        run(
            &Target {
                name: "config_corrald",
                cases: 3000,
                max_alloc: 32 << 20,
                dict: &[
                    b"version = 1\n",
                    b"root = ",
                    b"state = ",
                    b"[grpc]\n",
                    b"address = ",
                    b"[gc]\ninterval_secs = ",
                    b"[runtime]\n",
                    b"[runtime.runtimes.\"io.containerd.runc.v2\"]\n",
                    b"[runtime.runtimes.x.options]\n",
                    b"[registry]\n",
                    b"insecure = [",
                    b"\"\"\"",
                    b"'''",
                    b"\\u0000",
                    b"[[",
                    b"inf",
                    b"1979-05-27T07:32:00Z",
                ],
            },
            super::config_corrald,
        );
    }

    #[test]
    fn image_reference() {
        run(
            &Target {
                name: "image_reference",
                cases: 20_000,
                max_alloc: 32 << 20,
                dict: &[
                    b"docker.io/",
                    b"library/",
                    b"localhost:5000/",
                    b"@sha256:",
                    b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    b":latest",
                    b"//",
                    b"[::1]:5000/",
                    b"\nlinux/amd64",
                    b"/arm64/v8",
                    b"x86_64",
                ],
            },
            super::image_reference,
        );
    }
}
