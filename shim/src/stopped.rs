//! Deleting a stopped container without `runc delete`.
//!
//! For a container whose init has exited, `runc delete` (1.1, `destroy` in
//! libcontainer/state_linux.go) does four things: it kills what is left in the container's
//! cgroup when the container shares a PID namespace, removes the container's cgroups (the
//! `cgroup_paths` of its state file, through systemd when the systemd driver made them),
//! removes its directory under runc's root, and runs the poststop hooks. For the common
//! container, with a PID namespace of its own, cgroupfs cgroups and no poststop hook, that is
//! some rmdirs and one directory: done here, it spares a runc process (a Go runtime start) on
//! every container delete.
//!
//! Anything else goes to `runc delete`, and so does any state file this module does not read
//! as runc 1.x writes it. [`delete_stopped`] answers `Ok(false)` for those before changing
//! anything.
//!
//! Why nothing is left to kill: when the init of a PID namespace exits, the kernel kills every
//! other process in it and reaps them before the init's own exit completes, and the shim has
//! reaped the init before a delete. A cgroup that is still busy (a process moved into it from
//! outside) is retried briefly, as runc does, and then handed to `runc delete`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// runc's state file, in the container's directory under runc's root.
const STATE_FILE: &str = "state.json";
/// Retries of a busy cgroup, and the first pause between them (doubled each time).
const BUSY_RETRIES: u32 = 4;
const BUSY_PAUSE: Duration = Duration::from_millis(5);

/// What runc would remove for the stopped container: its cgroup directories and its state
/// directory. `None` when the state file asks for more than that (or is not runc's).
#[derive(Debug, PartialEq)]
struct Plan {
    cgroups: Vec<PathBuf>,
    dir: PathBuf,
}

/// Deletes the stopped container `id` of the runc root `root` the way `runc delete` would,
/// when that is only removing its cgroups and its directory. `Ok(false)`: nothing was done,
/// `runc delete` must do it (no state file, a shared PID namespace, the systemd driver,
/// poststop hooks, a cgroup that stays busy, ...). An error names the path that failed.
pub async fn delete_stopped(root: &Path, id: &str) -> io::Result<bool> {
    let dir = root.join(id);
    let state = match std::fs::read(dir.join(STATE_FILE)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(path_error(&dir.join(STATE_FILE), e)),
    };
    let Some(plan) = plan(&state, dir) else {
        return Ok(false);
    };
    for cg in &plan.cgroups {
        if !remove_cgroup(cg).await? {
            log::debug!(
                "cgroup {} of {id} stays busy: runc delete takes over",
                cg.display()
            );
            return Ok(false);
        }
    }
    match std::fs::remove_dir_all(&plan.dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(path_error(&plan.dir, e)),
    }
}

/// Reads runc's state file; `None` unless deleting means only removing cgroupfs directories
/// and `dir`.
fn plan(state: &[u8], dir: PathBuf) -> Option<Plan> {
    let s: Value = serde_json::from_slice(state).ok()?;
    let config = s.get("config")?;
    // Rootless runc ignores cgroup errors and may have made none; it keeps its own rules.
    if s.get("rootless")?.as_bool()? {
        return None;
    }
    if s.get("intel_rdt_path")
        .is_some_and(|p| p.as_str() != Some(""))
    {
        return None;
    }
    if config.get("cgroups")?.get("Systemd")?.as_bool()? {
        return None;
    }
    // A PID namespace of its own (no path): nothing outlives the init.
    let own_pid_ns = config.get("namespaces")?.as_array()?.iter().any(|n| {
        n.get("type").and_then(Value::as_str) == Some("NEWPID")
            && n.get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
    });
    if !own_pid_ns {
        return None;
    }
    match config.get("Hooks") {
        None | Some(Value::Null) => {}
        Some(hooks) => {
            let poststop = hooks.as_object()?.get("poststop");
            if !poststop.is_none_or(|h| h.is_null() || h.as_array().is_some_and(Vec::is_empty)) {
                return None;
            }
        }
    }
    let mut cgroups = Vec::new();
    for path in s.get("cgroup_paths")?.as_object()?.values() {
        let path = PathBuf::from(path.as_str()?);
        // Only directories below a cgroup mount, never a hierarchy's root.
        if !path.is_absolute()
            || !path.starts_with("/sys/fs/cgroup")
            || path.components().count() < 6
        {
            return None;
        }
        cgroups.push(path);
    }
    cgroups.sort();
    cgroups.dedup();
    Some(Plan { cgroups, dir })
}

/// Removes cgroup `dir` and any cgroup below it, deepest first. `Ok(false)` when one stays
/// busy (a process in it) after the retries; gone already is done.
async fn remove_cgroup(dir: &Path) -> io::Result<bool> {
    let mut pause = BUSY_PAUSE;
    for attempt in 0..=BUSY_RETRIES {
        match remove_tree(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < BUSY_RETRIES => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
            Err(e) => return Err(path_error(dir, e)),
        }
    }
    Ok(false)
}

/// rmdir of `dir` after its subdirectories (a cgroup's files go with it).
fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn path_error(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file shaped as runc 1.1 writes it, with what the tests vary.
    fn state(pid_ns_path: &str, systemd: bool, poststop: Value, rootless: bool) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "c1",
            "init_process_pid": 42,
            "rootless": rootless,
            "intel_rdt_path": "",
            "cgroup_paths": {
                "": "/sys/fs/cgroup/unified/default/c1",
                "memory": "/sys/fs/cgroup/memory/default/c1",
                "cpu": "/sys/fs/cgroup/cpu/default/c1",
                "cpuacct": "/sys/fs/cgroup/cpu/default/c1",
            },
            "config": {
                "namespaces": [
                    { "type": "NEWPID", "path": pid_ns_path },
                    { "type": "NEWNS", "path": "" },
                ],
                "cgroups": { "path": "/default/c1", "Systemd": systemd },
                "Hooks": { "poststop": poststop, "prestart": null },
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_plain_container_is_its_cgroups_and_directory() {
        let p = plan(&state("", false, Value::Null, false), "/run/r/c1".into()).unwrap();
        assert_eq!(
            p,
            Plan {
                cgroups: vec![
                    "/sys/fs/cgroup/cpu/default/c1".into(),
                    "/sys/fs/cgroup/memory/default/c1".into(),
                    "/sys/fs/cgroup/unified/default/c1".into(),
                ],
                dir: "/run/r/c1".into(),
            }
        );
        let empty_hooks = state("", false, serde_json::json!([]), false);
        assert!(plan(&empty_hooks, "/run/r/c1".into()).is_some());
    }

    #[test]
    fn what_runc_does_more_is_left_to_runc() {
        let hook = serde_json::json!([{ "path": "/bin/true" }]);
        for (what, s) in [
            (
                "shared PID namespace",
                state("/proc/7/ns/pid", false, Value::Null, false),
            ),
            ("systemd driver", state("", true, Value::Null, false)),
            ("poststop hook", state("", false, hook, false)),
            ("rootless", state("", false, Value::Null, true)),
            ("not JSON", b"{".to_vec()),
            (
                "another runtime's state",
                br#"{"id":"c1","status":"stopped"}"#.to_vec(),
            ),
        ] {
            assert_eq!(plan(&s, "/run/r/c1".into()), None, "{what}");
        }
        let mut s: Value = serde_json::from_slice(&state("", false, Value::Null, false)).unwrap();
        s["cgroup_paths"]["memory"] = "/sys/fs/cgroup/memory".into();
        assert_eq!(
            plan(&serde_json::to_vec(&s).unwrap(), "/run/r/c1".into()),
            None,
            "a hierarchy's root is never removed"
        );
        s["cgroup_paths"]["memory"] = "/etc/default/c1".into();
        assert_eq!(
            plan(&serde_json::to_vec(&s).unwrap(), "/run/r/c1".into()),
            None
        );
    }

    #[tokio::test]
    async fn no_state_file_is_runcs_to_answer() {
        let root = tempfile::tempdir().unwrap();
        assert!(!delete_stopped(root.path(), "c1").await.unwrap());
    }

    #[test]
    fn trees_are_removed_deepest_first_and_gone_is_done() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("c1");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::create_dir_all(top.join("c")).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        remove_tree(&top).unwrap();
    }
}
