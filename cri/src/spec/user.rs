//! Who a container's process runs as: the security context's run_as_* or the image's USER,
//! resolved through the image's /etc/passwd and /etc/group the way containerd's
//! `oci.WithUser` and `WithAdditionalGIDs` do.
//!
//! | asked for        | uid                     | gid                                  |
//! |------------------|-------------------------|--------------------------------------|
//! | (nothing)        | 0                       | 0                                    |
//! | `1000`           | 1000                    | its passwd entry's gid, else 0       |
//! | `name`           | passwd entry (required) | passwd entry                         |
//! | `u:g`            | `u` (a name: required)  | `g` (a name: required in /etc/group) |
//!
//! Supplementary groups: the primary gid (containerd 1.6.18+, CVE-2023-25173), the groups
//! that list the user as a member in /etc/group (policy Merge; not Strict), and the security
//! context's supplemental_groups; sorted, without duplicates.

use protocol::grpc::runtime::v1::Int64Value;
use serde_json::{Value, json};

use super::ImageEtc;
use crate::error::{Error, Result};

/// A resolved process user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The passwd name, when the image knows the user: whose /etc/group memberships count.
    pub name: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// `name:password:uid:gid:gecos:home:shell` lines; comments, blanks and malformed lines are
/// skipped (libc does the same).
fn passwd(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    records(text).filter_map(|f| {
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
        })
    })
}

/// `name:password:gid:member,member` lines.
fn group(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    records(text).filter_map(|f| {
        Some(GroupEntry {
            name: f.first()?,
            gid: f.get(2)?.parse().ok()?,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// The user string (image-spec USER syntax) a security context asks for; None when it asks
/// for nothing (the image's USER applies). A group alone is an error: it would silently be
/// applied to whatever user the image picks.
pub fn requested(
    username: &str,
    uid: Option<&Int64Value>,
    gid: Option<&Int64Value>,
) -> Result<Option<String>> {
    let user = if !username.is_empty() {
        Some(username.to_string())
    } else {
        uid.map(|u| id("run_as_user", u.value)).transpose()?
    };
    let group = gid.map(|g| id("run_as_group", g.value)).transpose()?;
    match (user, group) {
        (None, None) => Ok(None),
        (None, Some(g)) => Err(Error::invalid(format!(
            "run_as_group {g} is set without run_as_user or run_as_username"
        ))),
        (Some(u), None) => Ok(Some(u)),
        (Some(u), Some(g)) => Ok(Some(format!("{u}:{g}"))),
    }
}

fn id(what: &str, v: i64) -> Result<String> {
    u32::try_from(v)
        .map(|v| v.to_string())
        .map_err(|_| Error::invalid(format!("{what} {v} is not a valid id")))
}

/// Resolves `user`, `uid`, `user:group` (either part a name or a number) against the image.
pub fn resolve(spec: &str, etc: &ImageEtc) -> Result<User> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (u, g) = match parts.as_slice() {
        [""] => return Ok(by_uid(0, etc)),
        [u] => (*u, None),
        [u, g] => (*u, Some(*g)),
        _ => {
            return Err(Error::invalid(format!(
                "invalid user {spec:?}: expected user, uid, user:group or uid:gid"
            )));
        }
    };
    let mut user = match u.parse::<u32>() {
        Ok(uid) => by_uid(uid, etc),
        Err(_) => by_name(u, etc)?,
    };
    if let Some(g) = g {
        user.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_by_name(g, etc)?,
        };
    }
    Ok(user)
}

/// A numeric uid needs no entry: without one the gid is 0 (containerd's `WithUserID`).
fn by_uid(uid: u32, etc: &ImageEtc) -> User {
    match etc
        .passwd
        .as_deref()
        .and_then(|p| passwd(p).find(|e| e.uid == uid))
    {
        Some(e) => User {
            uid,
            gid: e.gid,
            name: Some(e.name.to_string()),
        },
        None => User {
            uid,
            gid: 0,
            name: None,
        },
    }
}

fn by_name(name: &str, etc: &ImageEtc) -> Result<User> {
    let Some(text) = etc.passwd.as_deref() else {
        return Err(Error::invalid(format!(
            "user {name:?}: the image has no /etc/passwd to look the name up in"
        )));
    };
    passwd(text)
        .find(|e| e.name == name)
        .map(|e| User {
            uid: e.uid,
            gid: e.gid,
            name: Some(name.to_string()),
        })
        .ok_or_else(|| Error::invalid(format!("user {name:?} is not in the image's /etc/passwd")))
}

fn group_by_name(name: &str, etc: &ImageEtc) -> Result<u32> {
    let Some(text) = etc.group.as_deref() else {
        return Err(Error::invalid(format!(
            "group {name:?}: the image has no /etc/group to look the name up in"
        )));
    };
    group(text)
        .find(|e| e.name == name)
        .map(|e| e.gid)
        .ok_or_else(|| Error::invalid(format!("group {name:?} is not in the image's /etc/group")))
}

/// The process's supplementary groups: the primary gid, the user's /etc/group memberships
/// when `merge`, and `extra` (the security context's supplemental_groups).
///
/// A group named like the user is skipped (containerd: it is the user's own primary group,
/// which is in the list already). containerd 1.6 looks memberships up for run_as_user (or
/// uid 0 when unset) even when the image's USER picks the user; we use the user who actually
/// runs, which is the same whenever kubelet sets run_as_user and right when it does not.
pub fn additional_gids(
    user: &User,
    etc: &ImageEtc,
    merge: bool,
    extra: &[i64],
) -> Result<Vec<u32>> {
    let mut gids = vec![user.gid];
    if merge && let (Some(name), Some(text)) = (&user.name, etc.group.as_deref()) {
        gids.extend(
            group(text)
                .filter(|g| g.name != name && g.members.contains(&name.as_str()))
                .map(|g| g.gid),
        );
    }
    for g in extra {
        gids.push(
            u32::try_from(*g).map_err(|_| {
                Error::invalid(format!("supplemental group {g} is not a valid gid"))
            })?,
        );
    }
    gids.sort_unstable();
    gids.dedup();
    Ok(gids)
}

/// `process.user` of the spec.
pub fn to_json(user: &User, additional_gids: &[u32]) -> Value {
    json!({"uid": user.uid, "gid": user.gid, "additionalGids": additional_gids})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> ImageEtc {
        ImageEtc {
            passwd: Some(
                "# users\nroot:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n\
                 default-user:x:1000:1000::/home/d:/bin/sh\nbroken:x:notanumber:1\n\n"
                    .into(),
            ),
            group: Some(
                "root:x:0:\nwheel:x:10:root, default-user\ndefault-user:x:1000:default-user\n\
                 group-defined-in-image:x:50000:default-user\nnogroup:x:65534:\nstaff:x:50:\n"
                    .into(),
            ),
        }
    }

    fn i(v: i64) -> Int64Value {
        Int64Value { value: v }
    }

    #[test]
    fn requested_combines_the_security_context() {
        assert_eq!(requested("", None, None).unwrap(), None);
        assert_eq!(
            requested("", Some(&i(1001)), None).unwrap().unwrap(),
            "1001"
        );
        assert_eq!(
            requested("bob", Some(&i(1001)), None).unwrap().unwrap(),
            "bob"
        );
        assert_eq!(
            requested("bob", None, Some(&i(7))).unwrap().unwrap(),
            "bob:7"
        );
        assert_eq!(
            requested("", Some(&i(0)), Some(&i(0))).unwrap().unwrap(),
            "0:0"
        );
    }

    #[test]
    fn a_group_without_a_user_is_invalid() {
        let e = requested("", None, Some(&i(5))).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(e.message.contains("run_as_group 5"), "{e}");
    }

    #[test]
    fn negative_ids_are_invalid() {
        let e = requested("", Some(&i(-1)), None).unwrap_err();
        assert!(e.message.contains("run_as_user -1"), "{e}");
        let e = additional_gids(&resolve("0", &etc()).unwrap(), &etc(), true, &[-3]).unwrap_err();
        assert!(e.message.contains("supplemental group -3"), "{e}");
    }

    #[test]
    fn empty_user_is_root() {
        let u = resolve("", &etc()).unwrap();
        assert_eq!((u.uid, u.gid, u.name.as_deref()), (0, 0, Some("root")));
    }

    #[test]
    fn a_known_uid_takes_its_gid() {
        let u = resolve("65534", &etc()).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.name.as_deref()),
            (65534, 65534, Some("nobody"))
        );
    }

    #[test]
    fn an_unknown_uid_gets_gid_zero() {
        let u = resolve("1234", &etc()).unwrap();
        assert_eq!((u.uid, u.gid, u.name), (1234, 0, None));
        let u = resolve("1234", &ImageEtc::default()).unwrap();
        assert_eq!((u.uid, u.gid), (1234, 0));
    }

    #[test]
    fn a_name_is_looked_up() {
        let u = resolve("default-user", &etc()).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
    }

    #[test]
    fn an_unknown_name_is_invalid_and_named() {
        let e = resolve("alice", &etc()).unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
        assert!(
            e.message.contains("\"alice\"") && e.message.contains("/etc/passwd"),
            "{e}"
        );
        let e = resolve("alice", &ImageEtc::default()).unwrap_err();
        assert!(e.message.contains("no /etc/passwd"), "{e}");
    }

    #[test]
    fn uid_and_gid_numbers_are_taken_as_they_are() {
        let u = resolve("1000:50", &etc()).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.name.as_deref()),
            (1000, 50, Some("default-user"))
        );
        let u = resolve("7:8", &ImageEtc::default()).unwrap();
        assert_eq!((u.uid, u.gid), (7, 8));
    }

    #[test]
    fn names_on_either_side_of_the_colon_are_looked_up() {
        let u = resolve("nobody:staff", &etc()).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 50));
        let u = resolve("1000:wheel", &etc()).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve("default-user:0", &etc()).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 0));
    }

    #[test]
    fn an_unknown_group_name_is_invalid_and_named() {
        let e = resolve("0:admins", &etc()).unwrap_err();
        assert!(
            e.message.contains("\"admins\"") && e.message.contains("/etc/group"),
            "{e}"
        );
        let e = resolve("0:admins", &ImageEtc::default()).unwrap_err();
        assert!(e.message.contains("no /etc/group"), "{e}");
    }

    #[test]
    fn too_many_colons_are_invalid() {
        let e = resolve("1:2:3", &etc()).unwrap_err();
        assert!(e.message.contains("\"1:2:3\""), "{e}");
    }

    #[test]
    fn merge_adds_memberships_primary_and_configured_groups_sorted() {
        // critest's SupplementalGroupsPolicy=Merge case.
        let u = resolve("1000", &etc()).unwrap();
        let g = additional_gids(&u, &etc(), true, &[1234]).unwrap();
        assert_eq!(g, [10, 1000, 1234, 50000]);
    }

    #[test]
    fn strict_keeps_only_primary_and_configured_groups() {
        let u = resolve("1000", &etc()).unwrap();
        let g = additional_gids(&u, &etc(), false, &[1234]).unwrap();
        assert_eq!(g, [1000, 1234]);
    }

    #[test]
    fn duplicates_are_removed_and_an_unknown_user_has_no_memberships() {
        let u = resolve("4242:7", &etc()).unwrap();
        let g = additional_gids(&u, &etc(), true, &[7, 9, 9]).unwrap();
        assert_eq!(g, [7, 9]);
    }

    #[test]
    fn process_user_json() {
        let u = User {
            uid: 1,
            gid: 2,
            name: None,
        };
        assert_eq!(
            to_json(&u, &[2, 3]),
            json!({"uid": 1, "gid": 2, "additionalGids": [2, 3]})
        );
    }
}
