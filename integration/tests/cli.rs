//! The `corral` client end to end against a private corrald and our shim: run (exit codes,
//! output, stdin, a terminal), detached containers with capped logs, exec, ps, stop (SIGTERM
//! honoured, SIGKILL after the timeout), kill, rm; images import/ls/inspect/export/rm across
//! namespaces; one-line errors; JSON listings.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::cli::Corral;
use integration::image::{IMAGE_REF, ImageBlobs, busybox_path, image_blobs, test_image_tar};
use integration::{Containerd, Corrald, Target, require_root, wait_until};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// corrald with our shim, the test image imported (by ctr), and a corral client with a
/// private log directory.
struct Setup {
    ctrd: Containerd,
    corral: Corral,
    _logs: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    if !require_root() {
        return None;
    }
    let ctrd = Containerd::start(Target::CORRAL);
    let logs = tempfile::tempdir().unwrap();
    let corral = Corral::new(&ctrd.address(), ctrd.namespace(), logs.path());
    Some(Setup {
        ctrd,
        corral,
        _logs: logs,
    })
}

impl Setup {
    fn id(&self, prefix: &str) -> String {
        self.ctrd.new_id(prefix)
    }

    fn ps(&self) -> Vec<Value> {
        let out = self.corral.ok(&["ps", "--output", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v.as_array().unwrap().clone()
    }

    fn ps_row(&self, id: &str) -> Option<Value> {
        self.ps().into_iter().find(|r| r["id"] == id)
    }

    /// `corral run -d` of `sh -c script` (which prints `ready` once its traps are set), then
    /// waits for `ready` in the container's log.
    fn run_detached_until_ready(&self, id: &str, script: &str) {
        self.corral
            .ok(&["run", "-d", "--name", id, IMAGE_REF, "sh", "-c", script]);
        wait_until("ready", Duration::from_secs(20), || {
            fs::read_to_string(self.corral.log_path(id))
                .unwrap_or_default()
                .contains("ready")
                .then_some(())
        });
    }

    fn wait_status(&self, id: &str, status: &str) -> Value {
        wait_until(
            &format!("{id} is {status}"),
            Duration::from_secs(20),
            || self.ps_row(id).filter(|r| r["status"] == status),
        )
    }
}

fn assert_one_line_error(out: &integration::cli::CorralOutput, needle: &str) {
    assert!(!out.success(), "{}", out.describe());
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{}", out.describe());
    assert!(err.starts_with("corral: "), "{}", out.describe());
    assert!(
        err.contains(needle),
        "{needle:?} not in: {}",
        out.describe()
    );
}

#[test]
fn run_rm_returns_exit_code_and_output() {
    let Some(s) = setup() else { return };
    let id = s.id("rm");
    let out = s.corral.run(&[
        "run",
        "--rm",
        "--name",
        &id,
        IMAGE_REF,
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 7",
    ]);
    assert_eq!(out.code(), Some(7), "{}", out.describe());
    assert_eq!(out.stdout(), "to-out\n");
    assert_eq!(out.stderr(), "to-err\n");
    assert!(s.ps_row(&id).is_none(), "--rm left the container");
    // The image's Cmd runs when no command is given; --env reaches the process.
    let id2 = s.id("env");
    let out = s.corral.run(&[
        "run",
        "--rm",
        "--name",
        &id2,
        "--env",
        "GREETING=hello",
        "--workdir",
        "/tmp",
        IMAGE_REF,
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u)",
    ]);
    assert_eq!(out.stdout(), "hello /tmp 0\n", "{}", out.describe());
    // A bind mount, read-only, and --user.
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("f"), "from-host\n").unwrap();
    let id3 = s.id("mnt");
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        host.path().display()
    );
    let out = s.corral.run(&[
        "run",
        "--rm",
        "--name",
        &id3,
        "--mount",
        &mount,
        "--user",
        "1000:1000",
        IMAGE_REF,
        "sh",
        "-c",
        "cat /data/f; id -u; touch /data/g || echo read-only",
    ]);
    assert_eq!(
        out.stdout(),
        "from-host\n1000\nread-only\n",
        "{}",
        out.describe()
    );
    assert!(!host.path().join("g").exists());
    s.ctrd.assert_no_leaks();
}

#[test]
fn run_forwards_stdin_and_closes_it() {
    let Some(s) = setup() else { return };
    let id = s.id("stdin");
    let out = s.corral.run_with_input(
        &["run", "-i", "--rm", "--name", &id, IMAGE_REF, "cat"],
        b"hi\nthere\n",
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout(), "hi\nthere\n");
    // Without -i the process sees no input at all.
    let id = s.id("nostdin");
    let out = s.corral.run_with_input(
        &["run", "--rm", "--name", &id, IMAGE_REF, "wc", "-c"],
        b"ignored",
    );
    assert_eq!(out.stdout().trim(), "0", "{}", out.describe());
    s.ctrd.assert_no_leaks();
}

#[test]
fn run_with_a_terminal() {
    let Some(s) = setup() else { return };
    let id = s.id("tty");
    let cmd = s.corral.command(&[
        "run",
        "-t",
        "--rm",
        "--name",
        &id,
        IMAGE_REF,
        "sh",
        "-c",
        "tty; stty size; exit 4",
    ]);
    let out = integration::pty::run_in_pty(cmd, Duration::from_secs(60)).unwrap();
    assert!(!out.timed_out, "{}", out.text());
    assert_eq!(out.status.code(), Some(4), "{}", out.text());
    assert!(out.text().contains("/dev/pts/"), "{}", out.text());
    s.ctrd.assert_no_leaks();
}

#[test]
fn detached_container_logs_exec_stop_rm() {
    let Some(s) = setup() else { return };
    let id = s.id("det");
    // ~13 KB of output with a 4 KiB cap: rotated, and the newest lines kept.
    let script = "trap 'echo got-term; exit 0' TERM; \
                  i=0; while [ $i -lt 400 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; \
                  echo done-writing; while true; do sleep 0.1; done";
    let out = s.corral.run(&[
        "run",
        "-d",
        "--name",
        &id,
        "--log-max-size",
        "4096",
        IMAGE_REF,
        "sh",
        "-c",
        script,
    ]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout().trim(), id);
    let row = s.wait_status(&id, "running");
    assert!(row["pid"].as_u64().unwrap() > 0, "{row}");
    assert_eq!(row["image"], IMAGE_REF);

    let log = s.corral.log_path(&id);
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    wait_until("the log has the last line", Duration::from_secs(20), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("done-writing")
            .then_some(())
    });
    assert!(fs::metadata(&log).unwrap().len() <= 4096);
    assert_eq!(fs::metadata(&rotated).unwrap().len(), 4096);
    let logs = s.corral.ok(&["logs", &id]);
    assert!(
        logs.ends_with("line-399-xxxxxxxxxxxxxxxxxxxx\ndone-writing\n"),
        "{logs}"
    );
    assert!(!logs.contains("line-0-"), "the oldest lines should be gone");
    // What logs prints is the rotated file then the current one, in order, without gaps.
    let nums: Vec<u32> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("line-")?.split('-').next()?.parse().ok())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");

    // exec: exit code and output.
    let out = s
        .corral
        .run(&["exec", &id, "sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(out.code(), Some(5), "{}", out.describe());
    assert_eq!(out.stdout(), "in-exec\n");
    let out = s
        .corral
        .run_with_input(&["exec", "-i", &id, "cat"], b"via-exec-stdin");
    assert_eq!(out.stdout(), "via-exec-stdin", "{}", out.describe());

    // rm without -f refuses a running container.
    let out = s.corral.run(&["rm", &id]);
    assert_one_line_error(&out, "running");

    // stop: the trap runs, the exit is clean.
    s.corral.ok(&["stop", "-t", "20", &id]);
    let row = s.wait_status(&id, "stopped");
    assert_eq!(row["exit_status"], 0, "{row}");
    wait_until("got-term in the log", Duration::from_secs(10), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("got-term")
            .then_some(())
    });
    s.corral.ok(&["rm", &id]);
    assert!(s.ps_row(&id).is_none());
    assert!(
        !log.exists() && !rotated.exists(),
        "rm leaves the log files"
    );
    s.ctrd.assert_no_leaks();
}

#[test]
fn stop_kills_a_process_that_ignores_sigterm() {
    let Some(s) = setup() else { return };
    let id = s.id("stubborn");
    s.run_detached_until_ready(
        &id,
        "trap '' TERM; echo ready; while true; do sleep 0.1; done",
    );
    s.corral.ok(&["stop", "-t", "1", &id]);
    let row = s.wait_status(&id, "stopped");
    assert_eq!(row["exit_status"], 137, "{row}");
    s.corral.ok(&["rm", &id]);
    s.ctrd.assert_no_leaks();
}

#[test]
fn kill_pause_resume_and_force_rm() {
    let Some(s) = setup() else { return };
    let id = s.id("kill");
    s.run_detached_until_ready(
        &id,
        "trap 'exit 3' USR1; echo ready; while true; do sleep 0.1; done",
    );
    s.corral.ok(&["kill", "-s", "USR1", &id]);
    let row = s.wait_status(&id, "stopped");
    assert_eq!(row["exit_status"], 3, "{row}");
    s.corral.ok(&["rm", &id]);

    let id = s.id("paused");
    s.corral
        .ok(&["run", "-d", "--name", &id, IMAGE_REF, "sleep", "1000"]);
    s.wait_status(&id, "running");
    s.corral.ok(&["pause", &id]);
    s.wait_status(&id, "paused");
    s.corral.ok(&["resume", &id]);
    s.wait_status(&id, "running");
    s.corral.ok(&["rm", "-f", &id]);
    assert!(s.ps_row(&id).is_none());
    s.ctrd.assert_no_leaks();
}

#[test]
fn logs_follow_until_the_container_exits() {
    let Some(s) = setup() else { return };
    let id = s.id("follow");
    // A cap of 8 bytes: the file rotates every few lines while we follow it; nothing is lost
    // as long as the follower sees each rotation (one every ~0.9 s here, polled at 0.1 s).
    s.corral.ok(&[
        "run",
        "-d",
        "--name",
        &id,
        "--log-max-size",
        "8",
        IMAGE_REF,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo f$i; sleep 0.3; done",
    ]);
    let out = s.corral.run(&["logs", "-f", &id]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout(), "f1\nf2\nf3\nf4\nf5\nf6\n");
    s.corral.ok(&["rm", &id]);
    s.ctrd.assert_no_leaks();
}

#[test]
fn errors_are_one_line() {
    let Some(s) = setup() else { return };
    assert_one_line_error(
        &s.corral.run(&["kill", "no-such-container"]),
        "no-such-container",
    );
    assert_one_line_error(
        &s.corral.run(&["logs", "no-such-container"]),
        "no-such-container",
    );
    assert_one_line_error(
        &s.corral.run(&["rm", "no-such-container"]),
        "no-such-container",
    );
    assert_one_line_error(
        &s.corral.run(&["images", "inspect", "example.com/none:1"]),
        "example.com/none:1",
    );
    // An image that is not here and cannot be pulled (no registry at that address).
    let id = s.id("noimg");
    assert_one_line_error(
        &s.corral
            .run(&["run", "--rm", "--name", &id, "127.0.0.1:9/none:1", "true"]),
        "127.0.0.1:9/none:1",
    );
    assert!(s.ps_row(&id).is_none());
    // A runtime that does not exist: one line, and --rm leaves nothing behind.
    let id = s.id("nort");
    let out = s.corral.run(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.nope.v1",
        "--name",
        &id,
        IMAGE_REF,
        "true",
    ]);
    assert_one_line_error(&out, &id);
    assert!(s.ps_row(&id).is_none());
    // A daemon that is not there.
    let dead = Corral::new(
        Path::new("/nonexistent/corral.sock"),
        "default",
        Path::new("/tmp"),
    );
    assert_one_line_error(&dead.run(&["ps"]), "/nonexistent/corral.sock");
    // The info command works and says where the daemon is.
    let info = s.corral.ok(&["info"]);
    assert!(
        info.contains("Version:") && info.contains(&s.ctrd.address().display().to_string()),
        "{info}"
    );
    let v: Value = serde_json::from_str(&s.corral.ok(&["info", "--output", "json"])).unwrap();
    assert_eq!(v["images"], 1, "{v}");
    assert_eq!(
        v["root"],
        s.ctrd.root().display().to_string(),
        "corrald reports its root: {v}"
    );
    assert_eq!(v["default_runtime"], "io.containerd.corral.v1", "{v}");
}

fn docker_save_tar(img: &ImageBlobs, repo: &str, tag: &str) -> Vec<u8> {
    let config_hex = hex::encode(Sha256::digest(&img.config));
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut layers = Vec::new();
    for t in &img.layer_tars {
        let id = hex::encode(Sha256::digest(t));
        add(&format!("{id}/VERSION"), b"1.0");
        add(&format!("{id}/layer.tar"), t);
        layers.push(format!("{id}/layer.tar"));
    }
    add(&format!("{config_hex}.json"), &img.config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [format!("{repo}:{tag}")],
        "Layers": layers,
    }]);
    add("manifest.json", manifest.to_string().as_bytes());
    b.into_inner().unwrap()
}

fn images_json(c: &Corral) -> Vec<Value> {
    let out = c.ok(&["images", "ls", "--output", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn images_import_ls_inspect_export_rm() {
    if !require_root() {
        return;
    }
    let d = Corrald::start();
    let tmp = tempfile::tempdir().unwrap();
    let c = Corral::new(&d.address(), d.namespace(), tmp.path());
    let tar = tmp.path().join("image.tar");
    fs::write(&tar, test_image_tar()).unwrap();
    let out = c.ok(&["images", "import", tar.to_str().unwrap()]);
    assert_eq!(out.trim(), IMAGE_REF);

    let list = images_json(&c);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], IMAGE_REF);
    let digest = list[0]["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    assert!(list[0]["size"].as_i64().unwrap() > 0);
    let table = c.ok(&["images", "ls"]);
    assert!(
        table.starts_with("NAME") && table.contains(IMAGE_REF),
        "{table}"
    );

    let inspect: Value = serde_json::from_str(&c.ok(&["images", "inspect", IMAGE_REF])).unwrap();
    let chain = inspect["chain_ids"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    // The unpacked snapshot is there, committed, named by the chain ID (ctr sees it too).
    let snaps: Value =
        serde_json::from_str(&c.ok(&["snapshots", "ls", "--output", "json"])).unwrap();
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == chain[0] && s["kind"] == "COMMITTED"),
        "{snaps}"
    );
    let ctr_snaps = d.ctr().ok(&["snapshots", "ls"]);
    assert!(
        ctr_snaps.contains(chain[0].as_str().unwrap()),
        "{ctr_snaps}"
    );

    // Export, then import into another namespace: the same image, the same digest.
    let exported = tmp.path().join("exported.tar");
    c.ok(&["images", "export", exported.to_str().unwrap(), IMAGE_REF]);
    let other = c.in_namespace(&format!("{}-b", d.namespace()));
    assert_eq!(
        other
            .ok(&["images", "import", exported.to_str().unwrap()])
            .trim(),
        IMAGE_REF
    );
    let list_b = images_json(&other);
    assert_eq!(list_b[0]["digest"], digest.as_str());
    // ctr reads what corral wrote.
    let ctr_b = d.ctr_in(&other.namespace);
    let check = ctr_b.ok(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");

    // A docker save archive (uncompressed layers, made-up Docker manifest).
    let img = image_blobs(
        &busybox_path(),
        &[vec![("etc/extra".into(), b"x".to_vec())]],
    )
    .unwrap();
    let saved = tmp.path().join("saved.tar");
    fs::write(&saved, docker_save_tar(&img, "test/saved", "v1")).unwrap();
    assert_eq!(
        c.ok(&["images", "import", saved.to_str().unwrap()]).trim(),
        "docker.io/test/saved:v1"
    );
    let inspect: Value =
        serde_json::from_str(&c.ok(&["images", "inspect", "docker.io/test/saved:v1"])).unwrap();
    assert_eq!(inspect["chain_ids"].as_array().unwrap().len(), 2);

    c.ok(&["images", "rm", IMAGE_REF, "docker.io/test/saved:v1"]);
    assert!(images_json(&c).is_empty());
    let out = c.run(&["images", "import", "/nonexistent.tar"]);
    assert_one_line_error(&out, "/nonexistent.tar");
    let junk = tmp.path().join("junk.tar");
    fs::write(&junk, b"not a tar at all").unwrap();
    assert!(
        !c.run(&["images", "import", junk.to_str().unwrap()])
            .success()
    );
    assert!(images_json(&c).is_empty());
}

/// `corral pull` from a real local registry (corrald's Transfer service), then run the pulled
/// image.
#[test]
fn pull_then_run_the_pulled_image() {
    let Some(s) = setup() else { return };
    let reg = integration::registry::Registry::start();
    let img = image_blobs(
        &busybox_path(),
        &[vec![("etc/pulled".into(), b"yes\n".to_vec())]],
    )
    .unwrap();
    let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
    blobs.push(&img.config);
    reg.push(
        "test/pulled",
        "v1",
        &blobs,
        &img.manifest,
        "application/vnd.oci.image.manifest.v1+json",
    )
    .unwrap();
    let reference = format!("{}/test/pulled:v1", reg.host());
    let out = s.corral.run(&["pull", "--plain-http", &reference]);
    assert!(out.success(), "{}", out.describe());
    // Not a terminal: plain lines, one per state change, then the image and its digest.
    let text = out.stdout();
    let last = text.lines().last().unwrap_or_default();
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&img.manifest)));
    assert_eq!(last, format!("{reference} {manifest_digest}"), "{text}");
    for l in &img.layers {
        let d = format!("sha256:{}", hex::encode(Sha256::digest(l)));
        assert!(text.contains(&format!("layer {d} ")), "{d} not in:\n{text}");
    }
    assert!(
        !text.contains('\x1b'),
        "escape codes without a terminal:\n{text}"
    );
    // On a terminal: bars redrawn in place.
    s.corral.ok(&["images", "rm", &reference]);
    let cmd = s.corral.command(&["pull", "--plain-http", &reference]);
    let out = integration::pty::run_in_pty(cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", out.text());
    assert!(out.text().contains("\x1b[2K"), "{}", out.text());
    let list = images_json(&s.corral);
    assert!(
        list.iter()
            .any(|i| i["name"] == reference.as_str() && i["digest"] == manifest_digest.as_str()),
        "{list:?}"
    );

    let id = s.id("pulled");
    let out = s.corral.run(&[
        "run",
        "--rm",
        "--name",
        &id,
        &reference,
        "cat",
        "/etc/pulled",
    ]);
    assert_eq!(out.stdout(), "yes\n", "{}", out.describe());

    // Errors: one line, nothing stored under the name.
    let missing = format!("{}/test/missing:v1", reg.host());
    assert_one_line_error(
        &s.corral.run(&["pull", "--plain-http", &missing]),
        "test/missing",
    );
    assert_one_line_error(
        &s.corral.run(&["pull", "--plain-http", "127.0.0.1:9/x/y:1"]),
        "127.0.0.1:9",
    );
    assert!(
        !images_json(&s.corral)
            .iter()
            .any(|i| i["name"] == missing.as_str())
    );
    s.ctrd.assert_no_leaks();
}

#[test]
fn exec_with_a_terminal_and_events() {
    let Some(s) = setup() else { return };
    // `corral events` prints one line per event: time, namespace, topic, decoded fields.
    let mut events = s
        .corral
        .command(&["events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let id = s.id("exect");
    s.corral
        .ok(&["run", "-d", "--name", &id, IMAGE_REF, "sleep", "1000"]);
    s.wait_status(&id, "running");
    let cmd = s
        .corral
        .command(&["exec", "-t", &id, "sh", "-c", "tty; exit 6"]);
    let out = integration::pty::run_in_pty(cmd, Duration::from_secs(60)).unwrap();
    assert!(!out.timed_out, "{}", out.text());
    assert_eq!(out.status.code(), Some(6), "{}", out.text());
    assert!(out.text().contains("/dev/pts/"), "{}", out.text());
    s.corral.ok(&["rm", "-f", &id]);

    let mut seen = Vec::new();
    let found = integration::try_wait_until(Duration::from_secs(20), || {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        seen.iter()
            .find(|l| l.contains("/containers/delete") && l.contains(&id))
            .cloned()
    });
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        found.is_some(),
        "no /containers/delete event:\n{}",
        seen.join("\n")
    );
    let start = seen
        .iter()
        .find(|l| l.contains(" /tasks/start "))
        .unwrap_or_else(|| panic!("no /tasks/start:\n{}", seen.join("\n")));
    let fields: Vec<&str> = start.splitn(4, ' ').collect();
    assert_eq!(fields[1], s.ctrd.namespace(), "{start}");
    let body: Value = serde_json::from_str(fields[3]).unwrap_or_else(|e| panic!("{e}: {start}"));
    assert_eq!(body["container_id"], id.as_str());
    assert!(body["pid"].as_u64().unwrap() > 0, "{start}");
    s.ctrd.assert_no_leaks();
}

#[test]
fn interactive_terminal_signals_and_detached_terminal() {
    let Some(s) = setup() else { return };
    // -i -t: what we type reaches the shell through the terminal; its exit code is ours.
    let id = s.id("it");
    let cmd = s
        .corral
        .command(&["run", "-i", "-t", "--rm", "--name", &id, IMAGE_REF, "sh"]);
    let mut pty = integration::pty::PtySession::spawn(cmd).unwrap();
    pty.send(b"echo typed-$((40+2))\n").unwrap();
    assert!(
        pty.expect("typed-42", Duration::from_secs(30)),
        "{}",
        pty.text()
    );
    pty.send(b"exit 9\n").unwrap();
    let out = pty.finish(Duration::from_secs(30)).unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", out.text());

    // SIGTERM to corral is forwarded to the container's process.
    let id = s.id("sig");
    let child = s
        .corral
        .command(&[
            "run",
            "--rm",
            "--name",
            &id,
            IMAGE_REF,
            "sh",
            "-c",
            "trap 'exit 5' TERM; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    s.wait_status(&id, "running");
    // The trap is set before the loop; give the shell its first loop iteration.
    wait_until("the loop runs", Duration::from_secs(10), || {
        let pid = s.ps_row(&id)?["pid"].as_u64()?;
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .filter(|c| !c.trim().is_empty())
            .map(|_| ())
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let (status, timed_out) =
        integration::cmd::wait_with_timeout(child, Duration::from_secs(30)).unwrap();
    assert!(!timed_out);
    assert_eq!(status.code(), Some(5), "{status:?}");

    // -d -t: the terminal's output goes to the log file.
    let id = s.id("dt");
    s.corral.ok(&[
        "run",
        "-d",
        "-t",
        "--name",
        &id,
        IMAGE_REF,
        "sh",
        "-c",
        "tty; echo dt-done",
    ]);
    s.wait_status(&id, "stopped");
    let logs = s.corral.ok(&["logs", &id]);
    assert!(
        logs.contains("/dev/pts/") && logs.contains("dt-done"),
        "{logs:?}"
    );
    s.corral.ok(&["rm", &id]);
    s.ctrd.assert_no_leaks();
}

/// With containerd's runc shim, `?max-size` is not understood: the file is written whole
/// (Go's URL parser drops the query), so logs work but are not capped. Capping needs our shim.
#[test]
fn runc_shim_logs_are_not_capped() {
    let Some(s) = setup() else { return };
    let id = s.id("runclog");
    s.corral.ok(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.runc.v2",
        "--log-max-size",
        "100",
        "--name",
        &id,
        IMAGE_REF,
        "sh",
        "-c",
        "seq 1 300",
    ]);
    s.wait_status(&id, "stopped");
    let logs = s.corral.ok(&["logs", &id]);
    assert!(
        logs.starts_with("1\n2\n") && logs.ends_with("299\n300\n"),
        "{logs:?}"
    );
    let log = s.corral.log_path(&id);
    assert!(!PathBuf::from(format!("{}.1", log.display())).exists());
    s.corral.ok(&["rm", &id]);
    s.ctrd.assert_no_leaks();
}
