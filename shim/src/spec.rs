//! The few fields of the bundle's OCI `config.json` that the shim needs.
//!
//! The full runtime spec is large; runc reads it, not us. Deserialising only these fields keeps
//! the shim small and tolerant of spec versions it does not know.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::idmap::{IdMapping, Mappings};

#[derive(Debug, Default, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub linux: Option<SpecLinux>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SpecLinux {
    #[serde(default)]
    pub namespaces: Vec<SpecNamespace>,
    #[serde(default, rename = "uidMappings")]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default, rename = "gidMappings")]
    pub gid_mappings: Vec<IdMapping>,
}

/// The user namespace a container runs in, when not the host's.
#[derive(Debug, PartialEq, Eq)]
pub struct UserNamespace {
    /// The namespace it joins (`/proc/<pid>/ns/user`), or None for a new one.
    pub path: Option<PathBuf>,
    /// Its uid and gid maps (for a joined one, what the spec says they are).
    pub mappings: Mappings,
}

#[derive(Debug, Default, Deserialize)]
pub struct SpecNamespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

/// Annotations that put several containers into one shim (runc-v2's and CRI's).
const GROUP_ANNOTATIONS: &[&str] = &[
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

impl Spec {
    pub fn load(bundle: &Path) -> Result<Spec, String> {
        let path = bundle.join("config.json");
        let data = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        serde_json::from_slice(&data).map_err(|e| format!("parse {}: {e}", path.display()))
    }

    /// The id that decides which shim serves this container: a group annotation, else the id.
    pub fn group_id<'a>(&'a self, id: &'a str) -> &'a str {
        GROUP_ANNOTATIONS
            .iter()
            .find_map(|k| self.annotations.get(*k).filter(|v| !v.is_empty()))
            .map(String::as_str)
            .unwrap_or(id)
    }

    /// The container's user namespace, if the spec gives it one.
    pub fn user_namespace(&self) -> Option<UserNamespace> {
        let linux = self.linux.as_ref()?;
        let ns = linux.namespaces.iter().find(|n| n.kind == "user")?;
        Some(UserNamespace {
            path: ns
                .path
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            mappings: Mappings {
                uids: linux.uid_mappings.clone(),
                gids: linux.gid_mappings.clone(),
            },
        })
    }

    /// True when the container gets its own pid namespace. Then the kernel kills every process
    /// in it when the init exits; otherwise the shim must do it (`runc kill --all`).
    pub fn private_pid_namespace(&self) -> bool {
        self.linux.as_ref().is_some_and(|l| {
            l.namespaces
                .iter()
                .any(|n| n.kind == "pid" && n.path.as_deref().unwrap_or("").is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_and_pid_namespace() {
        let s: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"terminal":true,"args":["sh"]},
                "annotations":{"io.kubernetes.cri.sandbox-id":"sb1"},
                "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}]}}"#,
        )
        .unwrap();
        assert_eq!(s.group_id("c1"), "sb1");
        assert!(s.private_pid_namespace());

        let s: Spec = serde_json::from_str(
            r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/9/ns/pid"}]}}"#,
        )
        .unwrap();
        assert_eq!(s.group_id("c1"), "c1");
        assert!(!s.private_pid_namespace());
        assert_eq!(s.user_namespace(), None);
    }

    #[test]
    fn user_namespace_new_or_joined_with_its_mappings() {
        let s: Spec = serde_json::from_str(
            r#"{"linux":{"namespaces":[{"type":"user"},{"type":"mount"}],
                "uidMappings":[{"containerID":0,"hostID":1000,"size":65536}],
                "gidMappings":[{"containerID":0,"hostID":2000,"size":65536}]}}"#,
        )
        .unwrap();
        let u = s.user_namespace().unwrap();
        assert_eq!(u.path, None);
        assert_eq!(u.mappings.host_root(), Some((1000, 2000)));
        let s: Spec = serde_json::from_str(
            r#"{"linux":{"namespaces":[{"type":"user","path":"/proc/7/ns/user"}]}}"#,
        )
        .unwrap();
        let u = s.user_namespace().unwrap();
        assert_eq!(u.path, Some(PathBuf::from("/proc/7/ns/user")));
        assert!(u.mappings.is_empty());
    }
}
