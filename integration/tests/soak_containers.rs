//! Long run (`make soak`, not `make test`): 1,000 containers created, started, exec'd and
//! removed through corrald with our shim, in waves of 50 (each step for the whole wave at
//! once). At the end corrald's RSS, open files and threads are within 10 % of what they were
//! after a first warm-up wave, and nothing is left: no shim, container process, mount, cgroup,
//! shim socket, bundle or runc state, no container, task or snapshot in corrald.
//!
//! Knobs: `SOAK_CONTAINERS` (1000), `SOAK_WAVE` (50). Each wave's figures are printed (run with
//! `--nocapture`, as `make soak` does).

mod churn;

use std::time::{Duration, Instant};

use integration::containerd::Options;
use integration::procstat::{self, ProcStats};
use integration::{Containerd, Daemon, Runtime, Target, leaks, require_root, try_wait_until};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "soak: run with `make soak`"]
fn a_thousand_containers_in_waves_of_fifty() {
    if !require_root() {
        return;
    }
    let total = knob("SOAK_CONTAINERS", 1000);
    let wave = knob("SOAK_WAVE", 50).max(1);
    let d = Containerd::start_with(
        Target {
            daemon: Daemon::Corrald,
            runtime: Runtime::Corral,
        },
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    let pid = d.pid().unwrap();
    let stats = || procstat::of(pid).expect("corrald is running");
    let fresh = stats();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let churn = rt.block_on(churn::Churn::new(&d));
    let (_, _, layers) = rt.block_on(churn.counts());

    // Remembered by the guard: its leak checks and its clean-up cover them all.
    let ids =
        |prefix: &str, n: usize| -> Vec<String> { (0..n).map(|_| d.new_id(prefix)).collect() };
    let began = Instant::now();
    rt.block_on(churn.wave(&ids("warmup", wave)))
        .unwrap_or_else(|e| panic!("warm-up wave: {e}"));
    let start = churn::settled(&stats, None);
    eprintln!("soak: corrald fresh: {fresh}; after a warm-up wave of {wave}: {start}");

    let mut done = 0;
    let mut peak = start;
    let mut n = 0;
    while done < total {
        let this = wave.min(total - done);
        let t = Instant::now();
        rt.block_on(churn.wave(&ids("soak", this)))
            .unwrap_or_else(|e| panic!("wave {n} (after {done} containers): {e}"));
        done += this;
        n += 1;
        let now = stats();
        peak = ProcStats {
            rss_kib: peak.rss_kib.max(now.rss_kib),
            fds: peak.fds.max(now.fds),
            threads: peak.threads.max(now.threads),
        };
        eprintln!(
            "soak: wave {n}: {this} containers in {:.1} s ({done}/{total}); corrald {now}",
            t.elapsed().as_secs_f64()
        );
    }
    let churned = began.elapsed();
    let end = churn::settled(&stats, Some(start));
    eprintln!(
        "soak: {done} containers (+{wave} warm-up) in {:.0} s; corrald start {start}, peak {peak}, end {end}",
        churned.as_secs_f64()
    );
    assert!(
        procstat::within(
            start,
            end,
            10,
            ProcStats {
                rss_kib: 0,
                fds: 0,
                threads: 0
            }
        ),
        "corrald after {done} containers: {end}, more than 10 % above {start} (peak {peak})"
    );

    let (containers, tasks, snapshots) = rt.block_on(churn.counts());
    assert_eq!((containers, tasks), (0, 0), "left in corrald");
    assert_eq!(snapshots, layers, "snapshots left in corrald");
    let ids = d.ids();
    let found = try_wait_until(Duration::from_secs(30), || {
        let l = leaks::find_leaks(&d, &ids);
        l.is_empty().then_some(())
    });
    if found.is_none() {
        let l: Vec<String> = leaks::find_leaks(&d, &ids)
            .iter()
            .map(ToString::to_string)
            .collect();
        panic!("left behind after {done} containers:\n  {}", l.join("\n  "));
    }
}
