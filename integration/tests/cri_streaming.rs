//! corral-cri's streaming server (exec, attach, port-forward) driven by the real crictl
//! (cri-tools v1.36.0) over both of its transports, SPDY/3.1 and WebSocket
//! (`crictl --transport`), on a private node: corrald, corral-cri, a CNI bridge of its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::cri::CriOptions;
use integration::pty::PtySession;
use integration::{CriNode, require_root, wait_until};
use protocol::grpc::runtime::v1::{
    AttachRequest, ExecRequest, PortForwardRequest, ReopenContainerLogRequest,
};
use protocol::grpc::tonic;
use serde_json::json;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(30);
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// A command running in the background with its stdio piped; its output is collected by two
/// threads. Killed when dropped.
struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl Background {
    fn spawn(mut cmd: Command) -> Background {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        integration::cmd::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let collect = |r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut r = r;
                let mut chunk = [0u8; 16384];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Background {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            what,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.stdout(),
            self.stderr()
        )
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.what));
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until stdout contains `needle`.
    fn wait_stdout(&self, needle: &str) {
        if integration::try_wait_until(T, || self.stdout().contains(needle).then_some(())).is_none()
        {
            panic!("{needle:?} never came:\n{}", self.describe());
        }
    }

    /// Sends `line` again and again until `seen` (this command when None) shows `needle`:
    /// for output that only counts once the other side is surely listening.
    fn send_until(&mut self, line: &str, seen: Option<&Background>, needle: &str) {
        let deadline = Instant::now() + T;
        let shows = |me: &Background| seen.unwrap_or(me).stdout().contains(needle);
        while !shows(self) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never came:\n{}\nsent by:\n{}",
                seen.unwrap_or(self).describe(),
                self.describe()
            );
            self.send(line);
            let _ = integration::try_wait_until(Duration::from_millis(500), || {
                shows(self).then_some(())
            });
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait(mut self) -> ExitStatus {
        self.stdin = None;
        let status = integration::try_wait_until(T, || self.child.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("did not end:\n{}", self.describe()));
        // The collecting threads end with the pipes; give them the last bytes.
        let _ = integration::try_wait_until(Duration::from_secs(2), || {
            (Arc::strong_count(&self.out) == 1 && Arc::strong_count(&self.err) == 1).then_some(())
        });
        status
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod with one running container `name` running `command`, with `extra` container config.
fn run(node: &CriNode, name: &str, command: &[&str], extra: serde_json::Value) -> (String, String) {
    let pod = node.pod_config(name, json!({}));
    let ctr = node.container_config(name, command, extra);
    node.run_pod_with(&pod, &ctr)
}

/// Pseudo-random bytes (xorshift), the same for the same seed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn exec_streams_output_errors_exit_status_and_stdin() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let (_pod, id) = run(&node, "exec", &["sleep", "1000"], json!({}));
    let input = noise(10 << 20, 42);

    for t in TRANSPORTS {
        let out = c.run(&[
            "exec",
            "-r",
            t,
            &id,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]);
        assert_eq!(out.stdout, "out\n", "{t}: {}", out.describe());
        assert!(out.stderr.contains("err\n"), "{t}: {}", out.describe());
        // crictl exits 1 and names the exit code the error stream carried.
        assert!(!out.success(), "{t}: {}", out.describe());
        assert!(
            out.stderr.contains("exit code 3"),
            "{t}: {}",
            out.describe()
        );

        let out = c.run(&["exec", "-r", t, &id, "sh", "-c", "echo fine"]);
        assert!(out.success(), "{t}: {}", out.describe());
        assert_eq!(out.stdout, "fine\n", "{t}");

        // 10 MB in through stdin and back out through stdout, byte for byte; the end of the
        // client's stdin is the process's.
        let mut cmd = c.command(&["exec", "-i", "-r", t, &id, "cat"]);
        let out = integration::cmd::output_with_input(&mut cmd, &input, Duration::from_secs(120))
            .unwrap();
        assert!(
            out.status.success(),
            "{t}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.len(), input.len(), "{t}: length");
        assert_eq!(sha256(&out.stdout), sha256(&input), "{t}: content");

        let mut cmd = c.command(&["exec", "-i", "-r", t, &id, "sh", "-c", "wc -c; echo done"]);
        let out = integration::cmd::output_with_input(&mut cmd, b"12345", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["5", "done"],
            "{t}"
        );

        // A binary that is not there: the runtime's error reaches the client.
        let out = c.run(&["exec", "-r", t, &id, "/no/such/binary"]);
        assert!(!out.success(), "{t}: {}", out.describe());
        assert!(
            out.stderr.contains("/no/such/binary"),
            "{t}: {}",
            out.describe()
        );
    }
    // Nothing is left of the execs: no process, no FIFO.
    let ps = c.ok(&["exec", "-s", &id, "ps", "-o", "args"]);
    assert!(!ps.contains("cat"), "{ps}");
    // ExecSync answers first and removes its exec's FIFOs right after.
    integration::wait_until("exec FIFOs removed", Duration::from_secs(10), || {
        let left = std::fs::read_dir(node.root().join("exec"))
            .map(|d| d.count())
            .unwrap_or(0);
        (left == 0).then_some(())
    });
}

#[test]
fn exec_with_a_terminal_resizes_and_is_killed_when_the_client_goes() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let (_pod, id) = run(&node, "tty", &["sleep", "1000"], json!({}));

    for t in TRANSPORTS {
        let mut sh = PtySession::spawn(c.command(&["exec", "-it", "-r", t, &id, "sh"])).unwrap();
        assert!(sh.expect("# ", T), "{t}: no prompt: {}", sh.text());
        sh.send(b"tty; stty size\r").unwrap();
        assert!(sh.expect("/dev/pts/", T), "{t}: {}", sh.text());
        assert!(sh.expect("24 80", T), "{t}: initial size: {}", sh.text());
        sh.resize(40, 123).unwrap();
        // The resize travels asynchronously: ask until the new size shows.
        let deadline = Instant::now() + T;
        loop {
            sh.send(b"stty size\r").unwrap();
            if sh.expect("40 123", Duration::from_millis(500)) {
                break;
            }
            assert!(Instant::now() < deadline, "{t}: resize: {}", sh.text());
        }
        sh.send(b"echo $((6*7))x\r").unwrap();
        assert!(sh.expect("42x", T), "{t}: {}", sh.text());
        sh.send(b"exit 7\r").unwrap();
        let out = sh.finish(T).unwrap();
        assert!(!out.status.success(), "{t}: {}", out.text());
        assert!(out.text().contains("exit code 7"), "{t}: {}", out.text());

        // The client goes away while its command runs: the command is killed.
        let marker = format!("sleep 4{}", t.len());
        let mut gone = Background::spawn(c.command(&["exec", "-r", t, &id, "sh", "-c", &marker]));
        wait_until(&format!("{t}: the exec runs"), T, || {
            c.ok(&["exec", "-s", &id, "ps", "-o", "args"])
                .contains(&marker)
                .then_some(())
        });
        assert!(gone.running(), "{}", gone.describe());
        drop(gone);
        wait_until(&format!("{t}: the exec is killed"), T, || {
            (!c.ok(&["exec", "-s", &id, "ps", "-o", "args"])
                .contains(&marker))
            .then_some(())
        });
    }
    let st = node.container_status(&id);
    assert_eq!(st["state"], "CONTAINER_RUNNING", "{st}");

    // corral-cri dies with an exec running: its client loses the stream, and the next
    // corral-cri kills what nobody can see or end any more.
    let mut node = node;
    let orphan = Background::spawn(c.command(&["exec", &id, "sh", "-c", "sleep 4343"]));
    wait_until("the exec runs", T, || {
        c.ok(&["exec", "-s", &id, "ps", "-o", "args"])
            .contains("sleep 4343")
            .then_some(())
    });
    node.kill_9();
    // The stream is cut (crictl then reports success: an error stream that closes without
    // a status is one, in client-go).
    orphan.wait();
    node.restart();
    wait_until("the orphaned exec is killed", T, || {
        (!c.ok(&["exec", "-s", &id, "ps", "-o", "args"])
            .contains("sleep 4343"))
        .then_some(())
    });
    assert_eq!(node.container_status(&id)["state"], "CONTAINER_RUNNING");
    let left = std::fs::read_dir(node.root().join("exec"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "exec FIFOs left behind");
}

#[test]
fn attach_to_a_logging_container_shares_it_follows_rotation_and_survives_restarts() {
    if !require_root() {
        return;
    }
    let mut node = CriNode::start();
    let c = node.crictl();
    let (_pod, id) = run(&node, "attach", &["sh"], json!({ "stdin": true }));

    // Two attachers at once, one over each transport; only the first types.
    let mut a = Background::spawn(c.command(&["attach", "-i", "-r", "spdy", &id]));
    let b = Background::spawn(c.command(&["attach", "-r", "websocket", &id]));
    a.send_until("echo ping-a\n", None, "ping-a");
    a.send_until("echo ping-b\n", Some(&b), "ping-b");
    a.send("echo both\n");
    a.wait_stdout("both\n");
    b.wait_stdout("both\n");
    a.send("echo to-err >&2\n");
    wait_until("stderr to the attacher", T, || {
        a.stderr().contains("to-err\n").then_some(())
    });
    assert!(
        !a.stdout().contains("to-err"),
        "stderr went to stdout: {}",
        a.describe()
    );

    // The first leaves; the container and the other attacher go on.
    drop(a);
    let mut typist = Background::spawn(c.command(&["attach", "-i", "-r", "websocket", &id]));
    typist.send_until("echo after-a\n", Some(&b), "after-a");
    assert_eq!(node.container_status(&id)["state"], "CONTAINER_RUNNING");

    // kubelet rotates the log: rename, then ReopenContainerLog. Attach follows the new file.
    let log = node.container_status(&id)["logPath"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::rename(&log, format!("{log}.1")).unwrap();
    node.runtime_api(async |client| {
        let mut req = tonic::Request::new(ReopenContainerLogRequest {
            container_id: id.clone(),
        });
        req.set_timeout(T);
        client.reopen_container_log(req).await.unwrap();
    });
    typist.send_until("echo rotated\n", Some(&b), "rotated");
    assert!(Path::new(&log).exists());

    // A restart ends the streams, never the container; attach works again after it.
    node.restart();
    let mut after = Background::spawn(c.command(&["attach", "-i", "-r", "spdy", &id]));
    after.send_until("echo after-restart\n", None, "after-restart");
    assert_eq!(node.container_status(&id)["state"], "CONTAINER_RUNNING");
    drop(after);
    let logs = c.ok(&["logs", &id]);
    assert!(logs.contains("after-restart"), "{logs}");

    // A container started before corral-cri had attach has no stdin FIFO: attaching its
    // stdin is refused with the reason; its output can still be attached to.
    let fifo = node.root().join("io").join(&id).join("stdin");
    let hidden = fifo.with_file_name("stdin.hidden");
    std::fs::rename(&fifo, &hidden).unwrap();
    let out = c.run(&["attach", "-i", &id]);
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("no stdin pipe"), "{}", out.describe());
    let watch = Background::spawn(c.command(&["attach", &id]));
    // The container's stdin, written to behind corral-cri's back, makes it print.
    wait_until("output to an attacher without stdin", T, || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&hidden)
            .unwrap();
        f.write_all(b"echo via-fifo\n").unwrap();
        drop(f);
        integration::try_wait_until(Duration::from_millis(500), || {
            watch.stdout().contains("via-fifo").then_some(())
        })
    });
}

#[test]
fn attach_stdin_once_without_a_log_ends_with_the_container() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    for t in TRANSPORTS {
        // critest's attach container: no log path, stdin once.
        let (_pod, id) = run(
            &node,
            &format!("once-{t}"),
            &["sh"],
            json!({ "stdin": true, "stdin_once": true, "log_path": "" }),
        );
        let mut a = Background::spawn(c.command(&["attach", "-i", "-r", t, &id]));
        a.send_until("echo hello\n", None, "hello\n");
        a.send("echo bye >&2\n");
        wait_until("stderr", T, || a.stderr().contains("bye").then_some(()));
        a.close_stdin();
        let what = a.describe();
        let status = a.wait();
        assert!(status.success(), "{t}: {status}: {what}");
        let st = node.wait_container_state(&id, "CONTAINER_EXITED");
        assert_eq!(st["exitCode"], 0, "{t}: {st}");
        // Its stdin is gone for good: attaching stdin again is refused.
        let out = c.run(&["attach", "-i", "-r", t, &id]);
        assert!(!out.success(), "{t}: {}", out.describe());
    }
}

#[test]
fn attach_with_a_terminal_under_a_pty() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    for (t, log) in [("spdy", true), ("websocket", false)] {
        let mut extra = json!({ "stdin": true, "tty": true });
        if !log {
            extra["log_path"] = json!("");
        }
        let (_pod, id) = run(&node, &format!("tty-{t}"), &["sh"], extra);
        let mut sh = PtySession::spawn(c.command(&["attach", "-it", "-r", t, &id])).unwrap();
        let deadline = Instant::now() + T;
        loop {
            sh.send(b"echo $((6*7))x\r").unwrap();
            if sh.expect("42x", Duration::from_millis(500)) {
                break;
            }
            assert!(Instant::now() < deadline, "{t}: {}", sh.text());
        }
        sh.resize(33, 111).unwrap();
        let deadline = Instant::now() + T;
        loop {
            sh.send(b"stty size\r").unwrap();
            if sh.expect("33 111", Duration::from_millis(500)) {
                break;
            }
            assert!(Instant::now() < deadline, "{t}: resize: {}", sh.text());
        }
        // Detaching (the client goes away) leaves the container running.
        drop(sh);
        let st = node.container_status(&id);
        assert_eq!(st["state"], "CONTAINER_RUNNING", "{t}: {st}");
        let out = c.ok(&["exec", "-s", &id, "sh", "-c", "echo still here"]);
        assert_eq!(out, "still here");
    }
}

/// The local port `crictl port-forward` picked (it prints `Forwarding from 127.0.0.1:N -> P`).
fn forwarded_port(pf: &Background) -> u16 {
    wait_until("crictl port-forward to listen", T, || {
        pf.stdout()
            .lines()
            .find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    })
}

/// GET `path` over HTTP/1.0 from 127.0.0.1:`port`: the body.
fn http_get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(T))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let head = String::from_utf8_lossy(&all[..at]).into_owned();
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answer: {head}")));
    }
    Ok(all[at + 4..].to_vec())
}

/// busybox httpd on `port` serving `index.html` ("hello from the pod") and a 4 MiB `big`.
fn httpd_command(port: u16) -> Vec<String> {
    let script = format!(
        "mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html && \
         dd if=/dev/urandom of=/tmp/www/big bs=1024 count=4096 2>/dev/null && \
         sha256sum /tmp/www/big > /tmp/www/big.sha256 && exec httpd -f -p {port} -h /tmp/www"
    );
    vec!["sh".into(), "-c".into(), script]
}

#[test]
fn port_forward_into_a_pod_and_a_host_network_pod() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let cmd = httpd_command(8080);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (pod, _id) = run(&node, "web", &cmd, json!({}));
    // Beside it, a server that answers once its client has finished sending (half-close).
    let counter = node.container_config(
        "wc",
        &["nc", "-ll", "-p", "7000", "-e", "wc", "-c"],
        json!({}),
    );
    let pod_cfg = node.pod_config("web", json!({}));
    let wc = c.ok(&[
        "create",
        &pod,
        counter.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &wc]);
    // A host port nobody uses, for the host-network pod's server.
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host_cmd = httpd_command(host_port);
    let host_cmd: Vec<&str> = host_cmd.iter().map(String::as_str).collect();
    let host_pod_cfg = node.pod_config(
        "hostweb",
        json!({ "linux": { "security_context": { "namespace_options": { "network": 2 } } } }),
    );
    let host_ctr_cfg = node.container_config("hostweb", &host_cmd, json!({}));
    let (host_pod, _) = node.run_pod_with(&host_pod_cfg, &host_ctr_cfg);

    for t in TRANSPORTS {
        for (pod, port) in [(&pod, 8080), (&host_pod, host_port)] {
            let pf =
                Background::spawn(c.command(&["port-forward", "-r", t, pod, &format!("0:{port}")]));
            let local = forwarded_port(&pf);
            let page = wait_until("the page through the tunnel", T, || {
                http_get(local, "/index.html").ok()
            });
            assert_eq!(page, b"hello from the pod\n", "{t}: {}", pf.describe());

            // Streams at once on one connection, and a big body intact.
            let bodies: Vec<_> = (0..6)
                .map(|i| {
                    std::thread::spawn(move || {
                        http_get(local, if i % 2 == 0 { "/big" } else { "/big.sha256" })
                    })
                })
                .collect();
            let bodies: Vec<Vec<u8>> = bodies
                .into_iter()
                .map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{t}: {e}")))
                .collect();
            let want = String::from_utf8_lossy(&bodies[1]).into_owned();
            assert_eq!(bodies[0].len(), 4 << 20, "{t}");
            assert!(want.starts_with(&sha256(&bodies[0])), "{t}: {want}");
            assert_eq!(bodies[0], bodies[2], "{t}");
            assert_eq!(bodies[0], bodies[4], "{t}");
        }

        // The client's end of sending reaches the pod, whose answer still comes back.
        let pf = Background::spawn(c.command(&["port-forward", "-r", t, &pod, "0:7000"]));
        let local = forwarded_port(&pf);
        let sent = noise(300_000, 7);
        let counted = wait_until("the counter's answer", T, || {
            let mut s = TcpStream::connect(("127.0.0.1", local)).ok()?;
            s.set_read_timeout(Some(T)).ok()?;
            s.write_all(&sent).ok()?;
            s.shutdown(std::net::Shutdown::Write).ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            (!answer.is_empty()).then_some(answer)
        });
        assert_eq!(counted.trim(), "300000", "{t}: {}", pf.describe());
        drop(pf);

        // A port nobody listens on: the error stream says so, the client's connection ends.
        let pf = Background::spawn(c.command(&["port-forward", "-r", t, &pod, "0:9"]));
        let local = forwarded_port(&pf);
        let got = http_get(local, "/");
        assert!(got.is_err(), "{t}: {got:?}");
        wait_until("the error on crictl's stderr", T, || {
            let e = pf.stderr();
            (e.contains("port 9") || e.contains(":9")).then_some(())
        });
        assert!(
            pf.stderr().to_lowercase().contains("refused"),
            "{t}: {}",
            pf.describe()
        );
    }
}

/// "ok", or the status code and message of a failed call.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// The streaming URL and an HTTP request to it that asks for SPDY port-forwarding: "HTTP/1.1
/// 101 …" when the token is good, "HTTP/1.1 404 …" when not.
fn upgrade(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn tokens_are_single_use_expire_and_requests_are_checked() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    let (pod, id) = run(&node, "tokens", &["sleep", "1000"], json!({}));
    let created_cfg = node.container_config("created", &["sleep", "1"], json!({}));
    let pod_cfg = node.pod_config("tokens", json!({}));
    let created = c.ok(&[
        "create",
        &pod,
        created_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);

    let (urls, codes) = node.runtime_api(async |client| {
        let mut urls = Vec::new();
        for _ in 0..3 {
            let r = client
                .port_forward(PortForwardRequest {
                    pod_sandbox_id: pod.clone(),
                    port: vec![80],
                })
                .await
                .unwrap();
            urls.push(r.into_inner().url);
        }
        let exec = client
            .exec(ExecRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap();
        urls.push(exec.into_inner().url);

        let exec = |container: &str, stdin, stdout, stderr, tty| ExecRequest {
            container_id: container.to_string(),
            cmd: vec!["true".into()],
            stdin,
            stdout,
            stderr,
            tty,
        };
        let mut codes = Vec::new();
        codes.push(code(
            client.exec(exec("nope", false, true, false, false)).await,
        ));
        codes.push(code(
            client.exec(exec(&created, false, true, false, false)).await,
        ));
        codes.push(code(
            client.exec(exec(&id, false, false, false, false)).await,
        ));
        codes.push(code(client.exec(exec(&id, false, true, true, true)).await));
        codes.push(code(
            client
                .attach(AttachRequest {
                    container_id: id.clone(),
                    stdout: true,
                    stderr: true,
                    tty: true,
                    ..Default::default()
                })
                .await,
        ));
        codes.push(code(
            client
                .port_forward(PortForwardRequest {
                    pod_sandbox_id: "nope".into(),
                    port: vec![],
                })
                .await,
        ));
        (urls, codes)
    });
    let want = [
        "NotFound",
        "FailedPrecondition",
        "InvalidArgument",
        "InvalidArgument",
        "InvalidArgument",
        "NotFound",
    ];
    for (got, want) in codes.iter().zip(want) {
        assert!(got.starts_with(want), "want {want}, got {got}");
    }
    assert!(codes[2].contains("stdin, stdout or stderr"), "{}", codes[2]);
    assert!(codes[3].contains("tty and stderr"), "{}", codes[3]);

    for url in &urls {
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    }
    // Good once, then never again; a token is good on its own route only (and is spent by
    // trying another); made-up tokens are not.
    assert!(upgrade(&urls[0]).contains(" 101 "), "{}", upgrade(&urls[0]));
    assert!(upgrade(&urls[0]).contains(" 404 "));
    let exec_on_pf = urls[3].replace("/exec/", "/portforward/");
    assert!(upgrade(&exec_on_pf).contains(" 404 "));
    let base = &urls[0][..urls[0].find("/portforward/").unwrap()];
    assert!(upgrade(&format!("{base}/portforward/AAAAAAAAAAAAAAAAAAAAAA")).contains(" 404 "));

    // A token not used within a minute expires.
    std::thread::sleep(Duration::from_secs(61));
    assert!(upgrade(&urls[1]).contains(" 404 "), "{}", upgrade(&urls[1]));
}

#[test]
fn exec_over_tls() {
    if !require_root() {
        return;
    }
    let ca = integration::certs::TestCa::new();
    let server = ca.issue("streaming", integration::certs::Usage::Server);
    let node = CriNode::start_with(CriOptions {
        streaming_tls: Some((server.cert.clone(), server.key.clone())),
        ..CriOptions::default()
    });
    let c = node.crictl();
    let (_pod, id) = run(&node, "tls", &["sleep", "1000"], json!({}));
    let url = node.runtime_api(async |client| {
        client
            .exec(ExecRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .url
    });
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca_path = ca.cert();
    // crictl wants a client certificate too, though the server asks for none.
    let client = ca.issue("crictl", integration::certs::Usage::Client);
    for t in TRANSPORTS {
        let out = c.run(&[
            "exec",
            "-r",
            t,
            "--tls-ca",
            ca_path.to_str().unwrap(),
            "--tls-cert",
            client.cert.to_str().unwrap(),
            "--tls-key",
            client.key.to_str().unwrap(),
            &id,
            "echo",
            "secure",
        ]);
        assert!(out.success(), "{t}: {}", out.describe());
        assert_eq!(out.stdout, "secure\n", "{t}");
    }
}

#[test]
fn exec_in_a_pod_of_containerds_shim_and_no_attach_there() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let c = node.crictl();
    // The `runc` handler: containerd's containerd-shim-runc-v2, which writes no CRI log.
    let pod_cfg = node.pod_config("runc", json!({}));
    let ctr_cfg = node.container_config("runc", &["sleep", "1000"], json!({}));
    let pod = c.ok(&["runp", "--runtime", "runc", pod_cfg.to_str().unwrap()]);
    let id = c.ok(&[
        "create",
        &pod,
        ctr_cfg.to_str().unwrap(),
        pod_cfg.to_str().unwrap(),
    ]);
    c.ok(&["start", &id]);
    node.wait_container_state(&id, "CONTAINER_RUNNING");
    for t in TRANSPORTS {
        let mut cmd = c.command(&["exec", "-i", "-r", t, &id, "sh", "-c", "wc -c; echo $0"]);
        let out = integration::cmd::output_with_input(&mut cmd, &noise(100_000, 3), T).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["100000", "sh"],
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = c.run(&["attach", "-r", t, &id]);
        assert!(!out.success(), "{t}: {}", out.describe());
        assert!(
            out.stderr.contains("shim_writes_logs"),
            "{t}: {}",
            out.describe()
        );
    }
}
