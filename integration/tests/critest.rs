//! critest (cri-tools v1.36.0, the CRI validation suite kubelet's runtimes are held to) against
//! corral-cri on a private corrald, offline: look-alike images in a local registry, the three
//! registries critest pulls from mirrored to it (see `integration::critest`).
//!
//! Every test must pass, except:
//! - [`NOT_RUN`]: left out with `-ginkgo.skip`, as they cannot run here at all;
//! - [`SKIP`]: run, and not expected to pass on this host or before a later issue (each with
//!   why);
//! - [`KNOWN_FAILURES`]: what corral-cri fails today;
//! - [`RACY`]: tests whose outcome is a race today (a bug each), accepted either way.
//!
//! The streaming tests (exec, attach, port-forward) run twice: over SPDY with the rest, then
//! over WebSocket (their names end in `critest::WEBSOCKET_SUFFIX` in the report).
//!
//! [`SKIP`] and [`KNOWN_FAILURES`] are checked exactly: a listed test that passes fails this
//! test (take it off the list), and so does a test that fails without being listed. critest's
//! output and JSON report are kept in `target/critest/` (`corral-cri.log`,
//! `corral-cri-report.json`).
//!
//! One run takes a minute and a half (critest runs its tests one at a time); it uses the fixed
//! host ports 12000-12003, so it must be the only critest on the machine.

use std::collections::BTreeSet;

use integration::critest::{self, Options, Outcome, Target};
use integration::require_root;

/// Left out of the run (`-ginkgo.skip`, regular expressions on the test names).
const NOT_RUN: &[(&str, &str)] = &[
    // The 9 AppArmor tests: this host has no AppArmor (critest would skip them itself).
    // `critest::SKIP_APPARMOR`, which every run passes.
    (critest::SKIP_APPARMOR, "no AppArmor on this host"),
    // It pulls upstream's image by its pinned digest, which no look-alike can have; the
    // mirrors miss it and the pull would go on to the real gcr.io (hosts.toml's `server`): a
    // test must not reach the internet.
    (
        "public image with digest should be pulled and removed",
        "pinned digest of upstream's image",
    ),
];

/// Run, but not expected to pass: each for a reason outside what corral-cri can do now.
const SKIP: &[(&str, &str)] = &[
    // None today: the streaming tests, the last ones here, pass since issue 15.
];

/// What corral-cri fails today (issue 11), by cause as critest reports it. Fix one, and take it
/// off this list: the test fails while a listed test passes.
const KNOWN_FAILURES: &[&str] = &[];

/// Tests whose outcome is a race today; either outcome is accepted. Each is a bug to fix.
const RACY: &[(&str, &str)] = &[
    // PullImage with a 1 ms deadline must end in DeadlineExceeded. tonic's server enforces the
    // client's grpc-timeout itself and answers Cancelled ("Timeout expired"); corral-cri now
    // answers DeadlineExceeded itself 20 ms before the deadline, which wins unless the machine
    // delays the handler by more than that (seen passing every run since).
    (
        "[k8s.io] Image Manager public image should timeout if requested [Conformance]",
        "tonic's Cancelled can still win on a machine that stalls the handler",
    ),
];

#[test]
fn critest_passes_against_corral_cri() {
    if !require_root() {
        return;
    }
    let out = critest::busybox::cache_dir();
    std::fs::create_dir_all(&out).expect("cannot create target/critest");
    let mut flags = Vec::new();
    for (pattern, _) in NOT_RUN {
        flags.push(format!("-ginkgo.skip={pattern}"));
    }
    let run = critest::run(&Options {
        target: Target::Corral,
        preload: false,
        flags,
        log: Some(out.join("corral-cri.log")),
        report: Some(out.join("corral-cri-report.json")),
        websocket_streaming: true,
    });
    let report = &run.report;
    println!("{}", report.details());
    println!("critest against corral-cri: {}", report.summary());
    println!(
        "images built and pushed in {:.1?}; critest ran for {:.1?}",
        run.setup_time, run.critest_time
    );

    let names: BTreeSet<&str> = report.tests().map(|s| s.name.as_str()).collect();
    let expected_not_passing: BTreeSet<&str> = SKIP
        .iter()
        .map(|(n, _)| *n)
        .chain(KNOWN_FAILURES.iter().copied())
        .collect();
    let racy: BTreeSet<&str> = RACY.iter().map(|(n, _)| *n).collect();
    let mut problems = Vec::new();
    for name in expected_not_passing.iter().chain(&racy) {
        if !names.contains(name) {
            problems.push(format!("listed but not a critest test (renamed?): {name}"));
        }
    }
    assert!(
        report.tests().count() > 100,
        "critest ran only {} tests:\n{}",
        report.tests().count(),
        run.daemon_log
    );
    for spec in report.tests() {
        let listed = expected_not_passing.contains(spec.name.as_str());
        if racy.contains(spec.name.as_str()) {
            continue;
        }
        match spec.outcome {
            Outcome::Passed if listed => {
                problems.push(format!("passes now, take it off the list: {}", spec.name));
            }
            Outcome::Passed => {}
            Outcome::NotRun => {
                let filtered = NOT_RUN.iter().any(|(p, _)| spec.name.contains(p));
                if !filtered {
                    problems.push(format!("not run, and not in NOT_RUN: {}", spec.name));
                }
            }
            Outcome::Failed | Outcome::Skipped if listed => {}
            Outcome::Failed | Outcome::Skipped => problems.push(format!(
                "{}: {}\n      {}",
                if spec.outcome == Outcome::Failed {
                    "fails"
                } else {
                    "skipped by critest"
                },
                spec.name,
                spec.short_message()
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "critest against corral-cri ({}):\n{}\n\ncritest's output: {}\n{}",
        report.summary(),
        problems.join("\n"),
        out.join("corral-cri.log").display(),
        run.daemon_log
    );
}
