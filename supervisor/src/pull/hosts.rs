//! Registry hosts configuration: where a pull from one registry really goes, in containerd 1.6's
//! `hosts.toml` layout.
//!
//! ```text
//! <config_path>/
//!   registry.k8s.io/hosts.toml      mirrors and TLS for registry.k8s.io
//!   127.0.0.1_5000_/ or 127.0.0.1:5000/
//!   docker.io/ca.crt client.cert client.key   (docker's certs.d layout: no hosts.toml)
//!   _default/hosts.toml             for every registry without a directory of its own
//! ```
//!
//! A `hosts.toml`:
//!
//! ```toml
//! server = "https://registry.k8s.io"      # tried last; absent: the registry itself
//!
//! [host."http://127.0.0.1:5000"]          # mirrors, tried first, in file order
//!   capabilities = ["pull", "resolve"]    # resolve: may answer tag → digest
//!   ca = "ca.pem"                         # or a list; relative to the directory
//!   client = [["client.cert", "client.key"]]
//!   skip_verify = false
//!   header = { X-Mirror = "corral" }      # a string or a list of strings per name
//!   override_path = false                 # true: the URL's path is the API root, no /v2
//! ```
//!
//! The result for a registry is its ordered list of [`HostConfig`]s: the `[host]` tables in file
//! order, then the `server` entry (top-level keys other than `server` and `host` configure it).
//! When that last entry names no server, it is the registry itself: `docker.io` →
//! `https://registry-1.docker.io`, any other → HTTPS, or plain HTTP when the pull asked for it
//! (the request's `plain_http`, or `[registry] insecure`). A host directory without
//! `hosts.toml` is read as docker's `certs.d`: `*.crt` are CAs, `*.cert` client certificates,
//! each with the `*.key` of the same name when there is one.
//!
//! The directory is read at each pull, so an edit applies to the next pull without a restart,
//! and a broken file fails only the pulls from its registry (InvalidArgument naming the file and
//! the problem; containerd logs it and falls back to the directory's certificate files, which
//! hides the mistake). Unknown keys are logged and ignored, as containerd ignores them: a file
//! written for a newer containerd must not break pulls. A file with a `server` and no `[host]`
//! table is valid here, as in containerd 1.7 (1.6.20 rejects it for want of `[host]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::Code;

use super::Error;

/// What a host may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve a tag to a digest (a host trusted to say what a name is).
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One host a registry's requests may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// The API root: `/v2`, or the URL's own path with `override_path`.
    pub path: String,
    pub capabilities: Capabilities,
    /// CA certificate files (PEM), trusted besides the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files; no key file: the certificate file holds the key too.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// `Some(true)`: do not verify the server's certificate.
    pub skip_verify: Option<bool>,
    /// Extra request headers, by name (a name may repeat, its values in file order).
    pub headers: Vec<(String, String)>,
    /// The file (or certs.d directory) this entry comes from, for messages; `None` for the
    /// registry itself when nothing configures it.
    pub source: Option<PathBuf>,
}

impl HostConfig {
    /// `scheme://host/path`, for messages.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }

    /// A host entry with nothing set (containerd's zero `hostConfig`).
    fn empty() -> HostConfig {
        HostConfig {
            scheme: String::new(),
            host: String::new(),
            path: String::new(),
            capabilities: Capabilities::ALL,
            ca: Vec::new(),
            client: Vec::new(),
            skip_verify: None,
            headers: Vec::new(),
            source: None,
        }
    }
}

/// The directory name of a registry (`host:port` → `host_port_`, which works on any
/// filesystem; `host:port` itself is accepted too).
fn port_dir_name(registry: &str) -> Option<String> {
    let (host, port) = registry.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{host}_{port}_"))
}

/// The host directory that configures `registry` under `root`, if any.
pub fn host_dir(root: &Path, registry: &str) -> Result<Option<PathBuf>, Error> {
    let mut candidates = Vec::new();
    if let Some(d) = port_dir_name(registry) {
        candidates.push(root.join(d));
    }
    candidates.push(root.join(registry));
    candidates.push(root.join("_default"));
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(_) => return Ok(Some(c)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::HostsConfig {
                    code: Code::FailedPrecondition,
                    path: c.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(None)
}

/// The hosts to pull from `registry` (as the reference names it), in the order to try them.
/// `plain_http`: the registry itself, when it is the last host, is spoken to over plain HTTP.
pub fn hosts_for(root: &Path, registry: &str, plain_http: bool) -> Result<Vec<HostConfig>, Error> {
    let mut hosts = match host_dir(root, registry)? {
        Some(dir) => load_host_dir(&dir)?,
        None => vec![HostConfig::empty()],
    };
    if let Some(last) = hosts.last_mut()
        && last.host.is_empty()
    {
        if registry == "docker.io" {
            last.scheme = "https".into();
            last.host = "registry-1.docker.io".into();
        } else {
            last.scheme = if plain_http { "http" } else { "https" }.into();
            last.host = registry.to_string();
        }
        last.path = "/v2".into();
        last.capabilities = Capabilities::ALL;
    }
    Ok(hosts)
}

/// A host directory: its `hosts.toml`, or docker's certificate files when there is none.
fn load_host_dir(dir: &Path) -> Result<Vec<HostConfig>, Error> {
    let file = dir.join("hosts.toml");
    let io_error = |path: &Path, e: std::io::Error| Error::HostsConfig {
        code: Code::FailedPrecondition,
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_error(&file, e)),
    };
    if text.is_empty() {
        return load_cert_files(dir).map_err(|e| io_error(dir, e));
    }
    let text = String::from_utf8(text).map_err(|_| bad_file(&file, "not UTF-8 text".into()))?;
    parse_hosts_file(dir, &file, &text)
}

fn bad_file(file: &Path, reason: String) -> Error {
    Error::HostsConfig {
        code: Code::InvalidArgument,
        path: file.display().to_string(),
        reason,
    }
}

/// docker's `certs.d` layout: one host entry (the registry itself) with the directory's CAs
/// and client pairs.
fn load_cert_files(dir: &Path) -> std::io::Result<Vec<HostConfig>> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    let mut host = HostConfig::empty();
    host.source = Some(dir.to_path_buf());
    for name in &names {
        if name.ends_with(".crt") {
            host.ca.push(dir.join(name));
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = match std::fs::metadata(&key) {
                Ok(_) => Some(key),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            host.client.push((dir.join(name), key));
        }
    }
    Ok(vec![host])
}

/// `line L, column C` of byte offset `at` in `text`.
fn position(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// Parses `text`, the `hosts.toml` `file` of host directory `dir`.
pub fn parse_hosts_file(dir: &Path, file: &Path, text: &str) -> Result<Vec<HostConfig>, Error> {
    let bad = |reason: String| bad_file(file, reason);
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| format!("{}: ", position(text, s.start)));
        bad(format!(
            "{}{}",
            at.unwrap_or_default(),
            e.message().trim().replace('\n', " ")
        ))
    })?;

    // The `[host."…"]` tables in file order: toml tables do not keep it, their spans do.
    #[derive(serde::Deserialize)]
    struct Order {
        #[serde(default)]
        host: Option<BTreeMap<String, toml::Spanned<toml::Value>>>,
    }
    let order: Order = toml::from_str(text).map_err(|e| bad(format!("[host]: {}", e.message())))?;
    let mut names: Vec<(usize, String)> = order
        .host
        .unwrap_or_default()
        .into_iter()
        .map(|(name, v)| (v.span().start, name))
        .collect();
    names.sort();

    let mut hosts = Vec::new();
    let host_tables = match table.get("host") {
        None => None,
        Some(toml::Value::Table(t)) => Some(t),
        Some(other) => {
            return Err(bad(format!(
                "\"host\" must be a table of [host.\"<url>\"] tables, not a {}",
                other.type_str()
            )));
        }
    };
    for (_, name) in &names {
        let what = format!("[host.{name:?}]");
        let t = match host_tables.and_then(|t| t.get(name)) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(bad(format!("{what} must be a table"))),
        };
        if name.is_empty() {
            return Err(bad(format!("{what}: a host needs a URL")));
        }
        hosts.push(parse_host(dir, file, &what, Some(name), t, &[])?);
    }
    let server = match table.get("server") {
        None => None,
        Some(toml::Value::String(s)) if s.is_empty() => None,
        Some(toml::Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(bad(format!(
                "\"server\" must be a string (a URL), not a {}",
                other.type_str()
            )));
        }
    };
    hosts.push(parse_host(
        dir,
        file,
        "the top level",
        server,
        &table,
        &["server", "host"],
    )?);
    Ok(hosts)
}

/// One host: the URL `server` (none: to be filled in with the registry) and the settings in
/// table `t` (keys in `skip` belong to someone else).
fn parse_host(
    dir: &Path,
    file: &Path,
    what: &str,
    server: Option<&str>,
    t: &toml::Table,
    skip: &[&str],
) -> Result<HostConfig, Error> {
    let bad = |reason: String| bad_file(file, format!("{what}: {reason}"));
    let mut h = HostConfig::empty();
    h.source = Some(file.to_path_buf());
    let override_path = match t.get("override_path") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(v) => return Err(bad(format!("override_path must be true or false, not {v}"))),
    };
    if let Some(server) = server {
        let with_scheme = if server.contains("://") {
            server.to_string()
        } else {
            format!("https://{server}")
        };
        let url =
            reqwest::Url::parse(&with_scheme).map_err(|e| bad(format!("URL {server:?}: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(bad(format!(
                "URL {server:?}: the scheme must be http or https"
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad(format!("URL {server:?} names no host")))?;
        h.scheme = url.scheme().to_string();
        h.host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path = clean_path(url.path());
        h.path = if path == "/" {
            if override_path {
                "/".into()
            } else {
                "/v2".into()
            }
        } else if path.ends_with("/v2") || override_path {
            path
        } else {
            format!("{path}/v2")
        };
    }

    for (key, value) in t {
        if skip.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "override_path" => {}
            "capabilities" => {
                let list = strings(value).ok_or_else(|| {
                    bad(format!(
                        "capabilities must be a list of strings, not {value}"
                    ))
                })?;
                let mut caps = Capabilities {
                    pull: false,
                    resolve: false,
                    push: false,
                };
                for c in list {
                    match c.to_ascii_lowercase().as_str() {
                        "pull" => caps.pull = true,
                        "resolve" => caps.resolve = true,
                        "push" => caps.push = true,
                        _ => {
                            return Err(bad(format!(
                                "unknown capability {c:?} (known: pull, resolve, push)"
                            )));
                        }
                    }
                }
                if !list_is_empty(value) {
                    h.capabilities = caps;
                }
            }
            "ca" => {
                let list = match value {
                    toml::Value::String(s) => vec![s.clone()],
                    v => strings(v).ok_or_else(|| {
                        bad(format!(
                            "ca must be a file name or a list of file names, not {v}"
                        ))
                    })?,
                };
                h.ca = list.iter().map(|p| dir.join(p)).collect();
            }
            "client" => {
                h.client = client_pairs(dir, value).ok_or_else(|| {
                    bad(format!(
                        "client must be a file name, a list of file names or a list of \
                         [certificate, key] pairs, not {value}"
                    ))
                })?;
            }
            "skip_verify" => match value {
                toml::Value::Boolean(b) => h.skip_verify = Some(*b),
                v => return Err(bad(format!("skip_verify must be true or false, not {v}"))),
            },
            "header" => {
                let toml::Value::Table(headers) = value else {
                    return Err(bad(format!(
                        "header must be a table of names to strings, not {value}"
                    )));
                };
                for (name, v) in headers {
                    reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| bad(format!("header {name:?} is not a valid header name")))?;
                    let values = match v {
                        toml::Value::String(s) => vec![s.clone()],
                        v => strings(v).ok_or_else(|| {
                            bad(format!(
                                "header {name:?} must be a string or a list of strings, not {v}"
                            ))
                        })?,
                    };
                    for value in values {
                        reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                            bad(format!("header {name:?}: {value:?} is not a valid value"))
                        })?;
                        h.headers.push((name.clone(), value));
                    }
                }
            }
            other => log::warn!("{}: {what}: ignoring unknown key {other:?}", file.display()),
        }
    }
    Ok(h)
}

fn list_is_empty(v: &toml::Value) -> bool {
    matches!(v, toml::Value::Array(a) if a.is_empty())
}

/// A list of strings, or `None`.
fn strings(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::Array(a) => a
            .iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
}

/// `client`: `"both.pem"`, `["a.pem", "b.pem"]`, `[["a.cert", "a.key"], …]` (mixed allowed).
fn client_pairs(dir: &Path, v: &toml::Value) -> Option<Vec<(PathBuf, Option<PathBuf>)>> {
    match v {
        toml::Value::String(s) => Some(vec![(dir.join(s), None)]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Some((dir.join(s), None)),
                toml::Value::Array(_) => match strings(item)?.as_slice() {
                    [cert, key] => Some((dir.join(cert), Some(dir.join(key)))),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Go's `path.Clean` for the absolute paths of URLs.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<HostConfig>, Error> {
        parse_hosts_file(Path::new("/h/r.io"), Path::new("/h/r.io/hosts.toml"), text)
    }

    fn urls(hosts: &[HostConfig]) -> Vec<String> {
        hosts.iter().map(HostConfig::url).collect()
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let hosts = parse(
            r#"
server = "https://registry.k8s.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://b.example/base"]
  capabilities = ["pull"]
  ca = "b.pem"
  header = { X-One = "1", X-Many = ["a", "b"] }

[host."a.example:8443"]
  skip_verify = true
  client = [["c.cert", "c.key"], "both.pem"]
"#,
        )
        .unwrap();
        assert_eq!(
            urls(&hosts),
            [
                "http://127.0.0.1:5000/v2",
                "https://b.example/base/v2",
                "https://a.example:8443/v2",
                "https://registry.k8s.io/v2"
            ]
        );
        assert_eq!(
            hosts[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        assert!(!hosts[1].capabilities.resolve && hosts[1].capabilities.pull);
        assert_eq!(hosts[1].ca, [PathBuf::from("/h/r.io/b.pem")]);
        let mut headers = hosts[1].headers.clone();
        headers.sort();
        assert_eq!(
            headers,
            [
                ("X-Many".to_string(), "a".to_string()),
                ("X-Many".into(), "b".into()),
                ("X-One".into(), "1".into())
            ]
        );
        assert_eq!(hosts[2].skip_verify, Some(true));
        assert_eq!(
            hosts[2].client,
            [
                (
                    PathBuf::from("/h/r.io/c.cert"),
                    Some(PathBuf::from("/h/r.io/c.key"))
                ),
                (PathBuf::from("/h/r.io/both.pem"), None)
            ]
        );
        assert_eq!(hosts[3].capabilities, Capabilities::ALL);
    }

    #[test]
    fn override_path_and_absolute_files() {
        let hosts = parse(
            r#"
[host."https://m.example/registry/v2/proxy"]
  override_path = true
  ca = ["/etc/ca.pem", "rel.pem"]
[host."https://n.example/x/v2/"]
[host."https://o.example/"]
  override_path = true
"#,
        )
        .unwrap();
        assert_eq!(
            urls(&hosts[..3]),
            [
                "https://m.example/registry/v2/proxy",
                "https://n.example/x/v2",
                "https://o.example/"
            ]
        );
        assert_eq!(
            hosts[0].ca,
            [
                PathBuf::from("/etc/ca.pem"),
                PathBuf::from("/h/r.io/rel.pem")
            ]
        );
        // No server: an empty last entry, filled in with the registry by hosts_for.
        assert_eq!(hosts[3].host, "");
    }

    #[test]
    fn a_server_alone_is_enough() {
        let hosts = parse("server = \"http://127.0.0.1:5000\"\n").unwrap();
        assert_eq!(urls(&hosts), ["http://127.0.0.1:5000/v2"]);
    }

    #[test]
    fn malformed_files_name_the_file_and_the_problem() {
        for (text, want) in [
            ("server = ", "line 1"),
            (
                "[host.\"http://a\"]\ncapabilities = [\"pull\", \"fly\"]\n",
                "fly",
            ),
            (
                "[host.\"http://a\"]\ncapabilities = \"pull\"\n",
                "capabilities",
            ),
            ("[host.\"http://a\"]\nca = 3\n", "ca must be"),
            (
                "[host.\"http://a\"]\nclient = [[\"a\"]]\n",
                "client must be",
            ),
            (
                "[host.\"http://a\"]\nskip_verify = \"yes\"\n",
                "skip_verify",
            ),
            (
                "[host.\"http://a\"]\nheader = { \"Bad Name\" = \"x\" }\n",
                "Bad Name",
            ),
            ("[host.\"http://a\"]\nheader = { X = 1 }\n", "header \"X\""),
            ("[host.\"ftp://a\"]\n", "http or https"),
            ("[host.\"http://\"]\n", "http://"),
            ("server = 5\n", "server"),
            ("host = 5\n", "host"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{text}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("/h/r.io/hosts.toml") && msg.contains(want),
                "{text}: {msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn directories_and_defaults() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // Nothing configured: the registry itself, HTTPS unless asked for plain HTTP.
        assert_eq!(
            urls(&hosts_for(r, "r.example", false).unwrap()),
            ["https://r.example/v2"]
        );
        assert_eq!(
            urls(&hosts_for(r, "127.0.0.1:5000", true).unwrap()),
            ["http://127.0.0.1:5000/v2"]
        );
        assert_eq!(
            urls(&hosts_for(r, "docker.io", true).unwrap()),
            ["https://registry-1.docker.io/v2"]
        );
        // A missing root is no configuration.
        assert_eq!(
            urls(&hosts_for(&r.join("none"), "r.example", false).unwrap()),
            ["https://r.example/v2"]
        );

        // A mirror for one registry.
        std::fs::create_dir_all(r.join("registry.k8s.io")).unwrap();
        std::fs::write(
            r.join("registry.k8s.io/hosts.toml"),
            "server = \"https://registry.k8s.io\"\n[host.\"http://127.0.0.1:5000\"]\n\
             capabilities = [\"pull\", \"resolve\"]\n",
        )
        .unwrap();
        assert_eq!(
            urls(&hosts_for(r, "registry.k8s.io", false).unwrap()),
            ["http://127.0.0.1:5000/v2", "https://registry.k8s.io/v2"]
        );

        // host_port_ wins over host:port; both beat _default.
        std::fs::create_dir_all(r.join("_default")).unwrap();
        std::fs::write(
            r.join("_default/hosts.toml"),
            "[host.\"http://mirror:1\"]\n",
        )
        .unwrap();
        assert_eq!(
            urls(&hosts_for(r, "other.example", false).unwrap()),
            ["http://mirror:1/v2", "https://other.example/v2"]
        );
        assert_eq!(
            urls(&hosts_for(r, "docker.io", false).unwrap()),
            ["http://mirror:1/v2", "https://registry-1.docker.io/v2"]
        );
        std::fs::create_dir_all(r.join("r.example:5000")).unwrap();
        std::fs::write(
            r.join("r.example:5000/hosts.toml"),
            "server = \"http://colon:1\"\n",
        )
        .unwrap();
        assert_eq!(
            urls(&hosts_for(r, "r.example:5000", false).unwrap()),
            ["http://colon:1/v2"]
        );
        std::fs::create_dir_all(r.join("r.example_5000_")).unwrap();
        std::fs::write(
            r.join("r.example_5000_/hosts.toml"),
            "server = \"http://underscore:1\"\n",
        )
        .unwrap();
        assert_eq!(
            urls(&hosts_for(r, "r.example:5000", false).unwrap()),
            ["http://underscore:1/v2"]
        );

        // docker's certs.d layout: CAs and client pairs for the registry itself.
        let d = r.join("certs.example");
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "ca.crt",
            "b.crt",
            "me.cert",
            "me.key",
            "lone.cert",
            "notes.txt",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let hosts = hosts_for(r, "certs.example", false).unwrap();
        assert_eq!(urls(&hosts), ["https://certs.example/v2"]);
        assert_eq!(hosts[0].ca, [d.join("b.crt"), d.join("ca.crt")]);
        assert_eq!(
            hosts[0].client,
            [
                (d.join("lone.cert"), None),
                (d.join("me.cert"), Some(d.join("me.key")))
            ]
        );

        // A broken file fails its registry only.
        std::fs::write(r.join("registry.k8s.io/hosts.toml"), "[host.\"x\"\n").unwrap();
        let e = hosts_for(r, "registry.k8s.io", false).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().contains("registry.k8s.io/hosts.toml"), "{e}");
        assert!(hosts_for(r, "other.example", false).is_ok());
    }

    #[test]
    fn paths_are_cleaned_like_go() {
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/a//b/./c/../d/"), "/a/b/d");
    }
}
