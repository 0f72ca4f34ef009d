//! The errors of pod networking, each with the class corral-cri answers on the wire:
//! misconfiguration (no config, a broken one, a missing plugin binary) is FailedPrecondition,
//! a plugin that said no is Unknown with the plugin's own message, our own faults are Internal.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::Code;

use super::exec::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `conf_dir` is missing or has no `*.conflist`, `*.conf` or `*.json` file.
    #[error("no network config found in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("read network config dir {}: {source}", dir.display())]
    ReadConfigDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file that would be the pod network cannot be used.
    #[error("network config {}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("CNI plugin {plugin:?} not found in {}", show_dirs(dirs))]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    /// The plugin exited non-zero; `msg`, `details` and `code` are its CNI error object (or,
    /// when it printed none, its stderr).
    #[error(
        "plugin type={plugin:?} name={network:?} failed ({command}): {msg}{}{}",
        if details.is_empty() { String::new() } else { format!(": {details}") },
        if *code == 0 { String::new() } else { format!(" (CNI error code {code})") }
    )]
    Plugin {
        network: String,
        plugin: String,
        command: Command,
        code: u64,
        msg: String,
        details: String,
    },
    #[error(
        "plugin type={plugin:?} name={network:?} ({command}) did not finish within {timeout:?}; killed it"
    )]
    Timeout {
        network: String,
        plugin: String,
        command: Command,
        timeout: Duration,
    },
    #[error("start CNI plugin {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "plugin type={plugin:?} name={network:?} ({command}) printed an invalid result: {reason}"
    )]
    InvalidResult {
        network: String,
        plugin: String,
        command: Command,
        reason: String,
    },
    /// ADD succeeded but left nothing on the pod's interface: containerd fails the sandbox too.
    #[error("network {network:?} gave no IP address to {ifname} of pod {id}")]
    NoPodIp {
        network: String,
        id: String,
        ifname: String,
    },
    /// CHECK needs the ADD result; neither the caller nor the cache had one.
    #[error("no ADD result of pod {id} on network {network:?} to check against")]
    NoPrevResult { network: String, id: String },
    #[error("CNI result cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bring up lo in {}: {source}", netns.display())]
    Loopback {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("CNI conf template {}: {reason}", path.display())]
    Template {
        path: PathBuf,
        reason: String,
        code: Code,
    },
    #[error("write network config {}: {source}", path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// DEL went on past failing plugins; these are all their errors, in the order they ran.
    #[error("tear down network of pod {id}: {}", join(errors))]
    Teardown { id: String, errors: Vec<Error> },
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::NoConfig { .. }
            | Error::InvalidConfig { .. }
            | Error::PluginNotFound { .. }
            | Error::NoPrevResult { .. } => Code::FailedPrecondition,
            // CNI's reserved code 11 is "try again later".
            Error::Plugin { code: 11, .. } => Code::Unavailable,
            Error::Plugin { .. } => Code::Unknown,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Spawn { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Code::FailedPrecondition
            }
            Error::Spawn { .. }
            | Error::ReadConfigDir { .. }
            | Error::InvalidResult { .. }
            | Error::NoPodIp { .. }
            | Error::Cache { .. }
            | Error::Loopback { .. }
            | Error::WriteConfig { .. } => Code::Internal,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Template { code, .. } => *code,
            Error::Teardown { errors, .. } => errors.first().map_or(Code::Unknown, Error::code),
        }
    }

    pub(crate) fn invalid_config(path: &Path, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

fn show_dirs(dirs: &[PathBuf]) -> String {
    let v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn join(errors: &[Error]) -> String {
    let v: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    v.join("; ")
}
