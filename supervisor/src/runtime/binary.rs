//! Shim binaries: which one a runtime name means, and running its `start` and `delete`
//! actions (protocol.md §1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use protocol::Code;
use protocol::protobuf::Message as _;
use tokio::io::AsyncReadExt;

use super::bundle::{Bundle, Exit};
use crate::config::{RuncOptions, RuntimeConfig};
use crate::metadata::Time;

/// `start` may take a while on a loaded machine (it forks the server and waits for it).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// containerd's `io.containerd.timeout.shim.cleanup`.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon tells every shim it starts.
#[derive(Debug, Clone)]
pub struct ShimEnv {
    /// corrald's gRPC socket (`-address`).
    pub address: PathBuf,
    /// `<address>.ttrpc`, where shims forward events (`TTRPC_ADDRESS`).
    pub ttrpc_address: PathBuf,
    /// corrald itself (`-publish-binary`; it has a `publish` subcommand).
    pub publish_binary: PathBuf,
    pub debug: bool,
}

/// Resolves runtime names to shim binaries, as containerd does, plus the config's map.
pub struct Resolver {
    config: RuntimeConfig,
    /// Directory of the corrald executable (searched first, then `PATH`).
    exe_dir: Option<PathBuf>,
    cache: Mutex<HashMap<String, PathBuf>>,
}

impl Resolver {
    pub fn new(config: RuntimeConfig) -> Resolver {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Resolver {
            config,
            exe_dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_runtime(&self) -> &str {
        &self.config.default
    }

    /// Whether the config has an entry for `runtime`.
    pub fn configured(&self, runtime: &str) -> bool {
        self.config.runtimes.contains_key(runtime)
    }

    pub fn load_timeout(&self) -> Duration {
        Duration::from_secs(self.config.load_timeout_secs.max(1))
    }

    /// Default options of a runtime from the config, as a marshaled `Any`.
    pub fn default_options(&self, runtime: &str) -> Option<prost_types::Any> {
        let opts = self.config.runtimes.get(runtime)?.options.as_ref()?;
        Some(runc_options_any(opts))
    }

    /// The shim binary for `runtime`: the config's entry, an absolute path, or
    /// `io.containerd.<name>.<version>` → `containerd-shim-<name>-<version>` found next to
    /// corrald or on `PATH`. The answer is cached.
    pub fn resolve(&self, runtime: &str) -> Result<PathBuf, tonic::Status> {
        if let Some(p) = self.cache.lock().unwrap().get(runtime) {
            return Ok(p.clone());
        }
        let found = self.lookup(runtime)?;
        self.cache
            .lock()
            .unwrap()
            .insert(runtime.to_string(), found.clone());
        Ok(found)
    }

    fn lookup(&self, runtime: &str) -> Result<PathBuf, tonic::Status> {
        if runtime.is_empty() {
            return Err(Code::InvalidArgument.grpc_status("runtime name is empty"));
        }
        let configured = self
            .config
            .runtimes
            .get(runtime)
            .and_then(|e| e.binary.clone());
        let name = match configured {
            Some(b) => b,
            None if runtime.starts_with('/') => PathBuf::from(runtime),
            None => PathBuf::from(binary_name(runtime)?),
        };
        if name.is_absolute() {
            return if is_executable(&name) {
                Ok(name)
            } else {
                Err(Code::NotFound.grpc_status(format!(
                    "runtime {runtime:?}: shim binary {} not found or not executable",
                    name.display()
                )))
            };
        }
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        self.exe_dir
            .iter()
            .chain(path_dirs.iter())
            .map(|d| d.join(&name))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                Code::NotFound.grpc_status(format!(
                    "runtime {runtime:?}: shim binary {} not installed (looked on PATH and next to corrald)",
                    name.display()
                ))
            })
    }
}

/// `io.containerd.runc.v2` → `containerd-shim-runc-v2` (only the last two parts count).
pub fn binary_name(runtime: &str) -> Result<String, tonic::Status> {
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty() || p.contains('/')) {
        return Err(Code::InvalidArgument.grpc_status(format!(
            "invalid runtime name {runtime:?}, correct format is \"io.containerd.<name>.<version>\""
        )));
    }
    let n = parts.len();
    Ok(format!("containerd-shim-{}-{}", parts[n - 2], parts[n - 1]))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn runc_options_any(o: &RuncOptions) -> prost_types::Any {
    let msg = protocol::options::Options {
        binary_name: o.binary_name.clone(),
        root: o.root.clone(),
        systemd_cgroup: o.systemd_cgroup,
        no_pivot_root: o.no_pivot_root,
        no_new_keyring: o.no_new_keyring,
        shim_cgroup: o.shim_cgroup.clone(),
        io_uid: o.io_uid,
        io_gid: o.io_gid,
        criu_path: o.criu_path.clone(),
        ..Default::default()
    };
    prost_types::Any {
        type_url: protocol::grpc::any::RUNC_OPTIONS.into(),
        value: msg.write_to_bytes().unwrap_or_default(),
    }
}

fn command(
    shim: &Path,
    env: &ShimEnv,
    bundle: &Bundle,
    action: &str,
    debug: bool,
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(shim);
    c.arg("-namespace")
        .arg(&bundle.namespace)
        .arg("-address")
        .arg(&env.address)
        .arg("-publish-binary")
        .arg(&env.publish_binary)
        .arg("-id")
        .arg(&bundle.id);
    if action == "delete" {
        c.arg("-bundle").arg(&bundle.path);
    }
    if debug {
        c.arg("-debug");
    }
    c.arg(action)
        .current_dir(&bundle.path)
        .env("TTRPC_ADDRESS", &env.ttrpc_address)
        .env("GOMAXPROCS", "2")
        .process_group(0)
        .kill_on_drop(true);
    c
}

/// Runs `<shim> … start` with the options on stdin; returns the address it printed.
pub async fn start(
    shim: &Path,
    env: &ShimEnv,
    bundle: &Bundle,
    options: Option<&prost_types::Any>,
) -> Result<String, tonic::Status> {
    use prost::Message as _;
    let stdin = options.map(|o| o.encode_to_vec()).unwrap_or_default();
    let mut c = command(shim, env, bundle, "start", env.debug);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = || format!("start shim {} for {}", shim.display(), bundle.id);
    let mut child = c
        .spawn()
        .map_err(|e| Code::Internal.grpc_status(format!("{}: {e}", what())))?;
    let mut input = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let run = async {
        use tokio::io::AsyncWriteExt;
        if let Some(mut i) = input.take() {
            // A shim that does not read its options must not make us fail.
            let _ = i.write_all(&stdin).await;
        }
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let read_o = async {
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let read_e = async {
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        tokio::join!(read_o, read_e);
        let status = child.wait().await;
        (status, o, e)
    };
    let (status, out, err) = tokio::time::timeout(START_TIMEOUT, run)
        .await
        .map_err(|_| {
            Code::DeadlineExceeded
                .grpc_status(format!("{}: no answer within {START_TIMEOUT:?}", what()))
        })?;
    let status = status.map_err(|e| Code::Internal.grpc_status(format!("{}: {e}", what())))?;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&String::from_utf8_lossy(&err));
    let text = text.trim().to_string();
    if !status.success() {
        return Err(Code::Internal.grpc_status(format!("{}: {status}: {text}", what())));
    }
    if text.is_empty() {
        return Err(Code::Internal.grpc_status(format!("{}: it printed no address", what())));
    }
    Ok(text)
}

/// Runs `<shim> … delete`: the shim cleans up without being asked over ttrpc. Returns the exit
/// it reports, or 255 now when it fails.
pub async fn delete(shim: &Path, env: &ShimEnv, bundle: &Bundle) -> Exit {
    let failed = Exit {
        pid: 0,
        status: 255,
        at: Time::now(),
    };
    let mut c = command(shim, env, bundle, "delete", false);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match tokio::time::timeout(DELETE_TIMEOUT, c.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            log::warn!("shim delete {}/{}: {e}", bundle.namespace, bundle.id);
            return failed;
        }
        Err(_) => {
            log::warn!(
                "shim delete {}/{}: no answer within {DELETE_TIMEOUT:?}",
                bundle.namespace,
                bundle.id
            );
            return failed;
        }
    };
    if !out.stderr.is_empty() {
        log::info!(
            "shim delete {}/{}: cleanup warnings: {}",
            bundle.namespace,
            bundle.id,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !out.status.success() {
        log::warn!(
            "shim delete {}/{} failed: {}",
            bundle.namespace,
            bundle.id,
            out.status
        );
        return failed;
    }
    match protocol::shim::DeleteResponse::parse_from_bytes(&out.stdout) {
        Ok(r) => Exit {
            pid: r.pid,
            status: r.exit_status,
            at: r
                .exited_at
                .as_ref()
                .map(|t| Time {
                    seconds: t.seconds,
                    nanos: t.nanos,
                })
                .unwrap_or_else(Time::now),
        },
        Err(e) => {
            log::warn!(
                "shim delete {}/{}: unreadable answer: {e}",
                bundle.namespace,
                bundle.id
            );
            failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeEntry;

    #[test]
    fn runtime_names_map_to_binaries() {
        assert_eq!(
            binary_name("io.containerd.runc.v2").unwrap(),
            "containerd-shim-runc-v2"
        );
        assert_eq!(
            binary_name("io.containerd.corral.v1").unwrap(),
            "containerd-shim-corral-v1"
        );
        assert_eq!(binary_name("foo.v3").unwrap(), "containerd-shim-foo-v3");
        for bad in ["", "runc", "io..v1", "io.containerd.a/b.v1"] {
            assert_eq!(
                binary_name(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn resolution_uses_config_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("my-shim");
        std::fs::write(&shim, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = RuntimeConfig::default();
        cfg.runtimes.insert(
            "custom".into(),
            RuntimeEntry {
                binary: Some(shim.clone()),
                options: Some(RuncOptions {
                    root: "/run/x".into(),
                    ..Default::default()
                }),
            },
        );
        let r = Resolver::new(cfg);
        assert_eq!(r.resolve("custom").unwrap(), shim);
        let opts = r.default_options("custom").unwrap();
        assert_eq!(opts.type_url, "containerd.runc.v1.Options");
        let back = protocol::options::Options::parse_from_bytes(&opts.value).unwrap();
        assert_eq!(back.root, "/run/x");
        assert_eq!(r.resolve(shim.to_str().unwrap()).unwrap(), shim);
        let e = r.resolve("io.containerd.nosuch.v9").unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("containerd-shim-nosuch-v9"), "{e}");
    }
}
