//! Container records (`containers <ns>\0<id>`): the rules of containerd 1.6's container store
//! (metadata/containers.go), which the Containers service adapts to the wire and the Tasks
//! service reads.
//!
//! A container is metadata only: an OCI spec, a runtime name (and options), the snapshot that
//! will be its rootfs, an image name, labels and extensions (CRI keeps its own records there).
//! Nothing runs until a task is created from it.
//!
//! Rules, as containerd has them:
//! - validation on create and after every update: the id is an identifier, labels fit
//!   (key + value ≤ 4096 bytes), extension keys are not empty, the runtime name and the spec are
//!   set, a snapshot key comes with a snapshotter;
//! - label values that are empty are not stored (a label set to `""` is removed);
//! - Update masks: `labels`, `labels.<k>`, `spec`, `extensions`, `extensions.<k>`, `image`,
//!   `snapshotkey`; any other path (`runtime`, `snapshotter`, …) is InvalidArgument. Without a
//!   mask those five are replaced, and a request whose snapshotter or runtime name differs
//!   from the stored one is refused (they are immutable);
//! - `created_at` and `updated_at` are the server's.
//!
//! Two deliberate differences from containerd 1.6, both where it loses data silently: replacing
//! `extensions` replaces the map (containerd merges old extensions back in on every write, so
//! one can never be removed), and `extensions.<k>` absent from the request removes `k`
//! (containerd stores an empty Any under `k`).
//!
//! Containers are garbage-collection roots (their snapshot, see `gc.rs`); they are not lease
//! resources, even when created under a lease (as in containerd).
//!
//! ```
//! # use supervisor::metadata::{containers, AnyValue, Container, Db, Runtime, Time};
//! # let dir = tempfile::tempdir().unwrap();
//! # let db = Db::open(&dir.path().join("meta.redb")).unwrap();
//! let c = Container {
//!     runtime: Runtime { name: "io.containerd.runc.v2".into(), options: None },
//!     spec: Some(AnyValue { type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(), value: b"{}".to_vec() }),
//!     ..Container::default()
//! };
//! containers::create(&db, "default", "c1", c).unwrap();
//! let got = containers::get(&db, "default", "c1").unwrap();
//! assert_eq!(got.runtime.name, "io.containerd.runc.v2");
//! ```

use std::collections::BTreeMap;

use protocol::Code;
use protocol::filters::Filters;

use super::{CONTAINERS, Container, Db, Time, key};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error(transparent)]
    Db(#[from] super::Error),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Db(e) => e.code(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The update mask paths containerd applies when a request has no mask.
const FULL_REPLACE: [&str; 5] = ["labels", "spec", "extensions", "image", "snapshotkey"];

/// The container `id` of namespace `ns`; NotFound (`container "<id>" in namespace "<ns>": not
/// found`, containerd's wording) if there is none. This is what the Tasks service reads.
pub fn get(db: &Db, ns: &str, id: &str) -> Result<Container> {
    db.get::<Container>(CONTAINERS, &key(ns, &[id]))?
        .ok_or_else(|| Error::NotFound(format!("container {id:?} in namespace {ns:?}")))
}

/// The containers of `ns` that match `filters`, with their ids, in id order.
pub fn list(db: &Db, ns: &str, filters: &Filters) -> Result<Vec<(String, Container)>> {
    Ok(db
        .list::<Container>(CONTAINERS, ns)?
        .into_iter()
        .filter_map(|(k, c)| {
            let id = k.split_once('\0').map_or("", |(_, id)| id).to_string();
            filters.matches(&Fields(&id, &c)).then_some((id, c))
        })
        .collect())
}

/// Stores a new container; the timestamps are set here. AlreadyExists if `id` is taken.
pub fn create(db: &Db, ns: &str, id: &str, mut c: Container) -> Result<Container> {
    normalize(&mut c);
    validate(id, &c)
        .map_err(|e| Error::InvalidArgument(format!("create container failed validation: {e}")))?;
    let now = Time::now();
    c.created_at = now;
    c.updated_at = now;
    let k = key(ns, &[id]);
    let tx = db.write()?;
    if tx.get::<Container>(CONTAINERS, &k)?.is_some() {
        return Err(Error::AlreadyExists(format!("container {id:?}")));
    }
    tx.ensure_namespace(ns)?;
    tx.put(CONTAINERS, &k, &c)?;
    tx.commit()?;
    Ok(c)
}

/// Applies `new` to the stored container `id` under the mask `paths` (containerd's rules, see
/// the module doc) and returns the result.
pub fn update(db: &Db, ns: &str, id: &str, new: Container, paths: &[String]) -> Result<Container> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("must specify a container id".into()));
    }
    let k = key(ns, &[id]);
    let tx = db.write()?;
    let mut rec = tx
        .get::<Container>(CONTAINERS, &k)?
        .ok_or_else(|| Error::NotFound(format!("container {id:?}")))?;
    apply_mask(id, &mut rec, new, paths)?;
    normalize(&mut rec);
    validate(id, &rec)
        .map_err(|e| Error::InvalidArgument(format!("update failed validation: {e}")))?;
    rec.updated_at = Time::now().max(rec.created_at);
    tx.put(CONTAINERS, &k, &rec)?;
    tx.commit()?;
    Ok(rec)
}

/// Removes the container record (not its snapshot: clients remove that, or GC does once
/// nothing else holds it).
pub fn delete(db: &Db, ns: &str, id: &str) -> Result<()> {
    let tx = db.write()?;
    if !tx.delete(CONTAINERS, &key(ns, &[id]))? {
        return Err(Error::NotFound(format!("container {id:?}")));
    }
    tx.commit()?;
    Ok(())
}

/// containerd's `validateContainer`; the message names the field.
pub fn validate(id: &str, c: &Container) -> std::result::Result<(), String> {
    if let Err(s) = crate::services::check_identifier("container", id) {
        return Err(format!("container.ID: {}", s.message()));
    }
    if c.extensions.keys().any(String::is_empty) {
        return Err("container.Extension keys must not be zero-length".into());
    }
    if let Err(e) = content::validate_labels(&c.labels) {
        return Err(format!("containers.Labels: {e}"));
    }
    if c.runtime.name.is_empty() {
        return Err("container.Runtime.Name must be set".into());
    }
    if c.spec.is_none() {
        return Err("container.Spec must be set".into());
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err("container.Snapshotter must be set if container.SnapshotKey is set".into());
    }
    Ok(())
}

/// Applies `new` to `rec` under `paths` (none: a full replace of the mutable fields).
pub fn apply_mask(id: &str, rec: &mut Container, new: Container, paths: &[String]) -> Result<()> {
    let full: Vec<String>;
    let paths = if paths.is_empty() {
        // Immutable fields must match on a full replace, so that they can become mutable
        // later without changing what such a request means (containerd's comment).
        if rec.snapshotter != new.snapshotter {
            return Err(Error::InvalidArgument(
                "container.Snapshotter field is immutable".into(),
            ));
        }
        if rec.runtime.name != new.runtime.name {
            return Err(Error::InvalidArgument(
                "container.Runtime.Name field is immutable".into(),
            ));
        }
        full = FULL_REPLACE.iter().map(|p| p.to_string()).collect();
        &full[..]
    } else {
        paths
    };
    for p in paths {
        if let Some(k) = p.strip_prefix("labels.") {
            set_or_remove(&mut rec.labels, &new.labels, k);
        } else if let Some(k) = p.strip_prefix("extensions.") {
            set_or_remove(&mut rec.extensions, &new.extensions, k);
        } else {
            match p.as_str() {
                "labels" => rec.labels = new.labels.clone(),
                "spec" => rec.spec = new.spec.clone(),
                "extensions" => rec.extensions = new.extensions.clone(),
                "image" => rec.image = new.image.clone(),
                "snapshotkey" => rec.snapshot_key = new.snapshot_key.clone(),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {p:?} field on {id:?}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn set_or_remove<V: Clone>(current: &mut BTreeMap<String, V>, new: &BTreeMap<String, V>, k: &str) {
    match new.get(k) {
        Some(v) => {
            current.insert(k.to_string(), v.clone());
        }
        None => {
            current.remove(k);
        }
    }
}

/// containerd does not store labels with empty values: setting one to `""` removes it.
fn normalize(c: &mut Container) {
    c.labels.retain(|_, v| !v.is_empty());
}

/// containerd's container filter fields: `id`, `image`, `runtime.name`, `labels.<k>`; and,
/// ours, `snapshotter` and `snapshot_key`. Empty values count as absent, as in containerd.
pub struct Fields<'a>(pub &'a str, pub &'a Container);

impl protocol::filters::Fields for Fields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let (id, c) = (self.0, self.1);
        let v = match path.first().map(String::as_str)? {
            "id" => id.to_string(),
            "image" => c.image.clone(),
            "runtime" if path.len() == 2 && path[1] == "name" => c.runtime.name.clone(),
            "snapshotter" if path.len() == 1 => c.snapshotter.clone(),
            "snapshot_key" | "snapshotkey" if path.len() == 1 => c.snapshot_key.clone(),
            "labels" => return c.labels.get(&path[1..].join(".")).cloned(),
            _ => return None,
        };
        Some(v).filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{AnyValue, Labels, Runtime};

    fn spec() -> Option<AnyValue> {
        Some(AnyValue {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
        })
    }

    fn container() -> Container {
        Container {
            labels: [("a".to_string(), "1".to_string())].into(),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: spec(),
            snapshotter: "overlayfs".into(),
            snapshot_key: "c1".into(),
            extensions: [(
                "ext".to_string(),
                AnyValue {
                    type_url: "x".into(),
                    value: vec![1],
                },
            )]
            .into(),
            ..Container::default()
        }
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn create_get_delete_and_their_errors() {
        let (_d, db) = db();
        let c = create(&db, "ns", "c1", container()).unwrap();
        assert!(c.created_at.seconds > 0 && c.created_at == c.updated_at);
        let got = get(&db, "ns", "c1").unwrap();
        assert_eq!(got.snapshot_key, "c1");
        assert_eq!(got.spec, spec());

        let e = create(&db, "ns", "c1", container()).unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        assert_eq!(e.to_string(), "container \"c1\": already exists");
        // Another namespace is another key space.
        create(&db, "other", "c1", container()).unwrap();
        let e = get(&db, "ns", "nope").unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(
            e.to_string(),
            "container \"nope\" in namespace \"ns\": not found"
        );

        delete(&db, "ns", "c1").unwrap();
        assert_eq!(get(&db, "ns", "c1").unwrap_err().code(), Code::NotFound);
        assert!(get(&db, "other", "c1").is_ok(), "delete crossed namespaces");
        let e = delete(&db, "ns", "c1").unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = update(&db, "ns", "c1", container(), &[]).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }

    #[test]
    fn validation_names_the_field_and_stores_nothing() {
        let (_d, db) = db();
        let cases: Vec<(&str, Container, &str)> = vec![
            ("bad/id", container(), "container.ID"),
            ("", container(), "container.ID"),
            (
                "c1",
                Container {
                    runtime: Runtime::default(),
                    ..container()
                },
                "container.Runtime.Name must be set",
            ),
            (
                "c1",
                Container {
                    spec: None,
                    ..container()
                },
                "container.Spec must be set",
            ),
            (
                "c1",
                Container {
                    snapshotter: String::new(),
                    ..container()
                },
                "container.Snapshotter must be set if container.SnapshotKey is set",
            ),
            (
                "c1",
                Container {
                    labels: [("k".to_string(), "v".repeat(4096))].into(),
                    ..container()
                },
                "containers.Labels",
            ),
            (
                "c1",
                Container {
                    extensions: [(String::new(), AnyValue::default())].into(),
                    ..container()
                },
                "Extension keys",
            ),
        ];
        for (id, c, want) in cases {
            let e = create(&db, "ns", id, c).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{id}: {e}");
            assert!(e.to_string().contains(want), "{id}: {e}");
            assert!(
                e.to_string()
                    .starts_with("create container failed validation"),
                "{e}"
            );
        }
        assert!(list(&db, "ns", &Filters::default()).unwrap().is_empty());
        // Label key + value of exactly 4096 bytes is fine.
        let c = Container {
            labels: [("k".to_string(), "v".repeat(4095))].into(),
            ..container()
        };
        create(&db, "ns", "c1", c).unwrap();
    }

    #[test]
    fn masks_update_only_what_they_name() {
        let (_d, db) = db();
        let created = create(&db, "ns", "c1", container()).unwrap();
        let new = Container {
            labels: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), String::new()),
            ]
            .into(),
            image: "other".into(),
            spec: Some(AnyValue {
                type_url: "t".into(),
                value: b"{}".to_vec(),
            }),
            snapshot_key: "k2".into(),
            extensions: [(
                "ext2".to_string(),
                AnyValue {
                    type_url: "y".into(),
                    value: vec![2],
                },
            )]
            .into(),
            ..Container::default()
        };
        let paths = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        // labels.<k>: set b, and a set to "" is removed.
        let u = update(
            &db,
            "ns",
            "c1",
            new.clone(),
            &paths(&["labels.b", "labels.a"]),
        )
        .unwrap();
        assert_eq!(u.labels, Labels::from([("b".into(), "2".into())]));
        assert_eq!(u.image, created.image, "image changed without its mask");
        assert_eq!(u.spec, spec());
        assert_eq!(u.created_at, created.created_at);
        assert!(u.updated_at >= created.updated_at);

        // extensions.<k>: ext2 added, ext (absent in the request) removed.
        let u = update(
            &db,
            "ns",
            "c1",
            new.clone(),
            &paths(&["extensions.ext2", "extensions.ext"]),
        )
        .unwrap();
        assert_eq!(
            u.extensions.keys().collect::<Vec<_>>(),
            ["ext2"],
            "{:?}",
            u.extensions
        );

        let u = update(
            &db,
            "ns",
            "c1",
            new.clone(),
            &paths(&["image", "snapshotkey", "spec"]),
        )
        .unwrap();
        assert_eq!((u.image.as_str(), u.snapshot_key.as_str()), ("other", "k2"));
        assert_eq!(u.spec.as_ref().unwrap().type_url, "t");
        assert_eq!(get(&db, "ns", "c1").unwrap().image, "other", "not stored");

        // Runtime and snapshotter are not updatable, named or not.
        for p in ["runtime", "snapshotter", "runtime.name", "id"] {
            let e = update(&db, "ns", "c1", new.clone(), &paths(&[p])).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert_eq!(
                e.to_string(),
                format!("cannot update {p:?} field on \"c1\"")
            );
        }
        // A spec mask without a spec leaves the container invalid: refused, nothing stored.
        let e = update(&db, "ns", "c1", Container::default(), &paths(&["spec"])).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().contains("container.Spec must be set"), "{e}");
        assert!(get(&db, "ns", "c1").unwrap().spec.is_some());
    }

    #[test]
    fn update_without_mask_replaces_the_mutable_fields() {
        let (_d, db) = db();
        create(&db, "ns", "c1", container()).unwrap();
        // Runtime name and snapshotter differ: immutable.
        let e = update(&db, "ns", "c1", Container::default(), &[]).unwrap_err();
        assert_eq!(e.to_string(), "container.Snapshotter field is immutable");
        let e = update(
            &db,
            "ns",
            "c1",
            Container {
                runtime: Runtime {
                    name: "io.containerd.corral.v1".into(),
                    options: None,
                },
                ..container()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.to_string(), "container.Runtime.Name field is immutable");

        let u = update(
            &db,
            "ns",
            "c1",
            Container {
                labels: Labels::new(),
                image: String::new(),
                extensions: BTreeMap::new(),
                snapshot_key: "k9".into(),
                runtime: Runtime {
                    name: "io.containerd.runc.v2".into(),
                    // Options are not among the replaced fields.
                    options: Some(AnyValue {
                        type_url: "o".into(),
                        value: vec![],
                    }),
                },
                ..container()
            },
            &[],
        )
        .unwrap();
        assert!(u.labels.is_empty() && u.image.is_empty() && u.extensions.is_empty());
        assert_eq!(u.snapshot_key, "k9");
        assert!(u.runtime.options.is_none());
    }

    #[test]
    fn filters_on_id_image_runtime_labels_and_snapshot() {
        let (_d, db) = db();
        create(&db, "ns", "c1", container()).unwrap();
        create(
            &db,
            "ns",
            "c2",
            Container {
                labels: [("x.y/z".to_string(), "v".to_string())].into(),
                image: String::new(),
                runtime: Runtime {
                    name: "io.containerd.corral.v1".into(),
                    options: None,
                },
                snapshotter: "native".into(),
                snapshot_key: "k2".into(),
                ..container()
            },
        )
        .unwrap();
        create(&db, "ns2", "c3", container()).unwrap();
        let ids = |f: &[&str]| {
            let f = Filters::parse_all(f).unwrap();
            list(&db, "ns", &f)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&[]), ["c1", "c2"]);
        assert_eq!(ids(&["id==c2"]), ["c2"]);
        assert_eq!(ids(&["image==docker.io/library/busybox:latest"]), ["c1"]);
        assert_eq!(ids(&["image"]), ["c1"], "an empty image is absent");
        assert_eq!(ids(&["runtime.name==io.containerd.corral.v1"]), ["c2"]);
        assert_eq!(ids(&["labels.a==1"]), ["c1"]);
        assert_eq!(ids(&[r#"labels."x.y/z"==v"#]), ["c2"]);
        assert_eq!(ids(&["labels.a!=1"]), ["c2"]);
        assert_eq!(ids(&["snapshotter==native"]), ["c2"]);
        assert_eq!(ids(&["snapshot_key==c1"]), ["c1"]);
        assert_eq!(ids(&["id~=^c", "labels.a==1,id==c2"]), ["c1", "c2"]);
        assert_eq!(ids(&["id==c1,labels.a==2"]), Vec::<String>::new());
        assert!(Filters::parse_all(&["id=="]).is_err());
    }
}
