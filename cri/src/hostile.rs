//! Hostile-input properties of corral-cri (see `protocol::fuzzing` for how they run).

use protocol::fuzzing::TempDir;

use crate::config::Config;

/// corral-cri's TOML configuration, read from a file as `corral-cri --config` does.
///
/// Property: the file loads (then it validates: `load` validates) or fails with a message
/// naming it; a loaded configuration writes back (`config default` style) to itself, and each
/// CRI handler it names has a runtime; reading writes nothing.
pub fn config_cri(data: &[u8]) {
    let dir = TempDir::new("corral-cri-config");
    let path = dir.path().join("cri.toml");
    std::fs::write(&path, data).expect("write the config");
    match Config::load(&path, true) {
        Ok(cfg) => {
            cfg.validate()
                .unwrap_or_else(|e| panic!("load returned a config that does not validate: {e}"));
            let back: Config = toml::from_str(&cfg.to_toml())
                .unwrap_or_else(|e| panic!("the written config does not read back: {e}"));
            assert_eq!(back, cfg, "a config changed through to_toml");
            assert!(cfg.runtime("").is_some(), "no default runtime");
            for name in cfg.runtimes.keys() {
                assert!(cfg.runtime(name).is_some(), "runtime {name}");
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

#[cfg(test)]
mod tests {
    use protocol::fuzzing::{Target, run};

    #[test]
    fn config_cri() {
        run(
            &Target {
                name: "config_cri",
                cases: 3000,
                max_alloc: 32 << 20,
                dict: &[
                    b"version = 1\n",
                    b"namespace = ",
                    b"listen = ",
                    b"root = ",
                    b"default_runtime = ",
                    b"[runtimes.kata]\n",
                    b"runtime_type = ",
                    b"[cni]\n",
                    b"bin_dirs = [",
                    b"[streaming]\nport = ",
                    b"[debug]\nlevel = ",
                    b"\"\"\"",
                    b"'''",
                    b"[[",
                ],
            },
            super::config_cri,
        );
    }
}
