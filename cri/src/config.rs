//! corral-cri's configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! `corral-cri config default` prints the defaults, which are also what a missing file at the
//! default location means. Unknown keys are an error that names the key: a typo must not
//! silently fall back to a default path. Every path is configurable so that a test, or a
//! second instance, runs on private paths beside a system one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `corral-cri` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/corral/cri.toml";

/// `sun_path` holds 108 bytes, one of them the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// logrus's levels, as containerd accepts them.
const LOG_LEVELS: &[&str] = &[
    "trace", "debug", "info", "warn", "warning", "error", "fatal", "panic",
];

/// containerd's identifier rule (namespaces): `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version.
    pub version: u32,
    /// corrald's socket.
    pub address: PathBuf,
    /// The CRI socket kubelet and crictl connect to (created mode 0660).
    pub listen: PathBuf,
    /// Files pods need on the host: network namespaces, /etc/hosts, resolv.conf, hostname,
    /// /dev/shm per pod.
    pub root: PathBuf,
    /// The corrald namespace pods and containers live in (`ctr -n k8s.io containers ls`).
    pub namespace: String,
    /// The image of every pod's sandbox (pause) container; pulled when missing.
    pub sandbox_image: String,
    /// The snapshotter container root filesystems are prepared with.
    pub snapshotter: String,
    /// What RuntimeConfig reports to kubelet: `cgroupfs` (the only driver corral-cri sets
    /// cgroup paths for) or `systemd`.
    pub cgroup_driver: String,
    /// Log lines longer than this are split into partial (`P`) entries.
    pub max_container_log_line_size: u32,
    /// The handler used when a pod names none (kubelet sends "").
    pub default_runtime: String,
    /// Runtime handlers (`RunPodSandboxRequest.runtime_handler`) → corrald runtimes.
    pub runtimes: BTreeMap<String, Runtime>,
    pub cni: Cni,
    pub streaming: Streaming,
    pub grpc: Grpc,
    pub debug: Debug,
}

/// The CRI socket's gRPC settings, with containerd's keys (its `[grpc]` section, which its
/// CRI plugin shares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grpc {
    /// The largest request message accepted, in bytes (16 MiB, kubelet's own limit; 0 means
    /// the default). A larger one fails with ResourceExhausted.
    pub max_recv_message_size: usize,
    /// The largest answer sent, in bytes (as above): a ListContainers past it fails with
    /// ResourceExhausted.
    pub max_send_message_size: usize,
}

impl Default for Grpc {
    fn default() -> Grpc {
        Grpc {
            max_recv_message_size: protocol::grpc::limits::DEFAULT_MAX_MESSAGE,
            max_send_message_size: protocol::grpc::limits::DEFAULT_MAX_MESSAGE,
        }
    }
}

/// One runtime handler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// The corrald runtime name containers of this handler get
    /// (`io.containerd.corral.v1`, `io.containerd.runc.v2`, ...).
    pub runtime_type: String,
    /// Whether the runtime's shim writes CRI-format logs itself (our shim's
    /// `file://...?format=cri`). Others get FIFOs that corral-cri copies from, which stops
    /// while corral-cri is down.
    pub shim_writes_logs: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cni {
    /// Network configurations (`*.conflist`, `*.conf`, `*.json`); the first in lexical order
    /// is the pod network, as with containerd.
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// A conflist template written to `conf_dir` when kubelet sends a pod CIDR
    /// (UpdateRuntimeConfig); `{{.PodCIDR}}` is replaced. Empty: none.
    pub conf_template: PathBuf,
    /// Set up the pod's `lo` without the CNI loopback plugin (containerd 2.0's
    /// `use_internal_loopback`). false runs the plugin, as containerd 1.6 does.
    pub internal_loopback: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Streaming {
    /// The IP address the streaming server (exec, attach, port-forward) listens on; the URLs
    /// given to clients name it.
    pub address: String,
    /// Its port; 0 picks a free one.
    pub port: u16,
    /// A PEM certificate (chain) for serving HTTPS; empty: plain HTTP. Needs `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Debug {
    /// error, warn, info, debug or trace.
    pub level: String,
}

/// Our shim's runtime type: the one runtime that idmaps root filesystems and binds, so the
/// one that can run pods with user namespaces (`crate::system`).
pub const CORRAL_RUNTIME_TYPE: &str = "io.containerd.corral.v1";

impl Default for Config {
    fn default() -> Config {
        let mut runtimes = BTreeMap::new();
        runtimes.insert(
            "corral".to_string(),
            Runtime {
                runtime_type: CORRAL_RUNTIME_TYPE.into(),
                shim_writes_logs: true,
            },
        );
        runtimes.insert(
            "runc".to_string(),
            Runtime {
                runtime_type: "io.containerd.runc.v2".into(),
                shim_writes_logs: false,
            },
        );
        Config {
            version: 1,
            address: "/run/corral/corral.sock".into(),
            listen: "/run/corral/cri.sock".into(),
            root: "/var/lib/corral-cri".into(),
            namespace: "k8s.io".into(),
            sandbox_image: "registry.k8s.io/pause:3.10".into(),
            snapshotter: "overlayfs".into(),
            cgroup_driver: "cgroupfs".into(),
            max_container_log_line_size: 16 * 1024,
            default_runtime: "corral".into(),
            runtimes,
            cni: Cni::default(),
            streaming: Streaming::default(),
            grpc: Grpc::default(),
            debug: Debug::default(),
        }
    }
}

impl Default for Cni {
    fn default() -> Cni {
        Cni {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            conf_template: PathBuf::new(),
            internal_loopback: true,
        }
    }
}

impl Default for Streaming {
    fn default() -> Streaming {
        Streaming {
            address: "127.0.0.1".into(),
            port: 0,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
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

impl Config {
    /// Reads `path`; a missing file means the defaults unless `must_exist`.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default());
            }
            Err(e) => return Err(format!("read config {}: {e}", path.display())),
        };
        let mut cfg: Config =
            toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
        // A file that adds a handler keeps the built-in ones (containerd's TOML decoding merges
        // maps into the defaults the same way); one that names a built-in replaces it.
        for (name, runtime) in Config::default().runtimes {
            cfg.runtimes.entry(name).or_insert(runtime);
        }
        cfg.validate()
            .map_err(|e| format!("config {}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Checks what the types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!(
                "unsupported version {} (this corral-cri reads version 1)",
                self.version
            ));
        }
        if !self.runtimes.contains_key(&self.default_runtime) {
            return Err(format!(
                "default_runtime {:?} is not one of [runtimes.*] ({})",
                self.default_runtime,
                self.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some((name, _)) = self
            .runtimes
            .iter()
            .find(|(_, r)| r.runtime_type.is_empty())
        {
            return Err(format!("[runtimes.{name}] has no runtime_type"));
        }
        if !matches!(self.cgroup_driver.as_str(), "cgroupfs" | "systemd") {
            return Err(format!(
                "cgroup_driver {:?}: want cgroupfs or systemd",
                self.cgroup_driver
            ));
        }
        // Every call to corrald names it: one corrald refuses fails them all, after corral-cri
        // has created its directories.
        if !is_identifier(&self.namespace) {
            return Err(format!(
                "namespace {:?}: not a containerd identifier ([A-Za-z0-9]+([._-][A-Za-z0-9]+)*, \
                 at most 76 characters)",
                self.namespace
            ));
        }
        if self.listen.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "listen {}: too long for a unix socket (at most {MAX_SOCKET_PATH} bytes)",
                self.listen.display()
            ));
        }
        if !LOG_LEVELS.contains(&self.debug.level.as_str()) {
            return Err(format!(
                "debug.level {:?}: want one of {}",
                self.debug.level,
                LOG_LEVELS.join(", ")
            ));
        }
        let s = &self.streaming;
        if s.address.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "[streaming] address {:?} is not an IP address",
                s.address
            ));
        }
        match (
            s.tls_cert_file.as_os_str().is_empty(),
            s.tls_key_file.as_os_str().is_empty(),
        ) {
            (true, true) | (false, false) => {}
            (false, true) => return Err("[streaming] tls_cert_file needs tls_key_file".into()),
            (true, false) => return Err("[streaming] tls_key_file needs tls_cert_file".into()),
        }
        self.message_limits()?;
        for (what, p) in [
            ("root", &self.root),
            ("listen", &self.listen),
            ("address", &self.address),
        ] {
            if !p.is_absolute() {
                return Err(format!("{what} {}: not an absolute path", p.display()));
            }
        }
        Ok(())
    }

    /// The CRI server's message limits (`[grpc]`).
    pub fn message_limits(&self) -> Result<protocol::grpc::limits::MessageLimits, String> {
        protocol::grpc::limits::MessageLimits::from_config(
            self.grpc.max_recv_message_size,
            self.grpc.max_send_message_size,
        )
    }

    /// The runtime of a CRI handler name ("" is the default handler).
    pub fn runtime(&self, handler: &str) -> Option<&Runtime> {
        let name = if handler.is_empty() {
            &self.default_runtime
        } else {
            handler
        };
        self.runtimes.get(name)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_and_is_valid() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
        back.validate().unwrap();
        assert!(text.contains("sandbox_image"), "{text}");
        assert!(text.contains("[cni]"), "{text}");
        assert!(text.contains("[streaming]"), "{text}");
        assert!(text.contains("[runtimes.corral]"), "{text}");
        assert!(text.contains("max_recv_message_size = 16777216"), "{text}");
    }

    #[test]
    fn message_limits_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[grpc]\nmax_send_message_size = 4096\n").unwrap();
        let l = Config::load(&p, true).unwrap().message_limits().unwrap();
        assert_eq!((l.recv, l.send), (16 << 20, 4096));
        std::fs::write(&p, "[grpc]\nmax_recv_message_size = 99999999999\n").unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert!(e.contains("grpc.max_recv_message_size"), "{e}");
        std::fs::write(&p, "[grpc]\nmax_recv_msg_size = 1\n").unwrap();
        assert!(
            Config::load(&p, true)
                .unwrap_err()
                .contains("max_recv_msg_size")
        );
    }

    #[test]
    fn partial_files_keep_defaults_and_mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "sandbox_image = \"x/pause:1\"\n[cni]\nconf_dir = \"/tmp/net.d\"\n",
        )
        .unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.sandbox_image, "x/pause:1");
        assert_eq!(c.cni.conf_dir, PathBuf::from("/tmp/net.d"));
        assert_eq!(c.cni.bin_dirs, Cni::default().bin_dirs);
        assert_eq!(
            c.runtime("").unwrap().runtime_type,
            "io.containerd.corral.v1"
        );
        assert_eq!(
            c.runtime("runc").unwrap().runtime_type,
            "io.containerd.runc.v2"
        );
        assert!(c.runtime("kata").is_none());

        for (text, want) in [
            ("sandbox_imag = \"x\"\n", "sandbox_imag"),
            ("version = 2\n", "version 2"),
            ("default_runtime = \"kata\"\n", "kata"),
            ("cgroup_driver = \"foo\"\n", "foo"),
            ("root = \"rel\"\n", "rel"),
            ("[runtimes.x]\nshim_writes_logs = true\n", "runtimes.x"),
            ("default_runtime = \"\"\n", "default_runtime"),
            ("[streaming]\naddress = \"localhost\"\n", "localhost"),
            (
                "[streaming]\ntls_cert_file = \"/c.pem\"\n",
                "tls_cert_file needs tls_key_file",
            ),
            (
                "[streaming]\ntls_key_file = \"/k.pem\"\n",
                "tls_key_file needs tls_cert_file",
            ),
            // Found writing the config_cri fuzz target: accepted, then refused by corrald on every
            // call after corral-cri had created its directories.
            ("namespace = \"k8s/io\"\n", "namespace"),
            ("namespace = \"-a\"\n", "namespace"),
            (
                "listen = \"/run/corral/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\"\n",
                "too long",
            ),
            ("[debug]\nlevel = \"loud\"\n", "debug.level"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Config::load(&p, true).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
        }

        std::fs::write(
            &p,
            "[runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\n",
        )
        .unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(
            c.runtime("kata").unwrap().runtime_type,
            "io.containerd.kata.v2"
        );
        assert_eq!(
            c.runtime("").unwrap().runtime_type,
            "io.containerd.corral.v1"
        );

        let none = dir.path().join("none.toml");
        assert_eq!(Config::load(&none, false).unwrap(), Config::default());
        assert!(Config::load(&none, true).is_err());
    }
}
