//! Network namespaces for real (root): create, enter, list, remove, and what removal does to
//! copies of the mount in other mount namespaces.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri::network::NetNs;
use cri::network::netns;
use integration::require_root;

fn thread_ns() -> PathBuf {
    fs::read_link("/proc/thread-self/ns/net").unwrap()
}

/// Interface names of the calling thread's network namespace.
fn interfaces() -> Vec<String> {
    let text = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    text.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn create_enter_list_remove() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("netns");
    let a = dir.join("pod-a");
    let before = thread_ns();
    let ns = NetNs::create(&a).unwrap();
    let _guard = Removed(vec![a.clone()]);
    assert_eq!(
        thread_ns(),
        before,
        "the caller's thread stays where it was"
    );
    assert!(netns::is_netns(&a).unwrap());
    assert_eq!(netns::list(&dir).unwrap(), vec![a.clone()]);
    assert!(netns::list(&root.path().join("none")).unwrap().is_empty());

    let e = NetNs::create(&a).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("pod-a"), "{e}");

    let (inside, ifaces) = ns.run(|| (thread_ns(), interfaces())).unwrap();
    assert_ne!(inside, before);
    assert_eq!(
        ifaces,
        vec!["lo".to_string()],
        "a fresh namespace has only lo"
    );
    // The namespace the file pins is the one the thread entered.
    let ino = fs::metadata(&a).unwrap().ino();
    assert_eq!(inside, PathBuf::from(format!("net:[{ino}]")));

    // A child entering it before exec (nsenter --net).
    let mut cmd = Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    netns::enter_on_exec(&mut cmd, &a).unwrap();
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("net:[{ino}]")
    );

    // A panic inside comes back out.
    let caught = std::panic::catch_unwind(|| ns.run(|| panic!("inside")));
    assert!(caught.is_err());

    // A leftover file with nothing mounted (crash between create's steps) is listed, is not a
    // namespace, and removes fine.
    let b = dir.join("pod-b");
    fs::write(&b, "").unwrap();
    assert_eq!(netns::list(&dir).unwrap(), vec![a.clone(), b.clone()]);
    assert!(!netns::is_netns(&b).unwrap());
    assert!(NetNs::open(&b).is_err());
    assert!(netns::run_in(&b, || ()).is_err());
    NetNs::remove(&b).unwrap();

    NetNs::remove(&a).unwrap();
    assert!(!a.exists());
    assert!(netns::list(&dir).unwrap().is_empty());
    NetNs::remove(&a).unwrap();
    assert!(netns::run_in(&a, || ()).is_err());
}

#[test]
fn tokio_workers_never_change_namespace() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("netns/x");
    let _guard = Removed(vec![p.clone()]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let worker = thread_ns();
        let ns = NetNs::create(&p).unwrap();
        let inside = ns.run_async(thread_ns).await.unwrap();
        assert_ne!(inside, worker);
        assert_eq!(thread_ns(), worker);
        // Every worker is still in the host namespace.
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(tokio::spawn(async { thread_ns() }).await.unwrap());
        }
        assert!(seen.iter().all(|s| *s == worker), "{seen:?}");
    });
}

/// The propagation finding of `netns.rs`: whatever copies of the bind mount exist in other
/// mount namespaces — a peer that received it through a shared parent, a private copy made
/// while the pod lived — `remove` (umount MNT_DETACH + unlink) leaves none behind.
#[test]
fn removal_reaches_copies_in_other_mount_namespaces() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("netns");
    fs::create_dir(&dir).unwrap();
    // The parent as systemd leaves `/`: shared. Peers of it receive the mounts made inside.
    let _shared = SelfBind::new(&dir);
    let peer = Sleeper::start("unchanged");
    let p = dir.join("pod");
    let _guard = Removed(vec![p.clone()]);
    NetNs::create(&p).unwrap();
    // And a namespace made afterwards with private propagation: a copy no unmount reaches.
    let private = Sleeper::start("private");
    let shows = |s: &Sleeper| mountinfo(s.pid()).contains(&format!(" {} ", p.display()));
    assert!(shows(&peer), "the peer received the mount");
    assert!(shows(&private), "the private namespace copied it");

    NetNs::remove(&p).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while (shows(&peer) || shows(&private)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!shows(&peer), "{}", mountinfo(peer.pid()));
    assert!(!shows(&private), "{}", mountinfo(private.pid()));
}

fn mountinfo(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default()
}

/// `unshare -m --propagation <p> sleep`, up and in its own mount namespace once `start`
/// returns; killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start(propagation: &str) -> Sleeper {
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", propagation, "sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return Sleeper(child);
            }
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("unshare exited {st}: {err}");
            }
            assert!(Instant::now() < deadline, "unshare did not exec sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mount --bind dir dir; mount --make-shared dir`, undone on drop.
struct SelfBind(PathBuf);

impl SelfBind {
    fn new(dir: &Path) -> SelfBind {
        use nix::mount::{MsFlags, mount};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let bound = SelfBind(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        bound
    }
}

impl Drop for SelfBind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes namespaces a failed test left.
struct Removed(Vec<PathBuf>);

impl Drop for Removed {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = NetNs::remove(p);
        }
    }
}

/// A pod in a user namespace: runc makes the network namespace, corral-cri pins it by pid.
/// The pin is that process's namespace, outlives the process, and goes with `remove`.
#[test]
fn pin_a_process_namespace_and_remove_it() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("netns/pod-u");
    // A process in a user namespace of its own and a network namespace that namespace owns,
    // as runc makes a pause: `unshare -U -n` keeps both.
    let mut child = Command::new("unshare")
        .args(["-U", "-n", "sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(&mut child);
    let pid = _kill.0.id();
    let proc_ns = format!("/proc/{pid}/ns/net");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(&proc_ns).ok() == Some(thread_ns()) {
        assert!(
            Instant::now() < deadline,
            "unshare never left our namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ns = NetNs::pin(pid, &path).unwrap();
    let _guard = Removed(vec![path.clone()]);
    assert!(netns::is_netns(&path).unwrap());
    assert_eq!(
        fs::metadata(&path).unwrap().ino(),
        fs::metadata(&proc_ns).unwrap().ino(),
        "the pin is the process's namespace"
    );
    let e = NetNs::pin(pid, &path).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    // A process that is gone cannot be pinned, and leaves no file behind.
    let bad = root.path().join("netns/pod-gone");
    let e = NetNs::pin(u32::MAX / 2, &bad).unwrap_err();
    assert!(
        e.to_string()
            .contains("pin the network namespace of process"),
        "{e}"
    );
    assert!(!bad.exists());
    NetNs::remove(ns.path()).unwrap();
    assert!(!path.exists());
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
