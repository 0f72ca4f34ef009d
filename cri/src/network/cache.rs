//! libcni's result cache, in its own format (`cniCacheV1`) and place
//! (`<cache>/results/<network>-<container>-<ifname>`), so `cnitool`-era tools and a later libcni
//! user read it too. It backs up the caller's own copy of the ADD result: DEL and CHECK need that
//! result as `prevResult`, and corral-cri can crash between ADD and storing it in corrald. The
//! entry also keeps the network list, so a DEL still works after the config file was removed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(crate) const KIND: &str = "cniCacheV1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network list as JSON, base64-encoded (a Go `[]byte` field in libcni).
    pub config: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl Entry {
    pub fn config_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.config)
            .ok()
    }

    pub fn encode_config(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

pub(crate) fn path(cache_dir: &Path, network: &str, id: &str, ifname: &str) -> PathBuf {
    cache_dir
        .join("results")
        .join(format!("{network}-{id}-{ifname}"))
}

pub(crate) fn write(path: &Path, entry: &Entry) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let data = serde_json::to_vec(entry).map_err(io::Error::other)?;
    atomic_write(path, &data, 0o600)
}

/// The entry at `path`; `None` if there is none.
pub(crate) fn read(path: &Path) -> io::Result<Option<Entry>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let entry: Entry =
        serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if entry.kind != KIND {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("kind {:?}, want {KIND}", entry.kind),
        ));
    }
    Ok(Some(entry))
}

/// The entry of `id` on `ifname` under any network name (for a DEL after the config changed).
pub(crate) fn find(cache_dir: &Path, id: &str, ifname: &str) -> Option<(PathBuf, Entry)> {
    let suffix = format!("-{id}-{ifname}");
    let dir = cache_dir.join("results");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .collect();
    names.sort();
    names.into_iter().find_map(|p| match read(&p) {
        Ok(Some(e)) if e.container_id == id && e.if_name == ifname => Some((p, e)),
        _ => None,
    })
}

pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `data` to `path` atomically and durably: a temp file beside it, fsync, rename, fsync
/// the directory. A crash or a power loss leaves the old content or the new, never a torn file.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replacing(path, data, mode, true)
}

/// [`atomic_write`] without the fsyncs, for files that only have to outlive a process crash:
/// a pod's hostname, hosts and resolv.conf go with its processes at a reboot (kubelet makes the
/// pod again), so the rename alone is enough, and the syncs were six of a pod start's writes.
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replacing(path, data, mode, false)
}

fn write_replacing(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Unique per writer, and dot-prefixed so a config-dir scan (which wants `.conflist`
    // endings) never takes a half-written one for a network.
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_find_remove() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path(), "net1", "pod1", "eth0");
        assert!(read(&p).unwrap().is_none());
        let e = Entry {
            kind: KIND.into(),
            container_id: "pod1".into(),
            config: Entry::encode_config(b"{\"name\":\"net1\"}"),
            if_name: "eth0".into(),
            network_name: "net1".into(),
            netns: "/x".into(),
            cni_args: vec![["IgnoreUnknown".into(), "1".into()]],
            capability_args: Map::new(),
            result: Some(serde_json::json!({"cniVersion":"1.0.0"})),
        };
        write(&p, &e).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"kind\":\"cniCacheV1\"") && text.contains("\"containerId\""));
        let back = read(&p).unwrap().unwrap();
        assert_eq!(back.config_bytes().unwrap(), b"{\"name\":\"net1\"}");
        assert_eq!(back.result, e.result);
        let (fp, _) = find(d.path(), "pod1", "eth0").unwrap();
        assert_eq!(fp, p);
        assert!(find(d.path(), "pod", "eth0").is_none());
        assert!(find(d.path(), "od1", "eth0").is_none());
        // Nothing but the entry is left in the directory.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(read(&p).unwrap().is_none());

        fs::write(&p, "{\"kind\":\"other\"}").unwrap();
        assert!(read(&p).is_err());
    }
}
