//! The [`Snapshotter`] contract, snapshot [`Info`], and `walk` [`Filter`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use crate::Mount;
use crate::error::{Error, Result};
use crate::staging::Staging;

/// Snapshot labels: free-form key/value pairs kept with the snapshot.
pub type Labels = BTreeMap<String, String>;

/// Largest `key` + `value` of one label, in bytes (containerd's limit).
pub const MAX_LABEL_SIZE: usize = 4096;

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A read-only active snapshot: mountable, never committable.
    View,
    /// A writable snapshot: mountable, and can be committed once.
    Active,
    /// An immutable snapshot: not mountable on its own, usable as a parent.
    Committed,
}

impl Kind {
    /// containerd's spelling (`Kind.String()` in Go).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The key (active/view) or name (committed).
    pub name: String,
    /// The committed snapshot this one was prepared from, if any.
    pub parent: Option<String>,
    pub kind: Kind,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: Labels,
}

/// Disk use of a snapshot's own layer (not its parents').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated (sum of `st_blocks * 512` over unique inodes).
    pub size: i64,
    /// Number of unique inodes, the layer root included.
    pub inodes: i64,
}

/// A snapshotter: a store of filesystem snapshots arranged in parent chains, handing out
/// mounts for them.
///
/// # Model
///
/// Every snapshot has a *key* (one namespace shared by all kinds) and a [`Kind`]:
///
/// - **Active** (`prepare`): writable. Created empty or on top of a committed *parent*.
/// - **View** (`view`): like active, but read-only; it can never be committed.
/// - **Committed** (`commit`): immutable. Only committed snapshots can be parents.
///
/// # Invariants
///
/// - Keys are non-empty and contain no NUL byte, else `InvalidArgument` naming the key.
/// - Active, view and committed keys share one namespace: creating any snapshot under a
///   key that exists in any kind is `AlreadyExists`.
/// - The parent given to `prepare`/`view` must exist (else `NotFound`) and be committed
///   (else `FailedPrecondition`).
/// - `commit(name, key)` turns the active snapshot `key` into a new committed snapshot
///   `name` with the same parent and contents, and **removes `key`**. Committing a view or
///   a committed snapshot is `FailedPrecondition`; an unknown key is `NotFound`; an
///   existing `name` is `AlreadyExists` (and `key` is left intact).
/// - Mounts are returned as data ([`Mount`]), never performed by the snapshotter. Whoever
///   runs the container mounts them (see [`Mount::mount`] for the reference mounter).
///   Mounting a committed snapshot is not possible: `mounts` of one is `FailedPrecondition`
///   (make a view of it instead).
/// - A snapshot that is the parent of others cannot be removed (`FailedPrecondition`);
///   remove children first. Removal is atomic: after a crash the snapshot is either still
///   fully there or gone; disk space may be reclaimed later by [`Snapshotter::cleanup`].
/// - Namespaces, garbage collection and lease policy are *not* the snapshotter's business:
///   the supervisor maps its namespaced keys onto a snapshotter and decides what to remove.
///
/// # Example: building a layer chain and running on it
///
/// Unpacking an image with two layers, then starting a container on it:
///
/// ```
/// # use snapshotter::{Snapshotter, NativeSnapshotter, Labels, Kind};
/// # let dir = tempfile::tempdir().unwrap();
/// # let sn = NativeSnapshotter::open(dir.path()).unwrap();
/// // Layer 1: an empty active snapshot; mount it, apply the layer tar, unmount, commit it
/// // under the layer's chain id.
/// let _mounts = sn.prepare("extract-1", None, Labels::new()).unwrap();
/// // ... mount, apply layer 1, unmount ...
/// sn.commit("sha256:chain1", "extract-1", Labels::new()).unwrap();
///
/// // Layer 2 goes on top of layer 1: its mounts show layer 1's files.
/// let _mounts = sn.prepare("extract-2", Some("sha256:chain1"), Labels::new()).unwrap();
/// // ... mount, apply layer 2, unmount ...
/// sn.commit("sha256:chain2", "extract-2", Labels::new()).unwrap();
///
/// // A container's rootfs: an active snapshot on top of the image's top layer.
/// let rootfs = sn.prepare("container-1", Some("sha256:chain2"), Labels::new()).unwrap();
/// assert_eq!(rootfs.len(), 1);
/// assert_eq!(sn.stat("container-1").unwrap().parent.as_deref(), Some("sha256:chain2"));
///
/// // The commit removed the active keys, and parents are protected while used.
/// assert_eq!(sn.stat("extract-1").unwrap_err().code(), snapshotter::Code::NotFound);
/// assert_eq!(sn.remove("sha256:chain2").unwrap_err().code(),
///            snapshotter::Code::FailedPrecondition);
/// sn.remove("container-1").unwrap();
/// sn.remove("sha256:chain2").unwrap();
/// assert_eq!(sn.stat("sha256:chain1").unwrap().kind, Kind::Committed);
/// ```
///
/// # Concurrency
///
/// Methods take `&self` and may be called from many threads; implementations lock
/// internally and never hold a lock across long filesystem work (copying, recursive delete).
/// Calls block: async callers use `spawn_blocking`.
pub trait Snapshotter: Send + Sync {
    /// Information about the snapshot `key` (any kind). `NotFound` if there is none.
    fn stat(&self, key: &str) -> Result<Info>;

    /// Updates the mutable part of a snapshot (its labels) and returns the new [`Info`].
    ///
    /// `fieldpaths` selects what to change, as in containerd: empty or `labels` replaces
    /// all labels with `info.labels`; `labels.<k>` sets label `k` to `info.labels[k]`, or
    /// deletes it when `info.labels` has no `k`. Any other path is `InvalidArgument`.
    /// The snapshot is `info.name`; `NotFound` if it does not exist.
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info>;

    /// Disk use of the snapshot's own layer (its parents excluded). Committed snapshots
    /// may answer from a cache computed at commit. `NotFound` if there is none.
    fn usage(&self, key: &str) -> Result<Usage>;

    /// The mounts that give the active or view snapshot `key`'s filesystem, to be
    /// performed in order by the caller. `NotFound` if unknown, `FailedPrecondition` for a
    /// committed snapshot.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Creates the active snapshot `key`, empty or (with `parent`) showing the parent's
    /// contents, and returns its mounts. Errors: `InvalidArgument` (bad key or label),
    /// `AlreadyExists` (key taken), `NotFound` (parent missing), `FailedPrecondition`
    /// (parent not committed).
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Like [`Snapshotter::prepare`], but creates a read-only view.
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Commits the active snapshot `key` as the committed snapshot `name` (with `labels`)
    /// and removes `key`. See the invariants above for the errors.
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Removes the snapshot `key` of any kind. `NotFound` if unknown, `FailedPrecondition`
    /// if it has children.
    fn remove(&self, key: &str) -> Result<()>;

    /// Calls `f` for each snapshot matching `filters` (all snapshots when empty), in key
    /// order. Filters use containerd's syntax on the fields `name`, `parent`, `kind` and
    /// `labels.<key>`: `field==value`, `field!=value`, or a bare `field` (present);
    /// `,` joins conditions with AND, and several filters are OR-ed (see [`Filter`]). A
    /// filter that does not parse is `InvalidArgument`. An error from `f` stops the walk and
    /// is returned. `f` may call back into the snapshotter.
    fn walk(&self, filters: &[&str], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()>;

    /// Reclaims disk space left by removed snapshots and interrupted operations.
    fn cleanup(&self) -> Result<()>;

    /// Waits until the disk space of the snapshots removed so far is given back, for a
    /// backend that deletes their trees after [`Snapshotter::remove`] has answered (the
    /// default: one that deletes them before).
    fn settle(&self) {}

    /// The staging side of a backend that can take layers extracted before their parents
    /// exist ([`crate::staging`]); `None` (the default) for one that cannot, whose layers are
    /// then applied one after the other on prepared snapshots.
    fn staging(&self) -> Option<&dyn Staging> {
        None
    }
}

/// Checks a snapshot key or name.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: key.to_string(),
        reason,
    })
}

/// Checks labels against containerd's rules.
pub(crate) fn check_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        let reason = if k.is_empty() {
            "empty key".to_string()
        } else if k.len() + v.len() > MAX_LABEL_SIZE {
            format!(
                "key and value are {} bytes, more than {MAX_LABEL_SIZE}",
                k.len() + v.len()
            )
        } else if k.contains('\0') || v.contains('\0') {
            "contains a NUL byte".to_string()
        } else {
            continue;
        };
        return Err(Error::InvalidLabel {
            label: k.chars().take(64).collect(),
            reason,
        });
    }
    Ok(())
}

/// Parsed `walk` filters: containerd's filter language ([`protocol::filters`]) over a
/// snapshot's fields `name`, `parent`, `kind` (`active`, `view` or `committed`) and
/// `labels.<key>` (the rest of the path is the key: `labels.a.b` is the label `a.b`). Several
/// filters are OR-ed, `,` ANDs conditions inside one; as in containerd, `!=` holds when the
/// field is absent.
///
/// ```
/// # use snapshotter::Filter;
/// let f = Filter::parse(&["kind==committed,labels.\"containerd.io/gc.root\"", "name==x"]).unwrap();
/// # let _ = f;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Filter(protocol::filters::Filters);

impl Filter {
    /// Parses filters; `InvalidArgument` naming the first bad one.
    pub fn parse(filters: &[&str]) -> Result<Filter> {
        protocol::filters::Filters::parse_all(filters)
            .map(Filter)
            .map_err(|e| Error::InvalidFilter {
                filter: e.filter,
                reason: e.reason,
            })
    }

    /// Whether `info` passes.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.matches(&InfoFields(info))
    }
}

struct InfoFields<'a>(&'a Info);

impl protocol::filters::Fields for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let info = self.0;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        match path {
            [f] if f == "name" => nonempty(&info.name),
            [f] if f == "parent" => info.parent.as_deref().and_then(nonempty),
            [f] if f == "kind" => Some(
                match info.kind {
                    Kind::Active => "active",
                    Kind::View => "view",
                    Kind::Committed => "committed",
                }
                .to_string(),
            ),
            [f, key @ ..] if f == "labels" && !key.is_empty() => {
                info.labels.get(&key.join(".")).cloned()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.map(Into::into),
            kind,
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn filters_and_or_present_quotes() {
        let a = info("a", None, Kind::Committed, &[("x", "1"), ("a.b/c", "v,w")]);
        let b = info("b", Some("a"), Kind::Active, &[("x", "2")]);
        let m = |fs: &[&str], i: &Info| Filter::parse(fs).unwrap().matches(i);
        assert!(m(&[], &a) && m(&[""], &b));
        assert!(m(&["name==a"], &a) && !m(&["name==a"], &b));
        assert!(m(&["kind==committed"], &a) && m(&["kind==active"], &b));
        assert!(m(&["parent==a"], &b) && !m(&["parent==a"], &a));
        assert!(m(&["parent"], &b) && !m(&["parent"], &a));
        assert!(m(&["parent!=z"], &a), "!= holds on an absent field");
        assert!(m(&["name~=^a$"], &a) && !m(&["name~=^a$"], &b));
        assert!(!m(&["nosuchfield==1"], &a), "unknown fields are absent");
        assert!(m(&["labels.x==2,kind!=committed"], &b));
        assert!(!m(&["labels.x==2,kind==committed"], &b));
        assert!(m(&["name==zz", "labels.x==1"], &a), "filters are OR-ed");
        assert!(m(&[r#"labels."a.b/c"=="v,w""#], &a));
        assert!(
            m(
                &["labels.a.b"],
                &info("x", None, Kind::View, &[("a.b", "")])
            ),
            "dotted key"
        );
    }

    #[test]
    fn bad_filters_name_the_filter() {
        for bad in ["name~=(x", "==1", "name==\"x", "name==a,,kind==view"] {
            let e = Filter::parse(&["name==ok", bad]).unwrap_err();
            assert_eq!(e.code(), crate::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn keys_and_labels_are_checked() {
        assert!(check_key("a/b c").is_ok());
        assert!(check_key("").unwrap_err().to_string().contains("empty"));
        assert!(check_key("a\0b").unwrap_err().to_string().contains("NUL"));
        let mut l = Labels::new();
        l.insert("k".into(), "v".repeat(MAX_LABEL_SIZE));
        assert_eq!(
            check_labels(&l).unwrap_err().code(),
            crate::Code::InvalidArgument
        );
    }
}
