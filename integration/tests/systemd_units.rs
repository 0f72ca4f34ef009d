//! Running as a service: the systemd units `make install` puts in place, checked by systemd's
//! own `systemd-analyze verify` (systemd need not be running), and the readiness protocol the
//! units rely on (`Type=notify`): corrald and corral-cri say READY=1 only once they answer,
//! STOPPING=1 on SIGTERM.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration::corrald::corrald_path;
use integration::cri::corral_cri_path;
use integration::{Corrald, CriNode, cmd, require_root};

const UNITS: [&str; 2] = ["corrald", "corral-cri"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `systemd-analyze` on PATH. Absent: the test fails under CORRAL_REQUIRE_ROOT=1 (CI installs
/// it with `make deps`) and is skipped otherwise.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CORRAL_REQUIRE_ROOT").as_deref(),
            Ok("1"),
            "systemd-analyze not found: install Debian's systemd package (`make deps`)"
        );
        eprintln!("note: skipping, systemd-analyze not found (Debian package systemd)");
    }
    found
}

/// `[Section] Key=value` lines of a unit file; repeated keys keep every value.
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry((section.clone(), k.trim().to_string()))
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

/// `systemd-analyze verify` of `units`: (success, everything it printed). It reports most
/// mistakes (unknown keys, bad values) as warnings with exit status 0, so a clean unit is one
/// with no output at all.
fn verify(tool: &Path, units: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .arg("verify")
        .args(units)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

/// `make install-units` into a private prefix (no DESTDIR, so the units start the prefix's
/// binaries, which are links to the ones under test); systemd-analyze finds nothing to say
/// about them; each says what a container supervisor's unit must.
#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    for bin in [corrald_path(), corral_cri_path()] {
        assert!(
            bin.is_file(),
            "{} not built (cargo build -p supervisor -p cri)",
            bin.display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let out = Command::new("make")
        .arg("-C")
        .arg(workspace())
        .arg("install-units")
        .arg(format!("PREFIX={}", prefix.display()))
        .arg("DESTDIR=")
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install-units: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::os::unix::fs::symlink(corrald_path(), prefix.join("bin/corrald")).unwrap();
    std::os::unix::fs::symlink(corral_cri_path(), prefix.join("bin/corral-cri")).unwrap();

    let dir = prefix.join("lib/systemd/system");
    let paths: Vec<PathBuf> = UNITS
        .iter()
        .map(|u| dir.join(format!("{u}.service")))
        .collect();
    let (ok, said) = verify(&tool, &paths);
    assert!(ok, "systemd-analyze verify: {said}");

    let corrald = parse_unit(&std::fs::read_to_string(&paths[0]).unwrap());
    let cri = parse_unit(&std::fs::read_to_string(&paths[1]).unwrap());
    let get = |u: &BTreeMap<(String, String), Vec<String>>, s: &str, k: &str| {
        u.get(&(s.to_string(), k.to_string()))
            .cloned()
            .unwrap_or_default()
            .join(" ")
    };
    let exec = |name: &str| format!("{}", prefix.join("bin").join(name).display());
    for (key, want) in [
        ("ExecStart", exec("corrald")),
        ("Type", "notify".into()),
        // Containers (in the shims) outlive a restart of the daemon.
        ("KillMode", "process".into()),
        ("Delegate", "yes".into()),
        ("OOMScoreAdjust", "-999".into()),
        ("LimitNOFILE", "infinity".into()),
        ("Restart", "always".into()),
    ] {
        assert_eq!(get(&corrald, "Service", key), want, "corrald.service {key}");
    }
    assert_eq!(get(&corrald, "Install", "WantedBy"), "multi-user.target");
    for (key, want) in [
        ("ExecStart", exec("corral-cri")),
        ("Type", "notify".into()),
        ("OOMScoreAdjust", "-999".into()),
        ("Restart", "always".into()),
    ] {
        assert_eq!(get(&cri, "Service", key), want, "corral-cri.service {key}");
    }
    let limit: u64 = get(&cri, "Service", "LimitNOFILE").parse().unwrap();
    assert!(limit >= 1 << 20, "corral-cri.service LimitNOFILE {limit}");
    assert_eq!(get(&cri, "Unit", "Requires"), "corrald.service");
    assert!(
        get(&cri, "Unit", "After")
            .split_whitespace()
            .any(|u| u == "corrald.service"),
        "corral-cri.service must start after corrald"
    );

    // The check can fail: a typo in a value, and a binary that is not there.
    let broken = dir.join("corrald.service");
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(&broken, text.replace("KillMode=process", "KillMode=proces")).unwrap();
    let (ok, said) = verify(&tool, &paths);
    assert!(!ok && said.contains("proces"), "{said}");
    std::fs::write(&broken, &text).unwrap();
    std::fs::remove_file(prefix.join("bin/corrald")).unwrap();
    let (ok, said) = verify(&tool, &paths);
    assert!(!ok && said.contains("bin/corrald"), "{said}");
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// The next datagram; panics after a minute without one.
    fn next(&self, what: &str) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({what}): {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// A process of the test's, killed on drop (before the daemon guards remove its paths).
struct Running(Option<Child>);

impl Running {
    fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        let child = self.0.take().unwrap();
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let (status, timed_out) =
            cmd::wait_with_timeout(child, Duration::from_secs(20)).expect("wait for the daemon");
        assert!(!timed_out, "the daemon did not exit on SIGTERM");
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_notifying(mut c: Command, notify: &NotifySocket, log: &Path) -> Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    c.env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd::die_with_parent(&mut c);
    Running(Some(c.spawn().expect("start the daemon")))
}

/// READY=1 means serving: the first call after it is answered; STOPPING=1 on SIGTERM. (That
/// its shims do not inherit NOTIFY_SOCKET is `notify_socket_inherited`'s.)
#[test]
fn corrald_tells_systemd_when_it_serves_and_stops() {
    if !require_root() {
        return;
    }
    let mut d = Corrald::start();
    d.kill_9();
    let notify = NotifySocket::new();
    let mut daemon = spawn_notifying(d.command(), &notify, &d.log_path());
    assert_eq!(notify.next("corrald READY"), "READY=1");
    let out = d.ctr().run(&["version"]);
    assert!(out.success(), "not serving at READY=1: {}", out.describe());
    assert!(daemon.sigterm_and_wait().success());
    assert_eq!(notify.next("corrald STOPPING"), "STOPPING=1");
}

#[test]
fn corral_cri_tells_systemd_when_it_serves_and_stops() {
    if !require_root() {
        return;
    }
    let mut node = CriNode::start();
    node.kill_9();
    let notify = NotifySocket::new();
    let mut daemon = spawn_notifying(node.command(), &notify, &node.log_path());
    assert_eq!(notify.next("corral-cri READY"), "READY=1");
    let out = node.crictl().run(&["version"]);
    assert!(out.success(), "not serving at READY=1: {}", out.describe());
    assert!(daemon.sigterm_and_wait().success());
    assert_eq!(notify.next("corral-cri STOPPING"), "STOPPING=1");
}
