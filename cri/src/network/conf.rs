//! Network configuration: finding the pod network in `conf_dir` and parsing it, as go-cni's
//! `loadFromConfDir` does for containerd 1.6 (files sorted lexically, the first one decides; a
//! `.conflist` is a list, a `.conf`/`.json` single plugin is wrapped into a one-plugin list).
//! Plugin objects are kept as raw JSON: the spec says unknown keys pass through unaltered.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::Error;

const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// One network: a list of plugins run in order on ADD, in reverse on DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub name: String,
    pub cni_version: String,
    /// The spec's `disableCheck`: CHECK must not be run.
    pub disable_check: bool,
    pub plugins: Vec<PluginConfig>,
    /// The file it was read from (empty for the built-in loopback network).
    pub path: PathBuf,
}

/// One plugin object of a list, as written (including `capabilities`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `type`: the binary's name.
    pub plugin_type: String,
    pub conf: Map<String, Value>,
}

/// What identifies the version of the pod network's file: if none of it changed, neither did
/// the parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    path: PathBuf,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl NetworkConfig {
    /// Parses a `.conflist`.
    pub fn from_list(path: &Path, bytes: &[u8]) -> Result<NetworkConfig, Error> {
        let obj = parse_object(path, bytes)?;
        Self::from_list_object(path, obj)
    }

    /// Parses a single-plugin `.conf` and wraps it into a list of one (libcni's
    /// `ConfListFromConf`). A file with a `plugins` array is read as a list whatever its
    /// extension: a conflist saved as `.json` is a common mistake with an obvious meaning.
    pub fn from_conf(path: &Path, bytes: &[u8]) -> Result<NetworkConfig, Error> {
        let obj = parse_object(path, bytes)?;
        if obj.contains_key("plugins") {
            return Self::from_list_object(path, obj);
        }
        let name = string_field(path, &obj, "name")?;
        let mut list = Map::new();
        list.insert("name".into(), name.into());
        if let Some(v) = obj.get("cniVersion") {
            list.insert("cniVersion".into(), v.clone());
        }
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        Self::from_list_object(path, list)
    }

    fn from_list_object(path: &Path, obj: Map<String, Value>) -> Result<NetworkConfig, Error> {
        let name = string_field(path, &obj, "name")?;
        if !valid_name(&name) {
            return Err(Error::invalid_config(
                path,
                format!(
                    "invalid network name {name:?} (letters, digits, '_', '.', '-'; starting with a letter or digit)"
                ),
            ));
        }
        // libcni treats a missing version as the oldest, 0.1.0.
        let cni_version = match obj.get("cniVersion") {
            None => "0.1.0".to_string(),
            Some(_) => string_field(path, &obj, "cniVersion")?,
        };
        match parse_version(&cni_version) {
            Some((0 | 1, _, _)) => {}
            _ => {
                return Err(Error::invalid_config(
                    path,
                    format!("unsupported cniVersion {cni_version:?} (0.1.0 to 1.x)"),
                ));
            }
        }
        let disable_check = match obj.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // libcni accepts the string form too.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(v) => {
                return Err(Error::invalid_config(
                    path,
                    format!("disableCheck: want true or false, got {v}"),
                ));
            }
        };
        let Some(Value::Array(raw)) = obj.get("plugins") else {
            return Err(Error::invalid_config(path, "no \"plugins\" list"));
        };
        if raw.is_empty() {
            return Err(Error::invalid_config(path, "\"plugins\" is empty"));
        }
        let mut plugins = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let Value::Object(conf) = p else {
                return Err(Error::invalid_config(
                    path,
                    format!("plugins[{i}] is not an object"),
                ));
            };
            let plugin_type = match conf.get("type") {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                _ => {
                    return Err(Error::invalid_config(
                        path,
                        format!("plugins[{i}] has no \"type\""),
                    ));
                }
            };
            if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
                return Err(Error::invalid_config(
                    path,
                    format!("plugins[{i}]: invalid plugin type {plugin_type:?}"),
                ));
            }
            plugins.push(PluginConfig {
                plugin_type,
                conf: conf.clone(),
            });
        }
        Ok(NetworkConfig {
            name,
            cni_version,
            disable_check,
            plugins,
            path: path.to_path_buf(),
        })
    }

    /// The network containerd adds before the pod network to bring `lo` up in the pod.
    pub fn loopback() -> NetworkConfig {
        let mut conf = Map::new();
        conf.insert("type".into(), "loopback".into());
        NetworkConfig {
            name: "cni-loopback".into(),
            cni_version: "0.3.1".into(),
            disable_check: false,
            plugins: vec![PluginConfig {
                plugin_type: "loopback".into(),
                conf,
            }],
            path: PathBuf::new(),
        }
    }

    /// CHECK exists from spec 0.4.0 on, and `disableCheck` turns it off.
    pub fn supports_check(&self) -> bool {
        !self.disable_check && self.at_least(0, 4)
    }

    /// Whether DEL gets the ADD result as `prevResult` (spec 0.4.0 on, as libcni does).
    pub(crate) fn del_takes_prev_result(&self) -> bool {
        self.at_least(0, 4)
    }

    /// Results before 0.3.0 have `ip4`/`ip6` instead of `interfaces` and `ips`.
    pub(crate) fn at_least(&self, major: u32, minor: u32) -> bool {
        parse_version(&self.cni_version).is_some_and(|(a, b, _)| (a, b) >= (major, minor))
    }

    /// The list as one JSON document (what libcni's cache keeps as `config`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut list = Map::new();
        list.insert("cniVersion".into(), self.cni_version.clone().into());
        list.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            list.insert("disableCheck".into(), true.into());
        }
        list.insert(
            "plugins".into(),
            Value::Array(
                self.plugins
                    .iter()
                    .map(|p| Value::Object(p.conf.clone()))
                    .collect(),
            ),
        );
        serde_json::to_vec(&Value::Object(list)).expect("a JSON map serialises")
    }
}

/// The file that is the pod network and its stamp: the first config file in lexical order.
pub(crate) fn find(dir: &Path) -> Result<(PathBuf, Stamp), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NoConfig {
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(Error::ReadConfigDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadConfigDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        if wanted {
            names.push(path);
        }
    }
    // Go's sort.Strings on the paths: byte order.
    names.sort();
    for path in names {
        // libcni's ConfFiles keeps regular files (following symlinks); a dangling link or a
        // directory named like a config is passed over.
        let Ok(md) = fs::metadata(&path) else {
            continue;
        };
        if !md.is_file() {
            continue;
        }
        let stamp = Stamp {
            path: path.clone(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
        };
        return Ok((path, stamp));
    }
    Err(Error::NoConfig {
        dir: dir.to_path_buf(),
    })
}

/// Reads and parses the pod network's file.
pub(crate) fn load(path: &Path) -> Result<NetworkConfig, Error> {
    let bytes = fs::read(path).map_err(|e| Error::invalid_config(path, format!("read: {e}")))?;
    if path.extension().is_some_and(|e| e == "conflist") {
        NetworkConfig::from_list(path, &bytes)
    } else {
        NetworkConfig::from_conf(path, &bytes)
    }
}

/// The pod network of `dir`, without caching (`Cni::status` is the cached form).
#[cfg(test)]
fn load_dir(dir: &Path) -> Result<NetworkConfig, Error> {
    let (path, _) = find(dir)?;
    load(&path)
}

/// `a.b.c` (a pre-release or build suffix is ignored).
pub(crate) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c))
}

/// The spec's rule for network names and container ids: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_object(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::invalid_config(path, "not a JSON object")),
        Err(e) => Err(Error::invalid_config(path, format!("invalid JSON: {e}"))),
    }
}

fn string_field(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<String, Error> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(Error::invalid_config(path, format!("no {key:?}"))),
        Some(v) => Err(Error::invalid_config(
            path,
            format!("{key:?} is not a string: {v}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net1","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn first_file_in_lexical_order_is_the_network() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load_dir(dir.path()), Err(Error::NoConfig { .. })));
        assert!(matches!(
            load_dir(&dir.path().join("missing")),
            Err(Error::NoConfig { .. })
        ));
        write(dir.path(), "README", "not a config");
        write(dir.path(), "50-x.conf.bak", "{");
        assert!(matches!(load_dir(dir.path()), Err(Error::NoConfig { .. })));

        write(dir.path(), "20-list.conflist", LIST);
        let n = load_dir(dir.path()).unwrap();
        assert_eq!(n.name, "net1");
        assert_eq!(n.plugins.len(), 2);
        assert_eq!(n.plugins[1].plugin_type, "portmap");
        assert!(n.supports_check());

        // A single-plugin .conf sorting first wins and is wrapped into a list.
        write(
            dir.path(),
            "10-single.conf",
            r#"{"cniVersion":"0.3.1","name":"single","type":"ptp","ipam":{"type":"host-local"}}"#,
        );
        let n = load_dir(dir.path()).unwrap();
        assert_eq!(n.name, "single");
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.plugins[0].plugin_type, "ptp");
        assert_eq!(n.plugins[0].conf["ipam"]["type"], "host-local");
        assert!(!n.supports_check(), "0.3.1 has no CHECK");

        // A directory named like a config does not count.
        fs::create_dir(dir.path().join("00-dir.conf")).unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().name, "single");

        // A conflist saved as .json is read as a list.
        write(dir.path(), "05-list.json", LIST);
        assert_eq!(load_dir(dir.path()).unwrap().plugins.len(), 2);
    }

    #[test]
    fn a_broken_first_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-good.conflist", LIST);
        for (text, want) in [
            ("{", "invalid JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "no \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"x"}]}"#,
                "invalid network name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "no \"plugins\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "plugins[0] has no \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "invalid plugin type",
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                "unsupported cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"x"}]}"#,
                "disableCheck",
            ),
        ] {
            let bad = write(dir.path(), "10-bad.conflist", text);
            let e = load_dir(dir.path()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&bad.display().to_string()), "{text}: {msg}");
            assert!(msg.contains(want), "{text}: {msg}");
            assert_eq!(e.code(), protocol::Code::FailedPrecondition);
        }
        // A .conf without a type (a list body in a .conf would have "plugins").
        fs::remove_file(dir.path().join("10-bad.conflist")).unwrap();
        write(
            dir.path(),
            "10-bad.conf",
            r#"{"cniVersion":"0.4.0","name":"n"}"#,
        );
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("10-bad.conf") && e.contains("type"), "{e}");
    }

    #[test]
    fn versions_and_list_json() {
        assert_eq!(parse_version("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse_version("0.3.1-rc1"), Some((0, 3, 1)));
        assert_eq!(parse_version("0.4"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.conflist",
            r#"{"cniVersion":"0.4.0","name":"n","disableCheck":true,"plugins":[{"type":"a","k":[1]}]}"#,
        );
        let n = load(&p).unwrap();
        assert!(!n.supports_check());
        assert!(n.del_takes_prev_result());
        let back = NetworkConfig::from_list(&p, &n.to_json()).unwrap();
        assert_eq!(back, n);
        // No version: libcni's 0.1.0.
        let n = NetworkConfig::from_list(&p, br#"{"name":"n","plugins":[{"type":"a"}]}"#).unwrap();
        assert_eq!(n.cni_version, "0.1.0");
        assert!(!n.at_least(0, 3));
    }

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name("0abc_d.e-f"));
        assert!(!valid_name(""));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }
}
