//! Idle memory of one shim with a sleeping container, ours beside containerd's Go shim.
//!
//! Starts a private containerd per runtime, runs `SHIM_MEMORY_N` (default 5) detached `sleep` containers, and reads
//! Pss, anonymous memory and threads of each shim from /proc/PID/smaps_rollup and
//! /proc/PID/status. Prints a Markdown table. Run with `make bench` (needs root and a release
//! build of the shim: CORRAL_SHIM_BIN points at it).

use std::fs;
use std::time::Duration;

use integration::{Containerd, Runtime, require_root, wait_until};

fn n() -> usize {
    std::env::var("SHIM_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[derive(Default, Clone, Copy)]
struct Mem {
    pss_kb: u64,
    anon_kb: u64,
    rss_kb: u64,
    threads: u64,
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mem_of(pid: u32) -> Mem {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Mem {
        pss_kb: field(&rollup, "Pss:"),
        anon_kb: field(&rollup, "Anonymous:"),
        rss_kb: field(&rollup, "Rss:"),
        threads: field(&status, "Threads:"),
    }
}

/// Serving shims of this namespace: cmdline has `-namespace <ns>` and no action word.
fn shim_pids(ns: &str, binary: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(binary));
        let in_ns = args.windows(2).any(|w| w[0] == "-namespace" && w[1] == ns);
        let action = args.iter().any(|a| a == "start" || a == "delete");
        if is_shim && in_ns && !action {
            pids.push(pid);
        }
    }
    pids
}

fn measure(rt: Runtime) -> Vec<Mem> {
    let ctrd = Containerd::start(rt);
    let mut ids = Vec::new();
    for _ in 0..n() {
        let id = ctrd.new_id("mem");
        let out = ctrd.ctr_run(&["-d"], &id, &["sleep", "100000"]);
        assert!(out.success(), "{}", out.describe());
        ids.push(id);
    }
    let pids = wait_until("all shims up", Duration::from_secs(30), || {
        let p = shim_pids(ctrd.namespace(), rt.binary_name());
        (p.len() == n()).then_some(p)
    });
    // Let start-up allocations settle: idle means after the last call.
    std::thread::sleep(Duration::from_secs(2));
    let mems = pids.iter().map(|p| mem_of(*p)).collect();
    if std::env::var_os("SHIM_MEMORY_DETAIL").is_some() {
        let _ = std::process::Command::new("/tmp/memcheck.sh")
            .arg(pids[0].to_string())
            .status();
    }
    for id in &ids {
        ctrd.ctr().run(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    mems
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    if !require_root() {
        return;
    }
    println!("| shim | Pss (KiB) | Anonymous (KiB) | Rss (KiB) | threads |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for rt in [Runtime::Corral, Runtime::Runc] {
        let m = measure(rt);
        let row = Mem {
            pss_kb: median(m.iter().map(|x| x.pss_kb).collect()),
            anon_kb: median(m.iter().map(|x| x.anon_kb).collect()),
            rss_kb: median(m.iter().map(|x| x.rss_kb).collect()),
            threads: median(m.iter().map(|x| x.threads).collect()),
        };
        println!(
            "| {} (median of {}) | {} | {} | {} | {} |",
            rt.binary_name(),
            n(),
            row.pss_kb,
            row.anon_kb,
            row.rss_kb,
            row.threads
        );
        rows.push(row);
    }
    if let [ours, go] = rows[..] {
        println!(
            "\nratio corral/runc-v2: Pss {:.2}, anonymous {:.2}",
            ours.pss_kb as f64 / go.pss_kb.max(1) as f64,
            ours.anon_kb as f64 / go.anon_kb.max(1) as f64
        );
    }
}
