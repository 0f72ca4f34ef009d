//! corrald's Containers service driven by the real ctr 1.6: `ctr containers create` from the
//! imported busybox image (a snapshot keyed by the container id), `ls` (ListStream) with `-q`
//! and filters, `info`, `label`, `rm` (which removes the snapshot too), duplicate ids, namespace
//! isolation, the `/containers/*` events, and records surviving a kill -9.
//!
//! No `ctr run` here: that needs the Tasks service (its own tests).

use std::path::Path;
use std::time::Duration;

use integration::events::{Event, EventStream};
use integration::{Corrald, Ctr, IMAGE_REF, require_root};

const WAIT: Duration = Duration::from_secs(20);

/// Imports the busybox test image (unpacked into overlayfs) in `ctr`'s namespace.
fn import_image(ctr: &Ctr, dir: &Path) {
    let tar = dir.join("busybox.tar");
    if !tar.exists() {
        std::fs::write(&tar, integration::image::test_image_tar()).unwrap();
    }
    let out = ctr.ok(&["images", "import", tar.to_str().unwrap()]);
    assert!(out.contains(IMAGE_REF), "{out}");
}

/// Ids listed by `ctr containers ls -q [filters]`.
fn ids(ctr: &Ctr, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["containers", "ls", "-q"];
    args.extend_from_slice(filters);
    let mut v: Vec<String> = ctr.ok(&args).lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Snapshot keys of `ctr snapshots ls` (overlayfs).
fn snapshot_keys(ctr: &Ctr) -> Vec<String> {
    ctr.ok(&["snapshots", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `ctr containers info <id>` as JSON.
fn info(ctr: &Ctr, id: &str) -> serde_json::Value {
    let out = ctr.ok(&["containers", "info", id]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctr c info {id}: {e}: {out}"))
}

#[test]
fn create_ls_info_label_and_rm_with_ctr() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    import_image(ctr, tmp.path());
    let image_snapshots = snapshot_keys(ctr);
    assert!(!image_snapshots.is_empty(), "the import did not unpack");

    ctr.ok(&[
        "containers",
        "create",
        "--label",
        "team=a",
        "--env",
        "GREETING=hello",
        IMAGE_REF,
        "c1",
        "echo",
        "hi",
    ]);
    ctr.ok(&[
        "containers",
        "create",
        "--label",
        "team=b",
        "--runtime",
        "io.containerd.corral.v1",
        IMAGE_REF,
        "c2",
    ]);
    assert_eq!(ids(ctr, &[]), ["c1", "c2"]);
    assert_eq!(ids(ctr, &["labels.team==a"]), ["c1"]);
    assert_eq!(ids(ctr, &["runtime.name==io.containerd.corral.v1"]), ["c2"]);
    assert_eq!(ids(ctr, &["labels.team==a", "id==c2"]), ["c1", "c2"]);
    assert!(ids(ctr, &["labels.team==z"]).is_empty());
    let bad = ctr.run(&["containers", "ls", "id=="]);
    assert!(
        !bad.success() && bad.stderr.contains("invalid filter"),
        "{}",
        bad.describe()
    );

    // The full listing (ListStream) has image and runtime columns.
    let ls = ctr.ok(&["containers", "ls"]);
    let row = ls
        .lines()
        .find(|l| l.starts_with("c2 "))
        .unwrap_or_else(|| panic!("no c2 row: {ls}"));
    assert!(
        row.contains(IMAGE_REF) && row.contains("io.containerd.corral.v1"),
        "{ls}"
    );

    // Each container got an active snapshot keyed by its id.
    let keys = snapshot_keys(ctr);
    assert!(keys.contains(&"c1".to_string()) && keys.contains(&"c2".to_string()));

    let c1 = info(ctr, "c1");
    assert_eq!(c1["ID"], "c1");
    assert_eq!(c1["Image"], IMAGE_REF);
    assert_eq!(c1["Runtime"]["Name"], "io.containerd.runc.v2");
    assert_eq!(c1["Snapshotter"], "overlayfs");
    assert_eq!(c1["SnapshotKey"], "c1");
    assert_eq!(c1["Labels"]["team"], "a");
    assert_eq!(
        c1["Spec"]["process"]["args"],
        serde_json::json!(["echo", "hi"])
    );
    let env = c1["Spec"]["process"]["env"].to_string();
    assert!(env.contains("GREETING=hello"), "{env}");
    let (created, updated) = (c1["CreatedAt"].clone(), c1["UpdatedAt"].clone());
    assert!(
        created.as_str().is_some_and(|s| !s.starts_with("0001")),
        "server did not set CreatedAt: {created}"
    );

    // label: set one, remove another (empty value), the rest stays.
    ctr.ok(&["containers", "label", "c1", "x=y", "team="]);
    let c1 = info(ctr, "c1");
    assert_eq!(c1["Labels"]["x"], "y");
    assert!(c1["Labels"].get("team").is_none(), "{}", c1["Labels"]);
    assert_eq!(c1["CreatedAt"], created);
    assert_ne!(c1["UpdatedAt"], updated);
    assert_eq!(c1["Image"], IMAGE_REF, "label changed more than labels");
    assert_eq!(ids(ctr, &["labels.x==y"]), ["c1"]);

    // rm removes the record and the snapshot, and nothing of the image.
    ctr.ok(&["containers", "rm", "c1"]);
    assert_eq!(ids(ctr, &[]), ["c2"]);
    let keys = snapshot_keys(ctr);
    assert!(!keys.contains(&"c1".to_string()), "{keys:?}");
    for k in &image_snapshots {
        assert!(
            keys.contains(k),
            "image snapshot {k} went with the container"
        );
    }
    let gone = ctr.run(&["containers", "info", "c1"]);
    assert!(
        !gone.success() && gone.stderr.contains("not found"),
        "{}",
        gone.describe()
    );
    let again = ctr.run(&["containers", "rm", "c1"]);
    assert!(
        !again.success() && again.stderr.contains("not found"),
        "{}",
        again.describe()
    );
    ctr.ok(&["containers", "rm", "c2"]);
    assert!(ids(ctr, &[]).is_empty());
    assert_eq!(snapshot_keys(ctr), image_snapshots);
}

#[test]
fn duplicate_ids_are_refused_and_the_first_stays() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    import_image(ctr, tmp.path());
    ctr.ok(&["containers", "create", "--label", "n=1", IMAGE_REF, "dup"]);

    // From the image, ctr's snapshot Prepare is refused first; either way: already exists.
    let out = ctr.run(&["containers", "create", "--label", "n=2", IMAGE_REF, "dup"]);
    assert!(
        !out.success() && out.stderr.contains("already exists"),
        "{}",
        out.describe()
    );
    // With a host rootfs there is no snapshot: this is Containers.Create's own refusal.
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let out = ctr.run(&[
        "containers",
        "create",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "dup",
    ]);
    assert!(
        !out.success() && out.stderr.contains("container \"dup\": already exists"),
        "{}",
        out.describe()
    );
    let c = info(ctr, "dup");
    assert_eq!(c["Labels"]["n"], "1", "the first container was changed");
    assert_eq!(c["SnapshotKey"], "dup");
    assert!(snapshot_keys(ctr).contains(&"dup".to_string()));

    // An id that is not an identifier is refused by the service (ctr passes it through).
    let out = ctr.run(&[
        "containers",
        "create",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "a..b",
    ]);
    assert!(
        !out.success() && out.stderr.contains("container.ID"),
        "{}",
        out.describe()
    );
    assert_eq!(ids(ctr, &[]), ["dup"]);

    // A rootfs container has no snapshot; rm removes only the record.
    ctr.ok(&[
        "containers",
        "create",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "host",
    ]);
    let c = info(ctr, "host");
    assert!(c["SnapshotKey"].as_str().unwrap_or("").is_empty(), "{c}");
    assert_eq!(
        c["Spec"]["root"]["path"].as_str(),
        rootfs.to_str(),
        "{}",
        c["Spec"]
    );
    ctr.ok(&["containers", "rm", "host"]);
    assert_eq!(ids(ctr, &[]), ["dup"]);
}

#[test]
fn namespaces_do_not_see_each_others_containers() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let a = d.ctr();
    let b = d.ctr_in(&format!("{}-b", d.namespace()));
    let tmp = tempfile::tempdir().unwrap();
    import_image(a, tmp.path());
    a.ok(&["containers", "create", "--label", "ns=a", IMAGE_REF, "same"]);

    assert!(ids(&b, &[]).is_empty(), "b sees a's container");
    let out = b.run(&["containers", "info", "same"]);
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{}",
        out.describe()
    );
    let out = b.run(&["containers", "rm", "same"]);
    assert!(!out.success(), "{}", out.describe());
    let out = b.run(&["containers", "label", "same", "x=y"]);
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{}",
        out.describe()
    );

    // The same id in b is another container.
    import_image(&b, tmp.path());
    b.ok(&["containers", "create", "--label", "ns=b", IMAGE_REF, "same"]);
    assert_eq!(info(a, "same")["Labels"]["ns"], "a");
    assert_eq!(info(&b, "same")["Labels"]["ns"], "b");
    b.ok(&["containers", "rm", "same"]);
    assert!(ids(&b, &[]).is_empty());
    assert_eq!(ids(a, &[]), ["same"], "b's rm removed a's container");
    assert!(snapshot_keys(a).contains(&"same".to_string()));
    a.ok(&["containers", "rm", "same"]);
}

#[test]
fn ctr_events_show_container_create_update_delete() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let tmp = tempfile::tempdir().unwrap();
    import_image(ctr, tmp.path());
    let events = subscribed(&d);

    ctr.ok(&["containers", "create", IMAGE_REF, "ev1"]);
    ctr.ok(&["containers", "label", "ev1", "k=v"]);
    ctr.ok(&["containers", "rm", "ev1"]);

    let topics = [
        "/containers/create",
        "/containers/update",
        "/containers/delete",
    ];
    let seen = events.wait_for("the three container events", WAIT, |evs| {
        let mine: Vec<&Event> = evs
            .iter()
            .filter(|e| e.topic.starts_with("/containers/") && e.container_id() == Some("ev1"))
            .collect();
        (mine.len() >= 3).then(|| mine.into_iter().cloned().collect::<Vec<_>>())
    });
    assert_eq!(
        seen.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        topics
    );
    assert!(seen.iter().all(|e| e.namespace == d.namespace()));
    assert_eq!(seen[0].payload["image"], IMAGE_REF);
    assert_eq!(seen[0].payload["runtime"]["name"], "io.containerd.runc.v2");
    assert_eq!(seen[1].payload["labels"]["k"], "v");
    assert_eq!(seen[1].payload["snapshot_key"], "ev1");
    // ctr removed the snapshot before the container.
    let all = events.events();
    let pos = |f: &dyn Fn(&Event) -> bool| all.iter().position(f).unwrap();
    assert!(
        pos(&|e| e.topic == "/snapshot/remove" && e.payload["key"] == "ev1")
            < pos(&|e| e.topic == "/containers/delete")
    );
}

/// `ctr events` for `d`, returned once live (a namespace label marker came through).
fn subscribed(d: &Corrald) -> EventStream {
    let stream = EventStream::spawn(d.ctr(), &[]);
    let ns = d.namespace();
    for attempt in 0..40 {
        let marker = attempt.to_string();
        d.ctr().ok(&[
            "namespaces",
            "label",
            ns,
            &format!("corral.test/events-marker={marker}"),
        ]);
        let live = stream.try_wait_for(Duration::from_millis(500), |evs| {
            evs.iter()
                .any(|e| {
                    e.topic == "/namespaces/update"
                        && e.payload["labels"]["corral.test/events-marker"] == marker.as_str()
                })
                .then_some(())
        });
        if live.is_some() {
            return stream;
        }
    }
    panic!("`ctr events` did not deliver a marker within 20 s");
}

#[test]
fn containers_and_their_snapshots_survive_kill_9() {
    if !require_root() {
        return;
    }
    let mut d = Corrald::start();
    let tmp = tempfile::tempdir().unwrap();
    import_image(d.ctr(), tmp.path());
    d.ctr()
        .ok(&["containers", "create", "--label", "k=v", IMAGE_REF, "kept"]);
    d.kill_9();
    d.restart();
    let ctr = d.ctr();
    assert_eq!(ids(ctr, &[]), ["kept"]);
    let c = info(ctr, "kept");
    assert_eq!(c["Labels"]["k"], "v");
    assert_eq!(c["SnapshotKey"], "kept");
    // A GC run after the restart (an image rm with --sync runs one) keeps the container's
    // snapshot: containers are roots.
    ctr.ok(&["images", "rm", "--sync", IMAGE_REF]);
    assert!(
        snapshot_keys(ctr).contains(&"kept".to_string()),
        "GC removed a container's snapshot"
    );
    ctr.ok(&["containers", "rm", "kept"]);
    assert!(ids(ctr, &[]).is_empty());
}
