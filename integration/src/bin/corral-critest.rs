//! `corral-critest [--containerd] [--preload] [--spdy-only] [--report FILE] [CRITEST FLAGS...]`: runs
//! critest (cri-tools' CRI validation suite) against corral-cri on a private corrald, offline:
//! look-alike test images in a local registry, registry.k8s.io, gcr.io and k8s.gcr.io mirrored
//! to it (see `integration::critest`). `make critest` runs it.
//!
//! - `--containerd`: against containerd 1.6's own CRI plugin instead, with the same images and
//!   mirrors (`make critest-containerd`), for comparison.
//! - `--preload`: import every image into the runtime first, so that tests which do not pull
//!   themselves run even when the daemon cannot pull through the mirrors.
//! - `--report FILE`: keep ginkgo's JSON report there.
//! - `--spdy-only`: run the streaming tests over SPDY only; by default they run a second time
//!   over WebSocket (`-websocket-exec -websocket-attach -websocket-portforward`), reported
//!   with ` [websocket]` after their names.
//! - Anything else is passed to critest: `-ginkgo.focus REGEX`, `-ginkgo.v`, …
//!
//! critest's output goes to the terminal; then a summary (passed, failed, skipped, with the
//! names and causes of failures). The exit status is non-zero when a test failed.

use std::process::ExitCode;

use integration::critest::{self, Options, Outcome, Target};

fn main() -> ExitCode {
    let mut options = Options {
        target: Target::Corral,
        preload: false,
        flags: Vec::new(),
        log: None,
        report: None,
        websocket_streaming: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--containerd" => options.target = Target::Containerd,
            "--preload" => options.preload = true,
            "--spdy-only" => options.websocket_streaming = false,
            "--report" => match args.next() {
                Some(p) => options.report = Some(p.into()),
                None => {
                    eprintln!("corral-critest: --report needs a file name");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!(
                    "usage: corral-critest [--containerd] [--preload] [--spdy-only] [--report FILE] [CRITEST FLAGS...]"
                );
                return ExitCode::SUCCESS;
            }
            _ => options.flags.push(a),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("corral-critest: needs root (it runs daemons, mounts and network namespaces)");
        return ExitCode::FAILURE;
    }
    let who = match options.target {
        Target::Corral => "corral-cri",
        Target::Containerd => "containerd 1.6 (CRI plugin)",
    };
    let run = critest::run(&options);
    println!("\n==== critest against {who} ====");
    print!("{}", run.report.details());
    println!("{}", run.report.summary());
    println!(
        "images built and pushed in {:.1?}; critest ran for {:.1?}",
        run.setup_time, run.critest_time
    );
    if run.report.count(Outcome::Failed) > 0 || !run.status.success() {
        if run.report.count(Outcome::Failed) == 0 {
            println!("critest exited with {}", run.status);
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
