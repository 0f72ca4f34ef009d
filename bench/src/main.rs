//! `corral-bench`: corrald with our shim beside containerd 1.6 with its Go shim, on the same
//! machine, driven by the same `ctr`, runs interleaved (containerd, corrald, containerd, …).
//!
//! Blocks (see issue 7), each preceded by a wait for a quiet machine ([`host::wait_quiet`]):
//! 1. `ctr run --rm <busybox> <id> /bin/true` latency, and its floor: `runc run` of the same
//!    root filesystem alone, without and with an overlay mount ([`floor`]); then the same run
//!    split into its phases (client, daemon, shim start, each runc call, teardown) on daemons
//!    whose runc and shims are wrapped ([`phases`]).
//! 2. N (50) containers started by N concurrent `ctr run -d … sleep 1000`: wall time; each shim's
//!    Pss, anonymous memory and threads; the daemon's RSS with N tasks.
//! 3. Restart with the N running: kill -9 the daemon, start it, time until `ctr tasks ls` lists
//!    all N RUNNING.
//! 5. Teardown of the N: concurrent `ctr tasks rm -f` + `ctr containers rm`: wall time.
//! 4. Pull + unpack of a ~280 MB 4-layer gzip image from a local docker-registry into a fresh
//!    daemon, and import + unpack of the same image exported ([`pull`]), with the daemon's
//!    root on the disk and on a tmpfs: `ctr images pull --plain-http` and `ctr images import`
//!    into each daemon, `corral pull` and `corral images import` into corrald.
//! 6. Kubernetes CRI (issue 11, [`cri`]): corral-cri + corrald beside containerd's own CRI
//!    plugin, both driven through the CRI API: pod start, ExecSync, `crictl exec` and
//!    `crictl port-forward` over SPDY and WebSocket, P (30) pods at once, memory with P pods
//!    and after their teardown.
//!
//! Both daemons log at `info` (the test harness uses `debug`). Results: a Markdown report
//! printed and written to `bench/results/<YYYY-MM-DD>.md` (`<YYYY-MM-DD>-<blocks>.md` when
//! `BENCH_ONLY` picks blocks). Benchmarks are not tests: nothing here judges a timing; it only
//! checks that the containers really ran.
//!
//! Needs root. Binaries: `CORRALD_BIN`, `CORRAL_SHIM_BIN`, `CORRAL_CRI_BIN` (release builds for
//! real numbers), `CORRAL_BIN` (the `corral` CLI, optional). Knobs: `BENCH_ROUNDS` (default 3:
//! rounds of blocks 2–5 and of the CRI block's P pods), `BENCH_RUN_ITERS` (default 10 × rounds),
//! `BENCH_CONTAINERS` (50), `BENCH_LAYER_MB` (25 MB per layer, compressed), `BENCH_LAYERS=<dir>`
//! (keep the generated layers for the next run), `BENCH_CRI_STARTS` (20 pod starts per runtime),
//! `BENCH_CRI_EXECS` (50 ExecSyncs per runtime), `BENCH_CRI_PODS` (30), `BENCH_CRITEST_N`
//! (20 samples per `critest -benchmark` benchmark, 0 skips critest), `BENCH_CRI_LOG_LEVEL`
//! (`info`; a failed CRI round keeps the daemons' logs in `$TMPDIR/corral-bench-logs/`),
//! `BENCH_QUIET_IDLE` (%
//! idle wanted, default 80), `BENCH_QUIET_MAX_S` (cap of each wait, default 20),
//! `BENCH_ONLY=run,fifty,pull,cri` (a subset of blocks), `BENCH_OUT=<dir>`.

mod bigimage;
mod cri;
mod crifloor;
mod cristream;
mod critest;
mod floor;
mod host;
mod phases;
mod pull;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::containerd::Options;
use integration::ctr::{CtrOutput, parse_tasks_ls};
use integration::{Containerd, Daemon, Runtime, Target, leaks};

use host::Quiet;
use stats::{Row, Samples, Single, Unit};

const CONTAINERD: Target = Target {
    daemon: Daemon::Containerd,
    runtime: Runtime::Runc,
};
const CORRALD: Target = Target {
    daemon: Daemon::Corrald,
    runtime: Runtime::Corral,
};
const BENCH_OPTIONS: Options = Options {
    log_level: "info",
    import_image: true,
    runc_v2_is_corral: false,
    runc_timeout: None,
    cri_plugin: false,
    message_limits: None,
};
/// Deadline of the restart block's wait for all tasks RUNNING.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of one pull.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Sizes of the CRI block.
struct CriKnobs {
    /// Pod starts, one at a time, per runtime.
    starts: usize,
    /// ExecSync calls per runtime.
    execs: usize,
    /// Pods started at once.
    pods: usize,
    /// Samples per `critest -benchmark` benchmark; 0: critest is not run.
    critest_n: usize,
    /// The daemons' log level (`info` as in production; `debug` to find where time goes).
    log_level: &'static str,
}

struct Config {
    rounds: usize,
    run_iters: usize,
    containers: usize,
    layer_bytes: u64,
    layers_cache: Option<PathBuf>,
    min_idle: f64,
    quiet_cap: Duration,
    cri: CriKnobs,
    only: Option<Vec<String>>,
    out_dir: PathBuf,
}

impl Config {
    fn from_env() -> Config {
        let rounds = knob("BENCH_ROUNDS", 3).max(1) as usize;
        Config {
            rounds,
            run_iters: knob("BENCH_RUN_ITERS", 10 * rounds as u64).max(1) as usize,
            containers: knob("BENCH_CONTAINERS", 50).max(1) as usize,
            // ~25 MB of gzip per layer from /usr is ~70 MB uncompressed: a ~280 MB image as the
            // issue's reference (39 MiB/s uncompressed in 7.2 s).
            layer_bytes: knob("BENCH_LAYER_MB", 25).max(1) * 1_000_000,
            layers_cache: std::env::var_os("BENCH_LAYERS").map(PathBuf::from),
            min_idle: knob("BENCH_QUIET_IDLE", 80) as f64,
            quiet_cap: Duration::from_secs(knob("BENCH_QUIET_MAX_S", 20)),
            cri: CriKnobs {
                starts: knob("BENCH_CRI_STARTS", 20).max(1) as usize,
                execs: knob("BENCH_CRI_EXECS", 50).max(1) as usize,
                pods: knob("BENCH_CRI_PODS", 30).max(1) as usize,
                critest_n: knob("BENCH_CRITEST_N", 20) as usize,
                log_level: match std::env::var("BENCH_CRI_LOG_LEVEL") {
                    Ok(l) if !l.trim().is_empty() => {
                        Box::leak(l.trim().to_string().into_boxed_str())
                    }
                    _ => "info",
                },
            },
            only: std::env::var("BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            out_dir: std::env::var_os("BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results")),
        }
    }

    fn wants(&self, block: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|b| b == block))
    }
}

/// Everything measured, in report order.
struct Report {
    rows: Vec<Row>,
    floor: Vec<Single>,
    /// One `ctr run --rm` split into its phases ([`phases`]).
    phases: Vec<Row>,
    /// The CRI block's rows (their own table: other processes on each side).
    cri: Vec<Row>,
    /// corral's two CRI daemons apart.
    cri_parts: Vec<Single>,
    /// `critest -benchmark` both ways.
    critest: Vec<Row>,
    /// What any runtime pays for a pod start here (CNI plugins, runc).
    cri_floor: Vec<Single>,
    notes: Vec<String>,
    quiet: Vec<Quiet>,
}

impl Report {
    fn quiet(&mut self, cfg: &Config, block: &str) {
        self.close_block();
        let q = host::wait_quiet(block, cfg.min_idle, cfg.quiet_cap);
        self.quiet.push(q);
    }

    /// Ends the CPU-idle account of the block begun by the last [`Report::quiet`].
    fn close_block(&mut self) {
        if let Some(q) = self.quiet.last_mut() {
            q.close();
        }
    }
}

fn side(row: &mut Row, target: Target) -> &mut Samples {
    match target.daemon {
        Daemon::Containerd => &mut row.containerd,
        Daemon::Corrald => &mut row.corral,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn label(t: Target) -> &'static str {
    match t.daemon {
        Daemon::Containerd => "containerd",
        Daemon::Corrald => "corrald",
    }
}

/// Block 1: `ctr run --rm … /bin/true` on both daemons, and plain runc.
fn run_rm_block(cfg: &Config, daemons: &[&Containerd; 2], report: &mut Report) {
    println!(
        "== block 1: ctr run --rm /bin/true ({} iterations)",
        cfg.run_iters
    );
    let mut floor = floor::RuncFloor::new();
    let mut row = Row::new(
        "`ctr run --rm` busybox `/bin/true`",
        Unit::Millis,
        Some(0.5),
    );
    let mut version = Row::new(
        "`ctr version` round trip (client floor)",
        Unit::Millis,
        None,
    );
    let mut plain = Samples::default();
    let mut overlay = Samples::default();
    let once = |d: &Containerd| {
        let id = d.new_id("rm");
        let t = Instant::now();
        let out = d.ctr_run(&["--rm"], &id, &["/bin/true"]);
        let el = t.elapsed();
        assert!(
            out.success(),
            "{}: ctr run --rm failed: {}",
            label(Target {
                daemon: d.daemon(),
                runtime: d.runtime()
            }),
            out.describe()
        );
        el
    };
    // Warm-up: page cache, first-use paths in both daemons.
    for d in daemons {
        once(d);
        once(d);
    }
    floor.run_plain();
    floor.run_overlay();
    report.quiet(cfg, "run --rm");
    for i in 0..cfg.run_iters {
        if i > 0 && i % 10 == 0 {
            report.quiet(cfg, "run --rm (cont.)");
        }
        for d in daemons {
            let target = Target {
                daemon: d.daemon(),
                runtime: d.runtime(),
            };
            side(&mut row, target).push(ms(once(d)));
            let t = Instant::now();
            d.ctr().ok(&["version"]);
            side(&mut version, target).push(ms(t.elapsed()));
        }
        plain.push(ms(floor.run_plain()));
        overlay.push(ms(floor.run_overlay()));
    }
    println!("{}", stats::table(std::slice::from_ref(&row)));
    report.rows.push(row);
    report.rows.push(version);
    report.floor.push(Single {
        figure: "`runc run` of the same rootfs, `/bin/true` (prepared dir)".into(),
        unit: Unit::Millis,
        samples: plain,
    });
    report.floor.push(Single {
        figure: "`runc run` + overlay mount/unmount each time".into(),
        unit: Unit::Millis,
        samples: overlay,
    });
}

/// The CRI block's table: its columns hold other processes than the `ctr` blocks'.
fn cri_table(rows: &[Row]) -> String {
    stats::table_with(
        rows,
        "containerd 1.6 CRI plugin + runc-v2 shims",
        "corral-cri + corrald + corral shims",
    )
}

/// Memory of one process: (Pss kB, anonymous kB, threads, VmRSS kB).
fn mem_of(pid: u32) -> (f64, f64, f64, f64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (
        field(&rollup, "Pss:"),
        field(&rollup, "Anonymous:"),
        field(&status, "Threads:"),
        field(&status, "VmRSS:"),
    )
}

fn running(d: &Containerd, timeout: Duration) -> Option<usize> {
    let out = d.ctr().with_timeout(timeout).run(&["tasks", "ls"]);
    out.success().then(|| {
        parse_tasks_ls(&out.stdout_str())
            .iter()
            .filter(|t| t.status == "RUNNING")
            .count()
    })
}

/// Rows of blocks 2, 3 and 5, filled round by round.
struct FiftyRows {
    start: Row,
    pss: Row,
    anon: Row,
    threads: Row,
    pss_total: Row,
    daemon_rss_idle: Row,
    daemon_rss: Row,
    restart: Row,
    teardown: Row,
    daemon_rss_after: Row,
}

/// Concurrent `ctr tasks rm -f` + `ctr containers rm` of `ids`; the outputs of all calls.
fn remove_all(d: &Containerd, ids: &[String]) -> Vec<CtrOutput> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                s.spawn(move || {
                    let a = d.ctr().run(&["tasks", "rm", "-f", id]);
                    let b = d.ctr().run(&["containers", "rm", id]);
                    [a, b]
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// One round of blocks 2, 3 and 5 on one daemon. A failed sanity check ends the round with
/// an error (the caller notes it and removes what is left); samples taken so far stay.
fn fifty_round(
    cfg: &Config,
    d: &mut Containerd,
    ids: &[String],
    rows: &mut FiftyRows,
    report: &mut Report,
) -> Result<(), String> {
    let target = Target {
        daemon: d.daemon(),
        runtime: d.runtime(),
    };
    let n = ids.len();
    let daemon_pid = d.pid().ok_or("the daemon is not running")?;
    side(&mut rows.daemon_rss_idle, target).push(settled_rss(daemon_pid) / 1024.0);

    // 2. N concurrent `ctr run -d`.
    report.quiet(cfg, &format!("{n} × run -d, {}", label(target)));
    let t = Instant::now();
    let outs: Vec<_> = {
        let d: &Containerd = d;
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| s.spawn(move || d.ctr_run(&["-d"], id, &["sleep", "1000"])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let el = t.elapsed();
    if let Some(o) = outs.iter().find(|o| !o.success()) {
        return Err(format!("ctr run -d failed: {}", o.describe()));
    }
    let up = running(d, Duration::from_secs(30));
    if up != Some(n) {
        return Err(format!(
            "{up:?} of {n} tasks RUNNING after all ctr run -d succeeded"
        ));
    }
    side(&mut rows.start, target).push(el.as_secs_f64());

    let shims: Vec<u32> = leaks::shim_processes(d.namespace(), None)
        .into_iter()
        .filter(|p| p.action().is_none())
        .map(|p| p.pid)
        .collect();
    let mut total = 0.0;
    for &pid in &shims {
        let (pss, anon, threads, _) = mem_of(pid);
        side(&mut rows.pss, target).push(pss / 1024.0);
        side(&mut rows.anon, target).push(anon / 1024.0);
        side(&mut rows.threads, target).push(threads);
        total += pss / 1024.0;
    }
    side(&mut rows.pss_total, target).push(total);
    if shims.len() != n {
        report.notes.push(format!(
            "{}: found {} serving shim processes for {n} containers",
            label(target),
            shims.len()
        ));
    }
    side(&mut rows.daemon_rss, target).push(mem_of(daemon_pid).3 / 1024.0);

    // 3. kill -9 and restart.
    report.quiet(cfg, &format!("restart, {}", label(target)));
    d.kill_9();
    let t = Instant::now();
    d.relaunch_no_wait();
    loop {
        if running(d, Duration::from_secs(10)) == Some(n) {
            break;
        }
        if t.elapsed() > RESTART_TIMEOUT {
            return Err(format!(
                "not all {n} tasks RUNNING {RESTART_TIMEOUT:?} after a restart; log:\n{}",
                d.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    side(&mut rows.restart, target).push(ms(t.elapsed()));

    // 5. Teardown.
    report.quiet(cfg, &format!("teardown, {}", label(target)));
    let t = Instant::now();
    let outs = remove_all(d, ids);
    let el = t.elapsed();
    if let Some(o) = outs.iter().find(|o| !o.success()) {
        return Err(format!("teardown failed: {}", o.describe()));
    }
    let left = d.ctr().ok(&["containers", "ls", "-q"]);
    if !left.trim().is_empty() {
        return Err(format!("containers left after teardown:\n{left}"));
    }
    side(&mut rows.teardown, target).push(el.as_secs_f64());
    let daemon_pid = d.pid().ok_or("the daemon is not running")?;
    side(&mut rows.daemon_rss_after, target).push(settled_rss(daemon_pid) / 1024.0);
    Ok(())
}

/// A daemon's VmRSS (kB) once it has stopped changing: sampled every 250 ms until two samples
/// in a row agree within 1%, at most 5 s (memory a daemon gives back after a burst, it gives
/// back within moments; what it keeps is what this row is about).
fn settled_rss(pid: u32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = mem_of(pid).3;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = mem_of(pid).3;
        if (now - last).abs() <= last * 0.01 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Blocks 2, 3, 5: `rounds` rounds, containerd then corrald in each.
fn fifty_blocks(cfg: &Config, daemons: [&mut Containerd; 2], report: &mut Report) {
    let n = cfg.containers;
    println!("== blocks 2, 3, 5: {n} containers ({} rounds)", cfg.rounds);
    let mut rows = FiftyRows {
        start: Row::new(
            format!("{n} × `ctr run -d` concurrently (wall)"),
            Unit::Seconds,
            None,
        ),
        pss: Row::new("shim Pss (median over shims)", Unit::MegaBytes, Some(0.25)),
        anon: Row::new("shim anonymous memory (median)", Unit::MegaBytes, None),
        threads: Row::new("shim threads (median)", Unit::Count, None),
        pss_total: Row::new(format!("Pss of all {n} shims"), Unit::MegaBytes, None),
        daemon_rss_idle: Row::new("daemon RSS idle, before the tasks", Unit::MegaBytes, None),
        daemon_rss: Row::new(
            format!("daemon RSS with {n} tasks"),
            Unit::MegaBytes,
            Some(0.25),
        ),
        restart: Row::new(
            format!("restart after kill -9 until {n} RUNNING"),
            Unit::Millis,
            Some(0.5),
        ),
        teardown: Row::new(
            format!("teardown of {n} (`tasks rm -f`, `containers rm`, concurrent)"),
            Unit::Seconds,
            None,
        ),
        daemon_rss_after: Row::new(
            format!("daemon RSS after the {n} are removed"),
            Unit::MegaBytes,
            None,
        ),
    };
    let [a, b] = daemons;
    for r in 0..cfg.rounds {
        println!("  round {}/{}", r + 1, cfg.rounds);
        for d in [&mut *a, &mut *b] {
            let ids: Vec<String> = (0..n).map(|_| d.new_id("c")).collect();
            if let Err(e) = fifty_round(cfg, d, &ids, &mut rows, report) {
                let what = label(Target {
                    daemon: d.daemon(),
                    runtime: d.runtime(),
                });
                eprintln!("  {what}: round {} failed: {e}", r + 1);
                report.notes.push(format!(
                    "**Round {} on {what} failed** (its remaining samples are missing): {}",
                    r + 1,
                    e.lines().take(12).collect::<Vec<_>>().join(" / ")
                ));
                remove_all(d, &ids);
            }
        }
    }
    let FiftyRows {
        start,
        pss,
        anon,
        threads,
        pss_total,
        daemon_rss_idle,
        daemon_rss,
        restart,
        teardown,
        daemon_rss_after,
    } = rows;
    let all = [
        start,
        pss,
        anon,
        threads,
        pss_total,
        daemon_rss_idle,
        daemon_rss,
        restart,
        teardown,
        daemon_rss_after,
    ];
    println!("{}", stats::table(&all));
    report.rows.extend(all);
}

const PHASES_INTRO: &str = "\n## Phases of one `ctr run --rm` busybox `/bin/true`\n\n\
Separate daemons whose `runc` and shim binaries are wrapped by a small C program that logs each \
call's start and end on the monotonic clock (see bench/src/phases.rs); the client's start and end \
are read on the same clock. Each phase runs from the end of the previous mark to the start of the \
next. The wrapper adds a fork and a wait to each wrapped call on both sides. corral's shim makes \
no `runc start` (it releases the init through runc's exec fifo itself) and no `runc delete` of a \
stopped container whose deletion is only its cgroups and runc's directory (it removes them \
itself), so its `start` and `delete` rows are empty and one row spans `runc create` to the \
client's exit. The second last row is corral's time above the runc floor (the runc calls each \
runtime made) beside containerd's (issue 16: at most 0.3x); the last takes only `runc create` as \
the floor for both.\n\n";

const CRI_INTRO: &str = "\n## Kubernetes CRI: corral-cri + corrald beside containerd's CRI plugin\n\n\
containerd 1.6 serving CRI from its in-process plugin (`io.containerd.grpc.v1.cri`, shims \
`containerd-shim-runc-v2`, one per pod) against corral-cri as a client of corrald (shims \
`containerd-shim-corral-v1`). Both driven by this process through the CRI API (one HTTP/2 \
connection per runtime, as kubelet keeps), the same pod and container configs, the same CNI chain \
(bridge + host-local, portmap, loopback) on a bridge of each runtime's own, our pause image as \
`registry.k8s.io/pause:3.10`, the busybox test image; runs interleaved containerd/corral. Memory \
counts the runtime's own processes (daemons and serving shims), not the pods' pause and `sleep` \
processes, which are the same on both sides.\n\n";

const CRITEST_INTRO: &str = "\n### `critest -benchmark` (cri-tools v1.36.0), both ways\n\n\
Run offline against the same two nodes after the figures above: containers from the busybox \
test image (with `top`, which critest's containers run), the pull benchmark's image from a local \
docker-registry over plain HTTP through each node's registry hosts directory, one sample at a \
time (`*NumberParallel: 1`). Per CRI call, from critest's `*_benchmark_data.json`; \
`whole sequence` is each sample's start to end.\n\n";

const CRI_NOTES: &str = "- CRI pod start: the four steps back to back, the pod removed (untimed) before the \
next; the `of which` rows split its median into the calls. The P pods: P concurrent start \
sequences on one connection, wall time until every one saw its container RUNNING. Memory with P \
pods is sampled right after they all run; after teardown, once every shim has exited.\n";

fn markdown(cfg: &Config, host: &[(String, String)], report: &Report, took: Duration) -> String {
    let mut s = String::new();
    s.push_str("# corral beside containerd: side-by-side benchmark\n\n");
    s.push_str(
        "Generated by `corral-bench` (`make bench`, see bench/src/main.rs). containerd 1.6 with its \
         Go shim (`io.containerd.runc.v2`) against corrald with the corral shim \
         (`io.containerd.corral.v1`), both on private paths, logging at `info`, driven by the same \
         `ctr`, runs interleaved containerd/corrald; the Kubernetes CRI section drives \
         corral-cri and containerd's CRI plugin through the CRI API instead. Cells: median \
         (min–max, n). Ratio: corral / containerd of the medians; lower is better for every \
         row.\n\n",
    );
    s.push_str("## Host and versions\n\n| | |\n|---|---|\n");
    for (k, v) in host {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s.push_str(&format!(
        "| settings | BENCH_ROUNDS={} BENCH_RUN_ITERS={} BENCH_CONTAINERS={} BENCH_LAYER_MB={} \
         BENCH_CRI_STARTS={} BENCH_CRI_EXECS={} BENCH_CRI_PODS={} BENCH_CRITEST_N={} \
         BENCH_CRI_LOG_LEVEL={}{} |\n",
        cfg.rounds,
        cfg.run_iters,
        cfg.containers,
        cfg.layer_bytes / 1_000_000,
        cfg.cri.starts,
        cfg.cri.execs,
        cfg.cri.pods,
        cfg.cri.critest_n,
        cfg.cri.log_level,
        cfg.only
            .as_ref()
            .map(|o| format!(" BENCH_ONLY={}", o.join(",")))
            .unwrap_or_default()
    ));
    s.push_str(&format!("| duration | {:.0} s |\n\n", took.as_secs_f64()));
    s.push_str("## Results\n\n");
    let busy = report
        .quiet
        .iter()
        .filter(|q| q.idle < cfg.min_idle)
        .count();
    if busy * 2 > report.quiet.len() {
        s.push_str(&format!(
            "**The machine was busy** ({busy} of {} blocks started below {:.0}% CPU idle, see \
             the last section): timings and their ratios are not representative; memory \
             figures are.\n\n",
            report.quiet.len(),
            cfg.min_idle
        ));
    }

    if !report.rows.is_empty() {
        s.push_str(&stats::table(&report.rows));
    }
    if !report.floor.is_empty() {
        s.push_str("\n## Floor: runc alone (no daemon, no shim, no client)\n\n");
        s.push_str(&stats::single_table(&report.floor));
    }
    if !report.phases.is_empty() {
        s.push_str(PHASES_INTRO);
        s.push_str(&stats::table(&report.phases));
    }
    if !report.cri.is_empty() {
        s.push_str(CRI_INTRO);
        s.push_str(&cri_table(&report.cri));
        if !report.cri_parts.is_empty() {
            s.push_str("\ncorral's two daemons apart:\n\n");
            s.push_str(&stats::single_table(&report.cri_parts));
        }
    }
    if !report.cri_floor.is_empty() {
        s.push_str(
            "\n### Floor under a pod start: CNI plugins and runc alone (no daemon, no shim, no \
             client)\n\nMeasured between the pod starts above (see bench/src/crifloor.rs). Not \
             counted: the network namespace, the overlay mounts, shim start-up, the pod's files.\n\n",
        );
        s.push_str(&stats::single_table(&report.cri_floor));
    }
    if !report.critest.is_empty() {
        s.push_str(CRITEST_INTRO);
        s.push_str(&cri_table(&report.critest));
    }
    let missed: Vec<&Row> = report
        .rows
        .iter()
        .chain(&report.phases)
        .chain(&report.cri)
        .filter(|r| matches!((r.target, r.ratio()), (Some(t), Some(x)) if x > t))
        .collect();
    s.push_str("\n## Notes\n\n");
    for r in &missed {
        s.push_str(&format!(
            "- Target missed: {} — {:.2}x, target ≤ {:.2}x.\n",
            r.figure,
            r.ratio().unwrap_or(f64::NAN),
            r.target.unwrap_or(f64::NAN)
        ));
    }
    for n in &report.notes {
        s.push_str(&format!("- {n}\n"));
    }
    if !report.cri.is_empty() {
        s.push_str(CRI_NOTES);
    }
    if cfg.wants("fifty") {
        s.push_str(
        "- Restart is timed from starting the daemon (right after kill -9) until a `ctr tasks ls` \
         lists every task RUNNING; probes run back to back, so the resolution is one `ctr` round \
         trip (see the `ctr version` row).\n",
        );
    }
    s.push_str("\n## Machine load before each block\n\n");
    s.push_str(&format!(
        "Wanted ≥ {:.0}% CPU idle over 1 s before each block, waiting at most {} s; {} of {} \
         blocks started on a busier machine.\n\n",
        cfg.min_idle,
        cfg.quiet_cap.as_secs(),
        busy,
        report.quiet.len()
    ));
    s.push_str(
        "`idle during` is the CPUs' idle share from the block's start to the next block's wait, \
         the bench's own load included: a serial block keeps at most about one core busy by \
         itself, so idle well below that share means other work ran beside it.\n\n",
    );
    s.push_str(
        "| block | CPU idle % before | idle % during | load (1 min) | waited |\n|---|---|---|---|---|\n",
    );
    for q in &report.quiet {
        s.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {:.1} s |\n",
            q.block,
            q.idle,
            q.during.map(|d| format!("{d:.0}")).unwrap_or("—".into()),
            q.load1,
            q.waited.as_secs_f64()
        ));
    }
    s
}

/// Runs a block; if it panics (a sanity check failed), notes that in the report so that what
/// was measured before is still written.
fn guarded(report: &mut Report, block: &str, f: impl FnOnce(&mut Report)) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(report)));
    if let Err(p) = result {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        report.notes.push(format!(
            "**Block \"{block}\" aborted** (its remaining figures are missing): {}",
            msg.lines().take(12).collect::<Vec<_>>().join(" / ")
        ));
    }
}

fn main() {
    if !integration::require_root() {
        eprintln!("corral-bench needs root (it mounts, runs runc and containerd)");
        std::process::exit(2);
    }
    let cfg = Config::from_env();
    let started = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let corrald = integration::corrald::corrald_path();
    let shim = integration::corral_shim_path();
    assert!(
        corrald.is_file(),
        "corrald not found at {} (set CORRALD_BIN to a release build)",
        corrald.display()
    );
    let host = host::describe(&corrald, &shim, &workspace);
    for (k, v) in &host {
        println!("{k}: {v}");
    }
    let mut report = Report {
        rows: Vec::new(),
        floor: Vec::new(),
        phases: Vec::new(),
        cri: Vec::new(),
        cri_parts: Vec::new(),
        critest: Vec::new(),
        cri_floor: Vec::new(),
        notes: Vec::new(),
        quiet: Vec::new(),
    };
    if cfg.wants("run") || cfg.wants("fifty") {
        guarded(&mut report, "run --rm / 50 containers", |report| {
            let mut a = Containerd::start_with(CONTAINERD, BENCH_OPTIONS);
            let mut b = Containerd::start_with(CORRALD, BENCH_OPTIONS);
            if cfg.wants("run") {
                run_rm_block(&cfg, &[&a, &b], report);
            }
            if cfg.wants("fifty") {
                fifty_blocks(&cfg, [&mut a, &mut b], report);
            }
        });
    }
    if cfg.wants("run") {
        guarded(&mut report, "phases", |report| phases::block(&cfg, report));
    }
    if cfg.wants("pull") {
        guarded(&mut report, "pull", |report| pull::block(&cfg, report));
    }
    if cfg.wants("cri") {
        guarded(&mut report, "cri", |report| cri::block(&cfg, report));
    }
    report.close_block();
    let md = markdown(&cfg, &host, &report, started.elapsed());
    println!("\n{md}");
    std::fs::create_dir_all(&cfg.out_dir).expect("cannot create the results dir");
    let name = match &cfg.only {
        Some(blocks) => format!("{}-{}.md", host::today(), blocks.join("-")),
        None => format!("{}.md", host::today()),
    };
    let out = cfg.out_dir.join(name);
    std::fs::write(&out, &md).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    println!("written to {}", out.display());
}
