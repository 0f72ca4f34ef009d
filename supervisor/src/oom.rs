//! OOM kills a shim did not report, reported before the task's exit.
//!
//! A shim learns of OOM kills from an eventfd on the container's memory cgroup, which it arms
//! only after `runc start` returned; on cgroup v1 such an eventfd reports only later OOMs. A
//! process that outgrows its limit within milliseconds (`docker run -m 8m` of a memory hog) is
//! killed before that: containerd's runc shim (and 1.6 itself) then never publishes /tasks/oom,
//! and dockerd, which sets `OOMKilled` only from a /tasks/oom that precedes the exit, reports a
//! plain exit 137 (2 to 4 runs in 10 on this machine, with containerd as with corrald).
//!
//! The kernel counts every OOM kill in the cgroup (`oom_kill` in v1's `memory.oom_control`,
//! v2's `memory.events`) before the killed process is gone. So when a shim forwards the exit of
//! a task's init and no /tasks/oom came for that task since its start, corrald reads the count
//! from the cgroup of the bundle's `linux.cgroupsPath` (still there: the shim removes it only on
//! Delete) and, if it is not zero, publishes /tasks/oom first. A shim's own /tasks/oom that
//! arrives after one of ours is the same kill and is dropped.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use prost_types::Any;
use protocol::grpc::any;
use protocol::grpc::containerd::events as ev;
use protocol::grpc::containerd::services::events::v1::Envelope;

use crate::events::event_field;

/// What was reported for one task since its start.
#[derive(Default, Debug)]
struct Seen {
    /// The shim published /tasks/oom.
    by_shim: bool,
    /// We published one for it.
    by_us: bool,
}

pub struct OomCheck {
    /// `<state>/io.containerd.runtime.v2.task`; unset (no checks) until the daemon sets it.
    tasks_dir: OnceLock<PathBuf>,
    /// Where the cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    cgroup_root: PathBuf,
    seen: Mutex<HashMap<(String, String), Seen>>,
}

impl Default for OomCheck {
    fn default() -> Self {
        OomCheck::new(Path::new("/sys/fs/cgroup"))
    }
}

impl OomCheck {
    pub fn new(cgroup_root: &Path) -> OomCheck {
        OomCheck {
            tasks_dir: OnceLock::new(),
            cgroup_root: cgroup_root.to_path_buf(),
            seen: Mutex::default(),
        }
    }

    /// Enables the checks, with the bundles under `dir/<ns>/<id>`.
    pub fn set_tasks_dir(&self, dir: PathBuf) {
        let _ = self.tasks_dir.set(dir);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The envelopes to pass on, in order, for `env` forwarded by a shim: `env` alone, nothing
    /// (a shim's late report of an OOM we reported), or our /tasks/oom and then `env`.
    pub async fn filter(&self, env: Envelope) -> Vec<Envelope> {
        let field = |name: &str| {
            env.event
                .as_ref()
                .and_then(|e| event_field(e, &[name.to_string()]))
        };
        let Some(container) = field("container_id") else {
            return vec![env];
        };
        let key = (env.namespace.clone(), container.clone());
        // Exit and delete carry the process id; the init's is the container id.
        let is_init = || field("id").is_none_or(|id| id == container);
        match env.topic.as_str() {
            "/tasks/start" => {
                self.lock().remove(&key);
            }
            "/tasks/delete" if is_init() => {
                self.lock().remove(&key);
            }
            "/tasks/oom" => {
                let mut seen = self.lock();
                let s = seen.entry(key).or_default();
                if s.by_us {
                    log::debug!("task {}/{container}: OOM already reported", env.namespace);
                    return Vec::new();
                }
                s.by_shim = true;
            }
            "/tasks/exit" if is_init() => {
                let reported = self.lock().get(&key).is_some_and(|s| s.by_shim || s.by_us);
                let Some(dir) = self.tasks_dir.get() else {
                    return vec![env];
                };
                if reported {
                    return vec![env];
                }
                let bundle = dir.join(&env.namespace).join(&container);
                let root = self.cgroup_root.clone();
                let kills = tokio::task::spawn_blocking(move || oom_kills(&root, &bundle))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                if kills == 0 {
                    return vec![env];
                }
                self.lock().entry(key).or_default().by_us = true;
                log::info!(
                    "task {}/{container}: its cgroup counted {kills} OOM kill(s) its shim did not \
                     report; publishing /tasks/oom before its exit",
                    env.namespace
                );
                let oom = Envelope {
                    timestamp: env.timestamp,
                    namespace: env.namespace.clone(),
                    topic: "/tasks/oom".into(),
                    event: Some(oom_event(&container)),
                };
                return vec![oom, env];
            }
            _ => {}
        }
        vec![env]
    }
}

fn oom_event(container: &str) -> Any {
    any::pack(
        any::TASK_OOM,
        &ev::TaskOom {
            container_id: container.to_string(),
        },
    )
}

/// OOM kills counted in the memory cgroup of the task whose bundle is `bundle`; `None` when
/// its spec, cgroup path or counter cannot be read.
pub fn oom_kills(cgroup_root: &Path, bundle: &Path) -> Option<u64> {
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).ok()?).ok()?;
    let rel = cgroup_dir(spec.pointer("/linux/cgroupsPath")?.as_str()?)?;
    // cgroup v1 (alone or hybrid): the memory controller's own hierarchy.
    let v1 = cgroup_root
        .join("memory")
        .join(&rel)
        .join("memory.oom_control");
    let v2 = cgroup_root.join(&rel).join("memory.events");
    let text = fs::read_to_string(v1)
        .or_else(|_| fs::read_to_string(v2))
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// The cgroup directory, relative to a hierarchy's root, of an OCI `linux.cgroupsPath`: an
/// absolute path (cgroupfs driver), or systemd's `slice:prefix:name`, which runc makes
/// `<slice path>/<prefix>-<name>.scope` (`a-b.slice` lives in `a.slice/a-b.slice`). Relative
/// cgroupfs paths depend on the caller's cgroup: `None`.
pub fn cgroup_dir(path: &str) -> Option<PathBuf> {
    if path.contains("..") {
        return None;
    }
    if let Some(abs) = path.strip_prefix('/') {
        return (!abs.contains(':')).then(|| PathBuf::from(abs));
    }
    let mut parts = path.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() {
        return None;
    }
    let mut dir = PathBuf::new();
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    if slice != "-.slice" {
        let stem = slice.strip_suffix(".slice")?;
        let mut acc = String::new();
        for part in stem.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            dir.push(format!("{acc}.slice"));
        }
    }
    if name.ends_with(".slice") {
        dir.push(name);
    } else if prefix.is_empty() {
        dir.push(format!("{name}.scope"));
    } else {
        dir.push(format!("{prefix}-{name}.scope"));
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn envelope(topic: &str, event: Any) -> Envelope {
        Envelope {
            timestamp: Some(Timestamp {
                seconds: 5,
                nanos: 6,
            }),
            namespace: "moby".into(),
            topic: topic.into(),
            event: Some(event),
        }
    }

    fn exit(container: &str, id: &str) -> Envelope {
        envelope(
            "/tasks/exit",
            any::pack(
                any::TASK_EXIT,
                &ev::TaskExit {
                    container_id: container.into(),
                    id: id.into(),
                    exit_status: 137,
                    ..Default::default()
                },
            ),
        )
    }

    fn oom(container: &str) -> Envelope {
        envelope("/tasks/oom", oom_event(container))
    }

    fn start(container: &str) -> Envelope {
        envelope(
            "/tasks/start",
            any::pack(
                any::TASK_START,
                &ev::TaskStart {
                    container_id: container.into(),
                    pid: 1,
                },
            ),
        )
    }

    fn topics(envs: &[Envelope]) -> Vec<&str> {
        envs.iter().map(|e| e.topic.as_str()).collect()
    }

    /// A v1 memory hierarchy under `root` with container `c`'s cgroup at `/docker/c` having
    /// counted `kills` OOM kills, and its bundle under `tasks/moby/c`.
    fn setup(root: &Path, c: &str, kills: u64) -> OomCheck {
        let cg = root.join("cg/memory/docker").join(c);
        fs::create_dir_all(&cg).unwrap();
        fs::write(
            cg.join("memory.oom_control"),
            format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"),
        )
        .unwrap();
        let bundle = root.join("tasks/moby").join(c);
        fs::create_dir_all(&bundle).unwrap();
        let spec = serde_json::json!({"linux": {"cgroupsPath": format!("/docker/{c}")}});
        fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        let check = OomCheck::new(&root.join("cg"));
        check.set_tasks_dir(root.join("tasks"));
        check
    }

    #[tokio::test]
    async fn an_unreported_oom_kill_goes_out_before_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let check = setup(dir.path(), "c1", 1);
        check.filter(start("c1")).await;
        let out = check.filter(exit("c1", "c1")).await;
        assert_eq!(topics(&out), ["/tasks/oom", "/tasks/exit"]);
        assert_eq!(out[0].timestamp, out[1].timestamp);
        assert_eq!(
            event_field(out[0].event.as_ref().unwrap(), &["container_id".into()]).as_deref(),
            Some("c1")
        );
        // The shim's own report of that kill, late: dropped.
        assert!(check.filter(oom("c1")).await.is_empty());
        // A new start of the same id begins afresh.
        check.filter(start("c1")).await;
        assert_eq!(topics(&check.filter(oom("c1")).await), ["/tasks/oom"]);
    }

    #[tokio::test]
    async fn a_reported_or_absent_kill_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let check = setup(dir.path(), "c1", 1);
        assert_eq!(topics(&check.filter(oom("c1")).await), ["/tasks/oom"]);
        assert_eq!(
            topics(&check.filter(exit("c1", "c1")).await),
            ["/tasks/exit"]
        );

        let check = setup(dir.path(), "c2", 0);
        assert_eq!(
            topics(&check.filter(exit("c2", "c2")).await),
            ["/tasks/exit"]
        );
        // An exec's exit is not the container's.
        let check = setup(dir.path(), "c3", 2);
        assert_eq!(
            topics(&check.filter(exit("c3", "exec1")).await),
            ["/tasks/exit"]
        );
        // No bundle, or checks not enabled: unchanged.
        assert_eq!(
            topics(&check.filter(exit("nobundle", "nobundle")).await),
            ["/tasks/exit"]
        );
        let off = OomCheck::new(&dir.path().join("cg"));
        assert_eq!(topics(&off.filter(exit("c3", "c3")).await), ["/tasks/exit"]);
    }

    #[test]
    fn reads_cgroup_v2_counters_too() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cg/k8s.slice/cri-x.scope");
        fs::create_dir_all(&cg).unwrap();
        fs::write(
            cg.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let bundle = dir.path().join("b");
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            r#"{"linux":{"cgroupsPath":"k8s.slice:cri:x"}}"#,
        )
        .unwrap();
        assert_eq!(oom_kills(&dir.path().join("cg"), &bundle), Some(1));
        fs::write(bundle.join("config.json"), r#"{"linux":{}}"#).unwrap();
        assert_eq!(oom_kills(&dir.path().join("cg"), &bundle), None);
    }

    #[test]
    fn cgroup_paths_as_runc_makes_them() {
        let p = |s: &str| cgroup_dir(s).map(|p| p.display().to_string());
        assert_eq!(p("/docker/abc").as_deref(), Some("docker/abc"));
        assert_eq!(
            p("system.slice:docker:abc").as_deref(),
            Some("system.slice/docker-abc.scope")
        );
        assert_eq!(
            p("kubepods-burstable-pod1.slice:cri-containerd:abc").as_deref(),
            Some(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            p(":docker:abc").as_deref(),
            Some("system.slice/docker-abc.scope")
        );
        assert_eq!(p("-.slice:p:x").as_deref(), Some("p-x.scope"));
        assert_eq!(p("relative/path"), None);
        assert_eq!(p("/a/../b"), None);
        assert_eq!(p("a:b:c:d"), None);
    }
}
