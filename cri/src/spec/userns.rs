//! User namespaces (`hostUsers: false`): what a pod's `userns_options` may say, and what the
//! specs get from it. containerd 2's rules (`parseUsernsIDs`, `sameUsernsConfig`):
//!
//! - absent or NODE (without mappings): the host's user namespace, nothing in the spec;
//! - POD: exactly one uid and one gid mapping, each mapping the container's root (id 0) onto
//!   a host range of at least one id that stays inside the 32-bit id space;
//! - CONTAINER and TARGET: refused (Kubernetes gives a pod one user namespace);
//! - a container's options are the pod's (kubelet copies them), or it is refused.
//!
//! ```text
//!  pause     {"type":"user"} + uidMappings/gidMappings     a new user namespace; runc creates
//!            {"type":"network"} (no path)                  the network namespace inside it
//!  container {"type":"user","path":"/proc/<pause>/ns/user"} + the same mappings (runc 1.1.5
//!            wants them even when joining: it reads the host uid of root from them)
//! ```
//!
//! The network namespace must belong to the pod's user namespace, not the host's: the kernel
//! lets a container mount sysfs (and set its network sysctls) only for a network namespace its
//! user namespace owns, and runc 1.1.5 has no fallback to a bind of the host's /sys. So a pod
//! with a user namespace has its network namespace made by runc, and corral-cri pins it after
//! the pause container's create (as containerd 2.0 does) instead of before.
//!
//! The root filesystem is idmapped by our shim (runc 1.1.5 cannot): files owned by uid 0 on
//! disk appear owned by the container's root. The runtime handler must be ours (see
//! `crate::system`).

use protocol::grpc::runtime::v1::{IdMapping, NamespaceMode, NamespaceOption};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// One range of ids: `length` ids from `container_id` inside map onto `host_id` outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

/// A pod's own user namespace: its uid and gid mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodUserns {
    pub uids: IdMap,
    pub gids: IdMap,
}

impl PodUserns {
    /// The host uid and gid of the container's root, which owns the pod's files.
    pub fn host_root(&self) -> (u32, u32) {
        (self.uids.host_id, self.gids.host_id)
    }

    /// `linux.uidMappings` and `linux.gidMappings` of a spec.
    pub fn to_json(self) -> (Value, Value) {
        let one = |m: IdMap| json!([{"containerID": m.container_id, "hostID": m.host_id, "size": m.length}]);
        (one(self.uids), one(self.gids))
    }
}

/// The user namespace `ns` asks for: None for the host's, the mappings for a pod's own.
/// `field` names where the options came from in errors (e.g.
/// `PodSandboxConfig.linux.security_context.namespace_options.userns_options`).
pub fn parse(ns: Option<&NamespaceOption>, field: &str) -> Result<Option<PodUserns>> {
    let Some(u) = ns.and_then(|n| n.userns_options.as_ref()) else {
        return Ok(None);
    };
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => {
            if u.uids.is_empty() && u.gids.is_empty() {
                Ok(None)
            } else {
                Err(Error::invalid(format!(
                    "{field}: mode NODE (the host's user namespace) takes no mappings, got {} \
                     uid and {} gid mappings",
                    u.uids.len(),
                    u.gids.len()
                )))
            }
        }
        Ok(NamespaceMode::Pod) => Ok(Some(PodUserns {
            uids: one_mapping(&u.uids, &format!("{field}.uids"))?,
            gids: one_mapping(&u.gids, &format!("{field}.gids"))?,
        })),
        Ok(m) => Err(Error::invalid(format!(
            "{field}: mode {} is not supported: a pod has one user namespace, its own (POD, \
             with mappings) or the host's (NODE)",
            m.as_str_name()
        ))),
        Err(_) => Err(Error::invalid(format!("{field}: unknown mode {}", u.mode))),
    }
}

/// The one mapping of a POD user namespace, checked.
fn one_mapping(list: &[IdMapping], field: &str) -> Result<IdMap> {
    let [m] = list else {
        return Err(Error::invalid(format!(
            "{field}: mode POD needs exactly one mapping, got {}",
            list.len()
        )));
    };
    let bad = |why: String| {
        Err(Error::invalid(format!(
            "{field}: mapping {{container_id: {}, host_id: {}, length: {}}} {why}",
            m.container_id, m.host_id, m.length
        )))
    };
    if m.length == 0 {
        return bad("is empty (length 0)".into());
    }
    if m.container_id != 0 {
        return bad("does not map the container's root: container_id must be 0".into());
    }
    // Id 4294967295 is (uid_t)-1, "no id": the last id a range may reach is one below.
    let end = u64::from(m.host_id) + u64::from(m.length);
    if end > u64::from(u32::MAX) {
        return bad(format!(
            "ends past the last host id {}: host_id + length = {end}",
            u32::MAX - 1
        ));
    }
    Ok(IdMap {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// A config mount's idmapping (`uid_mappings`, `gid_mappings`; kubelet sets the pod's on
/// every volume of a pod with a user namespace) as the spec mount's `uidMappings` and
/// `gidMappings`, None without. Our shim makes the idmapped mount (runc 1.1.5 ignores the
/// fields). Both lists or neither; every mapping non-empty and inside the 32-bit id space.
pub fn mount_mappings(
    uids: &[IdMapping],
    gids: &[IdMapping],
    field: &str,
) -> Result<Option<(Value, Value)>> {
    if uids.is_empty() && gids.is_empty() {
        return Ok(None);
    }
    if uids.is_empty() || gids.is_empty() {
        return Err(Error::invalid(format!(
            "{field}: uid_mappings and gid_mappings go together, got {} and {}",
            uids.len(),
            gids.len()
        )));
    }
    let list = |maps: &[IdMapping], what: &str| -> Result<Value> {
        let mut out = Vec::new();
        for m in maps {
            let end = |start: u32| u64::from(start) + u64::from(m.length);
            if m.length == 0
                || end(m.container_id) > u64::from(u32::MAX)
                || end(m.host_id) > u64::from(u32::MAX)
            {
                return Err(Error::invalid(format!(
                    "{field}.{what}: mapping {{container_id: {}, host_id: {}, length: {}}} is \
                     empty or ends past id {}",
                    m.container_id,
                    m.host_id,
                    m.length,
                    u32::MAX - 1
                )));
            }
            out.push(json!({"containerID": m.container_id, "hostID": m.host_id, "size": m.length}));
        }
        Ok(Value::Array(out))
    };
    Ok(Some((
        list(uids, "uid_mappings")?,
        list(gids, "gid_mappings")?,
    )))
}

/// A container's user namespace options must say what its pod's say (kubelet copies them);
/// absent and NODE both mean the host's. Returns the pod's.
pub fn check_container(
    pod: Option<PodUserns>,
    container: Option<&NamespaceOption>,
) -> Result<Option<PodUserns>> {
    const FIELD: &str = "ContainerConfig.linux.security_context.namespace_options.userns_options";
    let asked = parse(container, FIELD)?;
    if asked != pod {
        let show = |u: Option<PodUserns>| match u {
            None => "the host's".to_string(),
            Some(u) => format!(
                "uids {}:{}:{}, gids {}:{}:{}",
                u.uids.container_id,
                u.uids.host_id,
                u.uids.length,
                u.gids.container_id,
                u.gids.host_id,
                u.gids.length
            ),
        };
        return Err(Error::invalid(format!(
            "{FIELD}: the container asks for {} user namespace but its pod has {}",
            show(asked),
            show(pod)
        )));
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::grpc::runtime::v1::UserNamespace;

    fn opts(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> NamespaceOption {
        NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: mode as i32,
                uids,
                gids,
            }),
            ..Default::default()
        }
    }

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    fn err(o: &NamespaceOption) -> Error {
        parse(Some(o), "F").unwrap_err()
    }

    #[test]
    fn absent_and_node_are_the_hosts() {
        assert_eq!(parse(None, "F").unwrap(), None);
        assert_eq!(parse(Some(&NamespaceOption::default()), "F").unwrap(), None);
        let node = opts(NamespaceMode::Node, vec![], vec![]);
        assert_eq!(parse(Some(&node), "F").unwrap(), None);
    }

    #[test]
    fn node_with_mappings_is_refused() {
        let e = err(&opts(NamespaceMode::Node, vec![m(0, 1000, 10)], vec![]));
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(
            e.message.contains("F: mode NODE") && e.message.contains("1 uid"),
            "{e}"
        );
    }

    #[test]
    fn pod_with_one_mapping_each() {
        let o = opts(
            NamespaceMode::Pod,
            vec![m(0, 1000, 100000)],
            vec![m(0, 2000, 65536)],
        );
        let u = parse(Some(&o), "F").unwrap().unwrap();
        assert_eq!(u.host_root(), (1000, 2000));
        let (uids, gids) = u.to_json();
        assert_eq!(
            uids,
            json!([{"containerID": 0, "hostID": 1000, "size": 100000}])
        );
        assert_eq!(
            gids,
            json!([{"containerID": 0, "hostID": 2000, "size": 65536}])
        );
    }

    #[test]
    fn pod_mappings_are_checked_and_named() {
        let ok = m(0, 1000, 100000);
        for (uids, gids, want) in [
            (
                vec![],
                vec![ok],
                "F.uids: mode POD needs exactly one mapping, got 0",
            ),
            (
                vec![ok],
                vec![],
                "F.gids: mode POD needs exactly one mapping, got 0",
            ),
            (
                vec![ok, m(0, 2000, 100000)],
                vec![ok],
                "F.uids: mode POD needs exactly one mapping, got 2",
            ),
            (
                vec![m(1, 1000, 100000)],
                vec![ok],
                "F.uids: mapping {container_id: 1, host_id: 1000, length: 100000} does not \
                 map the container's root",
            ),
            (
                vec![ok],
                vec![m(0, 1000, 0)],
                "F.gids: mapping {container_id: 0, host_id: 1000, length: 0} is empty",
            ),
            (
                vec![m(0, u32::MAX - 10, 11)],
                vec![ok],
                "ends past the last host id 4294967294: host_id + length = 4294967296",
            ),
        ] {
            let e = err(&opts(NamespaceMode::Pod, uids, gids));
            assert_eq!(e.code, protocol::Code::InvalidArgument, "{e}");
            assert!(e.message.contains(want), "{e}\nwant: {want}");
        }
        // The last usable id is fine.
        let last = opts(NamespaceMode::Pod, vec![m(0, u32::MAX - 10, 10)], vec![ok]);
        assert!(parse(Some(&last), "F").is_ok());
    }

    #[test]
    fn container_and_target_are_refused() {
        for mode in [NamespaceMode::Container, NamespaceMode::Target] {
            let e = err(&opts(mode, vec![], vec![]));
            assert_eq!(e.code, protocol::Code::InvalidArgument);
            assert!(e.message.contains(mode.as_str_name()), "{e}");
        }
        let mut o = opts(NamespaceMode::Pod, vec![], vec![]);
        o.userns_options.as_mut().unwrap().mode = 7;
        assert!(err(&o).message.contains("unknown mode 7"));
    }

    #[test]
    fn mount_mappings_are_checked() {
        let ok = m(0, 1000, 65536);
        assert_eq!(mount_mappings(&[], &[], "F").unwrap(), None);
        let (u, g) = mount_mappings(&[ok], &[m(0, 2000, 10)], "F")
            .unwrap()
            .unwrap();
        assert_eq!(
            u,
            json!([{"containerID": 0, "hostID": 1000, "size": 65536}])
        );
        assert_eq!(g, json!([{"containerID": 0, "hostID": 2000, "size": 10}]));
        let e = mount_mappings(&[ok], &[], "F").unwrap_err();
        assert!(
            e.message
                .contains("F: uid_mappings and gid_mappings go together"),
            "{e}"
        );
        let e = mount_mappings(&[ok], &[m(0, 1, 0)], "F").unwrap_err();
        assert!(e.message.contains("F.gid_mappings: mapping"), "{e}");
        assert!(mount_mappings(&[m(u32::MAX, 0, 1)], &[ok], "F").is_err());
    }

    #[test]
    fn a_container_must_ask_for_its_pods_namespace() {
        let ok = m(0, 1000, 100000);
        let pod_opts = opts(NamespaceMode::Pod, vec![ok], vec![ok]);
        let pod = parse(Some(&pod_opts), "F").unwrap();
        assert_eq!(check_container(pod, Some(&pod_opts)).unwrap(), pod);
        let node = opts(NamespaceMode::Node, vec![], vec![]);
        assert_eq!(check_container(None, Some(&node)).unwrap(), None);
        assert_eq!(check_container(None, None).unwrap(), None);
        let e = check_container(pod, Some(&node)).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("asks for the host's"), "{e}");
        let other = opts(NamespaceMode::Pod, vec![m(0, 5000, 100000)], vec![ok]);
        let e = check_container(pod, Some(&other)).unwrap_err();
        assert!(e.message.contains("uids 0:5000:100000"), "{e}");
        assert!(check_container(None, Some(&pod_opts)).is_err());
    }
}
