//! The few fields of the bundle's OCI `config.json` that the shim needs.
//!
//! The full runtime spec is large; runc reads it, not us. Deserialising only these fields keeps
//! the shim small and tolerant of spec versions it does not know.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

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
    }
}
