//! Streaming in the CRI block (issue 15): corral-cri's streaming server beside containerd's,
//! driven by the real client, `crictl`, over both of its transports.
//!
//! - exec round trip: `crictl exec <container> /bin/true`, from the start of the crictl
//!   process to its exit — the CRI Exec call, the connection and upgrade, the process run
//!   through the runtime, its exit status. crictl's own start-up is in both sides' figure.
//! - port-forward: one `crictl port-forward` per runtime and transport to busybox httpd in a
//!   pod, then GETs of a 64 MiB file through it, each timed from connect to the last byte.
//!
//! Runs interleave the two runtimes, as the rest of the block does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::{Client, Node, next_name, side};
use crate::stats::{Row, Unit};
use crate::{Config, Report, ms};

/// The file the port-forward figures fetch.
const BIG: usize = 64 << 20;
/// GETs of it per runtime and transport.
const FETCHES: usize = 5;
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The figures, one row per transport.
pub struct Rows {
    exec: [Row; 2],
    forward: [Row; 2],
}

impl Rows {
    pub fn new() -> Rows {
        let exec = |t: &str| {
            Row::new(
                format!("`crictl exec` of /bin/true over {t} (crictl start-up included)"),
                Unit::Millis,
                None,
            )
        };
        let forward = |t: &str| {
            Row::new(
                format!("64 MiB through `crictl port-forward` over {t}"),
                Unit::Millis,
                None,
            )
        };
        Rows {
            exec: [exec("SPDY"), exec("WebSocket")],
            forward: [forward("SPDY"), forward("WebSocket")],
        }
    }

    pub fn into_rows(self) -> Vec<Row> {
        let [a, b] = self.exec;
        let [c, d] = self.forward;
        vec![a, b, c, d]
    }
}

/// Measures both figures on both nodes.
pub async fn run(
    cfg: &Config,
    nodes: &[Node; 2],
    clients: &[Client],
    rows: &mut Rows,
    report: &mut Report,
) -> Result<(), String> {
    let script = format!(
        "dd if=/dev/zero of=/tmp/big bs=1048576 count={} 2>/dev/null && exec httpd -f -p 8080 -h /tmp",
        BIG >> 20
    );
    let mut pods = Vec::new();
    for (node, client) in nodes.iter().zip(clients) {
        let p = client
            .start_pod_running(
                &next_name("stream"),
                &node.log_dir(),
                &["sh", "-c", &script],
            )
            .await?;
        pods.push(p);
    }

    // What each runtime serves: containerd 1.6's streaming server answers a WebSocket
    // upgrade with 403. A transport a runtime refuses is left out of its figures, with a note.
    let mut serves = [[true; 2]; 2];
    for (k, t) in TRANSPORTS.iter().enumerate() {
        for (n, (node, p)) in nodes.iter().zip(&pods).enumerate() {
            if let Err(e) = crictl_exec_true(node, t, &p.container) {
                serves[n][k] = false;
                report.notes.push(format!(
                    "{} over {t}: not measured, `crictl exec` fails: {}",
                    node.label(),
                    e.lines().last().unwrap_or_default()
                ));
            }
        }
    }

    println!(
        "  crictl exec /bin/true ({} per runtime and transport)",
        cfg.cri.execs
    );
    report.quiet(cfg, "CRI: crictl exec");
    for i in 0..cfg.cri.execs {
        if i > 0 && i % 25 == 0 {
            report.quiet(cfg, "CRI: crictl exec (cont.)");
        }
        for (k, t) in TRANSPORTS.iter().enumerate() {
            for (n, (node, p)) in nodes.iter().zip(&pods).enumerate() {
                if serves[n][k] {
                    let el = crictl_exec_true(node, t, &p.container)?;
                    side(&mut rows.exec[k], node).push(ms(el));
                }
            }
        }
    }

    println!("  port-forward, {FETCHES} × 64 MiB per runtime and transport");
    report.quiet(cfg, "CRI: port-forward");
    for (k, t) in TRANSPORTS.iter().enumerate() {
        let mut forwards = Vec::new();
        for (node, p) in nodes.iter().zip(&pods) {
            // The server is up and the tunnel carries: one small fetch first, untimed.
            let started = Forward::start(node, t, &p.pod)
                .and_then(|f| f.fetch("/", Duration::from_secs(30)).map(|_| f));
            match started {
                Ok(f) => forwards.push(Some(f)),
                Err(e) => {
                    report.notes.push(format!(
                        "{} port-forward over {t}: not measured: {e}",
                        node.label()
                    ));
                    forwards.push(None);
                }
            }
        }
        for _ in 0..FETCHES {
            for (node, f) in nodes.iter().zip(&forwards) {
                if let Some(f) = f {
                    let el = f.fetch("/big", CLIENT_TIMEOUT)?;
                    side(&mut rows.forward[k], node).push(ms(el));
                }
            }
        }
    }
    for (client, p) in clients.iter().zip(&pods) {
        client.remove_pod(&p.pod).await?;
    }
    Ok(())
}

fn crictl_exec_true(node: &Node, transport: &str, container: &str) -> Result<Duration, String> {
    let mut cmd = node
        .crictl()
        .command(&["exec", "-r", transport, container, "/bin/true"]);
    let t = Instant::now();
    let out = integration::cmd::output_with_timeout(&mut cmd, CLIENT_TIMEOUT)
        .map_err(|e| format!("crictl exec: {e}"))?;
    let el = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{}: crictl exec -r {transport} /bin/true: {:?}: {}",
            node.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(el)
}

/// A `crictl port-forward` to port 8080 of a pod, listening on a local port it picked.
struct Forward {
    child: Child,
    port: u16,
    what: String,
}

impl Forward {
    fn start(node: &Node, transport: &str, pod: &str) -> Result<Forward, String> {
        let mut cmd: Command =
            node.crictl()
                .command(&["port-forward", "-r", transport, pod, "0:8080"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        integration::cmd::die_with_parent(&mut cmd);
        let what = format!("{}: crictl port-forward -r {transport}", node.label());
        let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
        // It prints `Forwarding from 127.0.0.1:PORT -> 8080` once it listens.
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        let port = loop {
            let n = out.read(&mut buf).map_err(|e| format!("{what}: {e}"))?;
            if n == 0 {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("{what} ended before it listened: {seen}{err}"));
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(port) = seen
                .lines()
                .find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
            {
                break port;
            }
        };
        // Keep reading (and dropping) what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || while matches!(out.read(&mut buf), Ok(n) if n > 0) {});
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while matches!(err.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
        Ok(Forward { child, port, what })
    }

    /// GETs `path`; the time from connecting to the last byte of the answer.
    fn fetch(&self, path: &str, timeout: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        let fail = |e: std::io::Error| format!("{}: GET {path}: {e}", self.what);
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(fail)?;
        s.set_read_timeout(Some(timeout)).map_err(fail)?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(fail)?;
        let mut n = 0usize;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match s.read(&mut buf).map_err(fail)? {
                0 => break,
                k => n += k,
            }
        }
        let el = t.elapsed();
        if path == "/big" && n < BIG {
            return Err(format!("{}: GET {path}: {n} bytes", self.what));
        }
        Ok(el)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
