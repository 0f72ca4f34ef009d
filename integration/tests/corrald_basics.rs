//! corrald driven by the real ctr 1.6: version, namespaces, start-up guards.

use integration::{Corrald, require_root};

#[test]
fn version_and_namespaces() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let ctr = d.ctr();
    let v = ctr.ok(&["version"]);
    assert!(v.contains("corral"), "{v}");
    // The uuid persists across restarts.
    let uuid = |v: &str| {
        v.lines()
            .find_map(|l| l.trim().strip_prefix("UUID: "))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let u1 = uuid(&v);
    assert!(!u1.is_empty(), "{v}");

    ctr.ok(&["namespaces", "create", "extra", "team=a"]);
    let ls = ctr.ok(&["namespaces", "ls"]);
    assert!(ls.contains("extra") && ls.contains("team=a"), "{ls}");
    let again = ctr.run(&["namespaces", "create", "extra"]);
    assert!(
        !again.success() && again.stderr.contains("already exists"),
        "{}",
        again.describe()
    );
    ctr.ok(&["namespaces", "label", "extra", "team=b"]);
    assert!(ctr.ok(&["namespaces", "ls"]).contains("team=b"));
    let bad = ctr.run(&["namespaces", "create", "bad/name"]);
    assert!(
        !bad.success() && bad.stderr.contains("invalid"),
        "{}",
        bad.describe()
    );
    ctr.ok(&["namespaces", "rm", "extra"]);
    assert!(!ctr.ok(&["namespaces", "ls", "-q"]).contains("extra"));

    let mut d = d;
    d.restart();
    assert_eq!(uuid(&d.ctr().ok(&["version"])), u1);
}

#[test]
fn second_daemon_on_the_same_root_is_refused() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    // Same root, another socket: the root lock must stop it before it touches anything.
    let out = std::process::Command::new(integration::corrald::corrald_path())
        .arg("--root")
        .arg(d.root())
        .arg("--state")
        .arg(d.state())
        .arg("--address")
        .arg(d.root().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another corrald") && err.contains(&d.pid().unwrap().to_string()),
        "{err}"
    );
    // The first one still serves.
    d.ctr().ok(&["version"]);
}
