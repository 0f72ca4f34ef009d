//! corrald's configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! `corrald config default` prints the defaults, which are also what a missing file means.
//! Unknown keys are an error that names the key: a typo must not silently fall back to a
//! default path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `sun_path` holds 108 bytes, one of them the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// logrus's levels, as containerd accepts them for `debug.level`.
pub const LOG_LEVELS: &[&str] = &[
    "trace", "debug", "info", "warn", "warning", "error", "fatal", "panic",
];
const MAX_GC_INTERVAL_SECS: u64 = 365 * 24 * 3600;
const MAX_LOAD_TIMEOUT_SECS: u64 = 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version.
    pub version: u32,
    /// Persistent state: metadata, content, snapshots.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: bundles, sockets.
    pub state: PathBuf,
    pub grpc: Grpc,
    pub debug: Debug,
    pub gc: Gc,
    pub registry: Registry,
    pub runtime: RuntimeConfig,
}

/// How tasks get their shims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Runtime for containers that name none.
    pub default: String,
    /// Runtimes by name (`io.containerd.runc.v2`, or any name of your own), each mapped to a
    /// shim binary and default options. Names not listed resolve as containerd does:
    /// `io.containerd.<name>.<version>` → `containerd-shim-<name>-<version>`, looked up next to
    /// corrald, then on `PATH`. containerd's legacy `io.containerd.runtime.v1.linux`, unless
    /// listed here, runs with `io.containerd.runc.v2`, its options translated (see
    /// `runtime::legacy`).
    pub runtimes: std::collections::BTreeMap<String, RuntimeEntry>,
    /// Seconds to wait for each shim while reconnecting to them at start-up.
    pub load_timeout_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeEntry {
    /// The shim binary (absolute, or a name looked up like the default).
    pub binary: Option<PathBuf>,
    /// runc options given to the shim when neither the task nor the container brings any
    /// (`containerd.runc.v1.Options`).
    pub options: Option<RuncOptions>,
}

/// The fields of `containerd.runc.v1.Options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuncOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub shim_cgroup: String,
    pub io_uid: u32,
    pub io_gid: u32,
    pub criu_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grpc {
    /// The unix socket clients (ctr, CRI, corral) connect to.
    pub address: PathBuf,
    /// Group allowed to use the socket (mode 0660); 0 is root only.
    pub gid: u32,
    /// The largest request message accepted, in bytes (containerd's key and default, 16 MiB;
    /// 0 means the default). A larger one fails with ResourceExhausted.
    pub max_recv_message_size: usize,
    /// The largest answer sent, in bytes (as above). An answer that would be larger fails the
    /// call with ResourceExhausted.
    pub max_send_message_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Debug {
    /// error, warn, info, debug or trace.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gc {
    /// Seconds between periodic garbage collections (besides those after deletions).
    pub interval_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    /// The registry hosts directory, in containerd's layout: `<config_path>/<host[:port]>/
    /// hosts.toml` gives a registry's mirrors, plain HTTP or TLS settings (CA, client
    /// certificate, skip_verify) and extra headers; `_default/hosts.toml` applies to registries
    /// without a directory. Read per pull; a missing directory means none.
    pub config_path: PathBuf,
    /// A docker-style `config.json` whose `auths` give registry credentials, per host pulled
    /// from (read per pull; a missing file means none).
    pub auths_file: PathBuf,
    /// Registries (`host[:port]`) pulled from over plain HTTP instead of HTTPS (when no
    /// hosts.toml gives them a server).
    pub insecure: Vec<String>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            config_path: "/etc/corral/certs.d".into(),
            auths_file: "/root/.docker/config.json".into(),
            insecure: Vec::new(),
        }
    }
}

impl Registry {
    /// The pull module's view of these settings.
    pub fn settings(&self) -> crate::pull::Settings {
        crate::pull::Settings {
            config_path: self.config_path.clone(),
            auths_file: self.auths_file.clone(),
            insecure: self.insecure.clone(),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            version: 1,
            root: "/var/lib/corral".into(),
            state: "/run/corral".into(),
            grpc: Grpc::default(),
            debug: Debug::default(),
            gc: Gc::default(),
            registry: Registry::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            default: "io.containerd.corral.v1".into(),
            runtimes: Default::default(),
            load_timeout_secs: 5,
        }
    }
}

impl Default for Grpc {
    fn default() -> Grpc {
        Grpc {
            address: "/run/corral/corral.sock".into(),
            gid: 0,
            max_recv_message_size: protocol::grpc::limits::DEFAULT_MAX_MESSAGE,
            max_send_message_size: protocol::grpc::limits::DEFAULT_MAX_MESSAGE,
        }
    }
}

impl Default for Debug {
    fn default() -> Debug {
        Debug {
            level: "info".into(),
        }
    }
}

impl Default for Gc {
    fn default() -> Gc {
        Gc { interval_secs: 300 }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default location means the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default());
            }
            Err(e) => return Err(format!("read config {}: {e}", path.display())),
        };
        let cfg: Config =
            toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
        if cfg.version != 1 {
            return Err(format!(
                "config {}: unsupported version {} (this corrald reads version 1)",
                path.display(),
                cfg.version
            ));
        }
        cfg.message_limits()
            .map_err(|e| format!("config {}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// The gRPC server's message limits (`[grpc] max_recv_message_size`,
    /// `max_send_message_size`).
    pub fn message_limits(&self) -> Result<protocol::grpc::limits::MessageLimits, String> {
        protocol::grpc::limits::MessageLimits::from_config(
            self.grpc.max_recv_message_size,
            self.grpc.max_send_message_size,
        )
    }

    /// Checks what the types cannot say, before corrald creates or binds anything: a bad
    /// file (or flag) must leave nothing written. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!(
                "unsupported version {} (this corrald reads version 1)",
                self.version
            ));
        }
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.address", &self.grpc.address),
        ] {
            if !p.is_absolute() {
                return Err(format!("{key} {}: not an absolute path", p.display()));
            }
        }
        // The ttrpc socket beside it is the longer one; both must fit a sockaddr_un.
        let ttrpc = self.ttrpc_address();
        if ttrpc.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "grpc.address {}: too long for a unix socket (with \".ttrpc\" at most {} bytes)",
                self.grpc.address.display(),
                MAX_SOCKET_PATH
            ));
        }
        if !LOG_LEVELS.contains(&self.debug.level.as_str()) {
            return Err(format!(
                "debug.level {:?}: want one of {}",
                self.debug.level,
                LOG_LEVELS.join(", ")
            ));
        }
        if self.runtime.default.is_empty() {
            return Err("runtime.default is empty".into());
        }
        // Timers of these lengths overflow the clock (tokio panics adding them to now).
        if self.gc.interval_secs > MAX_GC_INTERVAL_SECS {
            return Err(format!(
                "gc.interval_secs {}: more than a year ({MAX_GC_INTERVAL_SECS}); 0 turns the timer off",
                self.gc.interval_secs
            ));
        }
        if self.runtime.load_timeout_secs > MAX_LOAD_TIMEOUT_SECS {
            return Err(format!(
                "runtime.load_timeout_secs {}: more than an hour ({MAX_LOAD_TIMEOUT_SECS})",
                self.runtime.load_timeout_secs
            ));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// The ttrpc socket beside the gRPC one, where shims forward their events.
    pub fn ttrpc_address(&self) -> PathBuf {
        let mut s = self.grpc.address.clone().into_os_string();
        s.push(".ttrpc");
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
        assert!(text.contains("/var/lib/corral"));
    }

    #[test]
    fn partial_files_keep_defaults_and_typos_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "version = 1\nroot = \"/tmp/r\"\n[grpc]\ngid = 5\n").unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(c.grpc.gid, 5);
        assert_eq!(c.grpc.address, Grpc::default().address);

        std::fs::write(&p, "version = 1\nrooot = \"/tmp/r\"\n").unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert!(e.contains("rooot"), "{e}");

        std::fs::write(&p, "version = 2\n").unwrap();
        assert!(Config::load(&p, true).unwrap_err().contains("version 2"));

        assert_eq!(
            Config::load(&dir.path().join("none.toml"), false).unwrap(),
            Config::default()
        );
        assert!(Config::load(&dir.path().join("none.toml"), true).is_err());
    }

    /// Found by the config fuzz target: a file that parsed was trusted whole, so
    /// `gc.interval_secs = 18446744073709551615` made the GC timer panic (tokio adds the
    /// period to now) and a relative root made corrald create directories under its cwd.
    #[test]
    fn values_that_parse_but_cannot_work_are_refused_naming_the_key() {
        assert_eq!(Config::default().validate(), Ok(()));
        let long = format!("/{}", "s".repeat(101));
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.root = "var/lib/corral".into()), "root"),
            (Box::new(|c| c.state = "".into()), "state"),
            (
                Box::new(|c| c.grpc.address = "corral.sock".into()),
                "grpc.address",
            ),
            (
                Box::new(move |c| c.grpc.address = long.clone().into()),
                "too long",
            ),
            (
                Box::new(|c| c.debug.level = "verbose".into()),
                "debug.level",
            ),
            (
                Box::new(|c| c.runtime.default = String::new()),
                "runtime.default",
            ),
            (
                Box::new(|c| c.gc.interval_secs = u64::MAX),
                "gc.interval_secs",
            ),
            (
                Box::new(|c| c.runtime.load_timeout_secs = u64::MAX),
                "runtime.load_timeout_secs",
            ),
        ];
        for (bad, key) in cases {
            let mut c = Config::default();
            bad(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        let mut c = Config::default();
        c.gc.interval_secs = 0;
        c.debug.level = "fatal".into();
        assert_eq!(
            c.validate(),
            Ok(()),
            "0 turns GC off; logrus levels are fine"
        );
    }

    #[test]
    fn message_limits_as_containerds_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        assert_eq!(
            Config::default().message_limits().unwrap(),
            protocol::grpc::limits::MessageLimits {
                recv: 16 << 20,
                send: 16 << 20
            }
        );
        std::fs::write(
            &p,
            "version = 1\n[grpc]\nmax_recv_message_size = 1024\nmax_send_message_size = 0\n",
        )
        .unwrap();
        let l = Config::load(&p, true).unwrap().message_limits().unwrap();
        assert_eq!((l.recv, l.send), (1024, 16 << 20));
        std::fs::write(
            &p,
            "version = 1\n[grpc]\nmax_recv_message_size = 4294967296\n",
        )
        .unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert!(
            e.contains("max_recv_message_size") && e.contains("c.toml"),
            "{e}"
        );
    }

    #[test]
    fn registry_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "version = 1\n[registry]\ninsecure = [\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.registry.insecure, vec!["127.0.0.1:5000".to_string()]);
        assert_eq!(
            c.registry.auths_file,
            PathBuf::from("/root/.docker/config.json")
        );
        assert_eq!(c.registry.config_path, PathBuf::from("/etc/corral/certs.d"));
        std::fs::write(
            &p,
            "version = 1\n[registry]\nconfig_path = \"/tmp/certs.d\"\nauths_file = \"/tmp/a.json\"\n",
        )
        .unwrap();
        let c = Config::load(&p, true).unwrap();
        let s = c.registry.settings();
        assert_eq!(
            (s.config_path, s.auths_file),
            ("/tmp/certs.d".into(), "/tmp/a.json".into())
        );
        std::fs::write(&p, "version = 1\n[registry]\ninsecur = []\n").unwrap();
        assert!(Config::load(&p, true).unwrap_err().contains("insecur"));
    }
}
