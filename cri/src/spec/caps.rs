//! A container's capabilities from its security context (containerd's
//! `customopts.WithCapabilities` and `oci.WithPrivileged`).
//!
//! Rules, in order: start from the default set; `ALL` in add gives every capability the node
//! has; `ALL` in drop removes every one; then each added capability joins bounding, effective
//! and permitted; each ambient one joins those and inheritable and ambient; each dropped one
//! leaves all five. So `drop: [ALL], add: [NET_BIND_SERVICE]` is just that one. Names are
//! case-insensitive and the `CAP_` prefix is optional (CRI sends them without). Privileged:
//! every capability the node has, whatever add/drop say (ambient ones are still honoured).

use protocol::grpc::runtime::v1::Capability;
use serde_json::{Value, json};

use super::defaults::{ALL_CAPS, DEFAULT_CAPS};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

impl Caps {
    pub fn default_set() -> Caps {
        let d: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
        Caps {
            bounding: d.clone(),
            effective: d.clone(),
            permitted: d,
            ..Default::default()
        }
    }

    fn set_main(&mut self, caps: &[String]) {
        self.bounding = caps.to_vec();
        self.effective = caps.to_vec();
        self.permitted = caps.to_vec();
    }

    fn add(sets: &mut [&mut Vec<String>], cap: &str) {
        for s in sets {
            if !s.iter().any(|c| c == cap) {
                s.push(cap.to_string());
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "bounding": self.bounding,
            "effective": self.effective,
            "permitted": self.permitted,
        });
        if !self.inheritable.is_empty() {
            v["inheritable"] = json!(self.inheritable);
        }
        if !self.ambient.is_empty() {
            v["ambient"] = json!(self.ambient);
        }
        v
    }
}

/// `CAP_NET_ADMIN` from `net_admin`, `NET_ADMIN` or `cap_net_admin`; unknown names are
/// InvalidArgument (runc would otherwise drop them with a warning nobody reads).
pub fn normalize(name: &str) -> Result<String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(Error::invalid(format!("unknown capability {name:?}")))
    }
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The capabilities of a container; `node_caps` is what the node can grant (`ALL`).
pub fn container(c: Option<&Capability>, privileged: bool, node_caps: &[String]) -> Result<Caps> {
    let empty = Capability::default();
    let c = c.unwrap_or(&empty);
    let mut caps = Caps::default_set();
    if c.add_capabilities.iter().any(|n| is_all(n)) {
        caps.set_main(node_caps);
    }
    if c.drop_capabilities.iter().any(|n| is_all(n)) {
        caps.set_main(&[]);
    }
    for n in c.add_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = normalize(n)?;
        Caps::add(
            &mut [&mut caps.bounding, &mut caps.effective, &mut caps.permitted],
            &cap,
        );
    }
    for n in &c.add_ambient_capabilities {
        let cap = normalize(n)?;
        Caps::add(
            &mut [
                &mut caps.bounding,
                &mut caps.effective,
                &mut caps.permitted,
                &mut caps.inheritable,
                &mut caps.ambient,
            ],
            &cap,
        );
    }
    for n in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = normalize(n)?;
        for s in [
            &mut caps.bounding,
            &mut caps.effective,
            &mut caps.permitted,
            &mut caps.inheritable,
            &mut caps.ambient,
        ] {
            s.retain(|x| *x != cap);
        }
    }
    if privileged {
        caps.set_main(node_caps);
        for a in caps.ambient.clone() {
            Caps::add(
                &mut [&mut caps.bounding, &mut caps.effective, &mut caps.permitted],
                &a,
            );
        }
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<String> {
        ALL_CAPS.iter().map(|c| c.to_string()).collect()
    }

    fn cap(add: &[&str], drop: &[&str], ambient: &[&str]) -> Capability {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Capability {
            add_capabilities: v(add),
            drop_capabilities: v(drop),
            add_ambient_capabilities: v(ambient),
        }
    }

    #[test]
    fn no_security_context_means_the_default_set() {
        let c = container(None, false, &all()).unwrap();
        assert_eq!(c, Caps::default_set());
        assert_eq!(c.bounding.len(), 14);
        assert!(c.to_json().get("ambient").is_none());
    }

    #[test]
    fn added_caps_join_three_sets_with_or_without_prefix() {
        let c = container(
            Some(&cap(&["net_admin", "CAP_SYS_TIME"], &[], &[])),
            false,
            &all(),
        )
        .unwrap();
        for s in [&c.bounding, &c.effective, &c.permitted] {
            assert!(s.contains(&"CAP_NET_ADMIN".to_string()));
            assert!(s.contains(&"CAP_SYS_TIME".to_string()));
        }
        assert!(c.inheritable.is_empty() && c.ambient.is_empty());
    }

    #[test]
    fn adding_a_default_cap_does_not_duplicate_it() {
        let c = container(Some(&cap(&["CHOWN"], &[], &[])), false, &all()).unwrap();
        assert_eq!(c.bounding.len(), 14);
    }

    #[test]
    fn dropped_caps_leave_every_set() {
        let c = container(Some(&cap(&[], &["NET_RAW"], &[])), false, &all()).unwrap();
        assert!(!c.bounding.contains(&"CAP_NET_RAW".to_string()));
        assert!(!c.effective.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(c.permitted.len(), 13);
    }

    #[test]
    fn add_all_gives_the_nodes_caps() {
        let node: Vec<String> = vec!["CAP_CHOWN".into(), "CAP_SYS_ADMIN".into()];
        let c = container(Some(&cap(&["ALL"], &[], &[])), false, &node).unwrap();
        assert_eq!(c.bounding, node);
        let c = container(Some(&cap(&["all"], &["SYS_ADMIN"], &[])), false, &all()).unwrap();
        assert_eq!(c.bounding.len(), 40);
        assert!(!c.bounding.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn drop_all_then_add_keeps_only_the_added() {
        let c = container(
            Some(&cap(&["NET_BIND_SERVICE"], &["ALL"], &[])),
            false,
            &all(),
        )
        .unwrap();
        assert_eq!(c.bounding, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(c.effective, ["CAP_NET_BIND_SERVICE"]);
        let c = container(Some(&cap(&[], &["ALL"], &[])), false, &all()).unwrap();
        assert!(c.bounding.is_empty() && c.permitted.is_empty());
    }

    #[test]
    fn ambient_caps_join_all_five_sets() {
        let c = container(
            Some(&cap(&[], &["ALL"], &["net_bind_service"])),
            false,
            &all(),
        )
        .unwrap();
        for s in [
            &c.bounding,
            &c.effective,
            &c.permitted,
            &c.inheritable,
            &c.ambient,
        ] {
            assert_eq!(s, &["CAP_NET_BIND_SERVICE"]);
        }
        let j = c.to_json();
        assert_eq!(j["ambient"], json!(["CAP_NET_BIND_SERVICE"]));
        assert_eq!(j["inheritable"], json!(["CAP_NET_BIND_SERVICE"]));
    }

    #[test]
    fn a_dropped_cap_beats_an_ambient_one() {
        let c = container(Some(&cap(&[], &["KILL"], &["KILL"])), false, &all()).unwrap();
        assert!(c.ambient.is_empty());
        assert!(!c.bounding.contains(&"CAP_KILL".to_string()));
    }

    #[test]
    fn unknown_names_are_invalid_and_named() {
        let e = container(Some(&cap(&["FLY"], &[], &[])), false, &all()).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("\"FLY\""), "{e}");
        assert!(container(Some(&cap(&[], &["CAP_NOPE"], &[])), false, &all()).is_err());
        assert!(container(Some(&cap(&[], &[], &["x"])), false, &all()).is_err());
    }

    #[test]
    fn privileged_gets_every_node_cap_whatever_was_dropped() {
        let c = container(Some(&cap(&[], &["ALL"], &[])), true, &all()).unwrap();
        assert_eq!(c.bounding.len(), 41);
        assert_eq!(c.effective, all());
        assert!(c.ambient.is_empty());
    }

    #[test]
    fn normalize_forms() {
        assert_eq!(normalize("sys_admin").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(normalize("Cap_Sys_Admin").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(normalize(" BPF ").unwrap(), "CAP_BPF");
    }
}
