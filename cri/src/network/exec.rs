//! Running one CNI plugin binary: the spec's execution protocol (section 2) as libcni's
//! `invoke` package does it — `CNI_*` variables on top of our own environment (plugins such as
//! portmap find `iptables` through `PATH`), the request on stdin, the result or a CNI error
//! object on stdout, logs on stderr.
//!
//! Each plugin gets its own process group: bridge runs host-local as a child, and a hung IPAM
//! child would otherwise outlive the deadline holding the stdout pipe open. On the deadline the
//! whole group is killed and the plugin reaped before the error is returned.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::error::Error;

/// What a plugin reads, at most, from its output: results are a few KiB.
const STDOUT_CAP: usize = 4 << 20;
const STDERR_CAP: usize = 64 << 10;

/// The CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-attachment parameters of one invocation (the spec's environment variables).
pub(crate) struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// Empty on a DEL whose namespace is already gone (the spec allows it).
    pub netns: &'a str,
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// The first `dirs/<plugin>` that is a regular file (libcni's `FindInPath`).
pub(crate) fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, Error> {
    if !plugin.contains('/') && !plugin.is_empty() {
        for dir in dirs {
            let p = dir.join(plugin);
            if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                return Ok(p);
            }
        }
    }
    Err(Error::PluginNotFound {
        plugin: plugin.to_string(),
        dirs: dirs.to_vec(),
    })
}

/// Runs `plugin` of `network` with `stdin` as its request; returns its stdout on success.
pub(crate) async fn invoke(
    inv: &Invocation<'_>,
    network: &str,
    plugin: &str,
    stdin: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    let path = find_plugin(plugin, inv.bin_dirs)?;
    let cni_path = std::env::join_paths(inv.bin_dirs)
        .map_err(|e| Error::InvalidArgument(format!("CNI bin dirs: {e}")))?;
    let mut cmd = tokio::process::Command::new(&path);
    cmd.env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A caller that gives up (its future dropped) must not leave the plugin running.
        .kill_on_drop(true);
    log::debug!(
        "cni: {} {plugin} network={network} id={} netns={} ifname={}",
        inv.command,
        inv.container_id,
        inv.netns,
        inv.ifname
    );
    let mut child = spawn(&mut cmd, &path).await?;
    let pid = child.id();
    let (mut sin, sout, serr) = (
        child.stdin.take().expect("piped"),
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let run = async {
        let write = async move {
            // A plugin that exits without reading its stdin is judged by its exit status.
            let _ = sin.write_all(&stdin).await;
            drop(sin);
        };
        let (_, out, err, status) = tokio::join!(
            write,
            read_capped(sout, STDOUT_CAP),
            read_capped(serr, STDERR_CAP),
            child.wait()
        );
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(inv.timeout, run).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            // Reaps it (the group's other members belong to init once it is gone).
            let _ = child.kill().await;
            log::warn!(
                "cni: {} {plugin} network={network} id={}: killed after {:?}",
                inv.command,
                inv.container_id,
                inv.timeout
            );
            return Err(Error::Timeout {
                network: network.to_string(),
                plugin: plugin.to_string(),
                command: inv.command,
                timeout: inv.timeout,
            });
        }
    };
    let status = status.map_err(|source| Error::Spawn {
        path: path.clone(),
        source,
    })?;
    if !err.is_empty() {
        log::debug!(
            "cni: {} {plugin} id={} stderr: {}",
            inv.command,
            inv.container_id,
            String::from_utf8_lossy(&err).trim_end()
        );
    }
    if status.success() {
        return Ok(out);
    }
    let (code, msg, details) = plugin_error(&out, &err, status);
    log::warn!(
        "cni: {} {plugin} network={network} id={} failed: {msg} {details}",
        inv.command,
        inv.container_id
    );
    Err(Error::Plugin {
        network: network.to_string(),
        plugin: plugin.to_string(),
        command: inv.command,
        code,
        msg,
        details,
    })
}

/// The CNI error object a failed plugin printed, or what we can say without one (libcni's
/// `pluginErr`: stderr, else the exit status).
fn plugin_error(
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> (u64, String, String) {
    #[derive(Deserialize)]
    struct CniError {
        #[serde(default)]
        code: u64,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    if let Ok(e) = serde_json::from_slice::<CniError>(stdout)
        && (e.code != 0 || !e.msg.is_empty())
    {
        return (e.code, e.msg, e.details);
    }
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    let stdout = String::from_utf8_lossy(stdout);
    let stdout = stdout.trim();
    let msg = if !stderr.is_empty() {
        format!("{status}: {}", tail(stderr, 2048))
    } else if !stdout.is_empty() {
        format!("{status}: {}", tail(stdout, 2048))
    } else {
        format!("{status} and printed no error")
    };
    (0, msg, String::new())
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

async fn spawn(
    cmd: &mut tokio::process::Command,
    path: &Path,
) -> Result<tokio::process::Child, Error> {
    // ETXTBSY: the binary is being written (a plugin upgrade), or — with scripts — another
    // thread forked while holding it open for writing; libcni retries too.
    let mut delay = Duration::from_millis(10);
    loop {
        match cmd.spawn() {
            Ok(c) => return Ok(c),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && delay < Duration::from_secs(2) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(source) => {
                return Err(Error::Spawn {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Reads to EOF keeping at most `cap` bytes: the plugin must never block on a full pipe.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn plugin_errors() {
        let st = std::process::ExitStatus::from_raw(1 << 8);
        let (c, m, d) = plugin_error(
            br#"{"cniVersion":"1.0.0","code":7,"msg":"Invalid Configuration","details":"too small"}"#,
            b"",
            st,
        );
        assert_eq!(
            (c, m.as_str(), d.as_str()),
            (7, "Invalid Configuration", "too small")
        );
        let (c, m, _) = plugin_error(b"", b"panic: boom\n", st);
        assert_eq!(c, 0);
        assert!(
            m.contains("panic: boom") && m.contains("exit status: 1"),
            "{m}"
        );
        let (_, m, _) = plugin_error(b"", b"", st);
        assert!(m.contains("printed no error"), "{m}");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
    }

    #[test]
    fn find_names_the_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("p"), "").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let dirs = vec![PathBuf::from("/nonexistent"), d.path().to_path_buf()];
        assert_eq!(find_plugin("p", &dirs).unwrap(), d.path().join("p"));
        for bad in ["q", "dir", "", "../p"] {
            let e = find_plugin(bad, &dirs).unwrap_err();
            let s = e.to_string();
            assert!(s.contains("/nonexistent") && s.contains(&d.path().display().to_string()));
            assert_eq!(e.code(), protocol::Code::FailedPrecondition);
        }
    }
}
