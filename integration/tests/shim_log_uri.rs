//! `ctr run --log-uri`: the process's output goes to a file (`file://`) or to a logger process
//! (`binary://`) instead of FIFOs, for each shim.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use integration::{Containerd, Runtime, Target, require_root, runtime_tests, wait_until};

fn file_uri_appends_stdout_and_stderr(rt: Target) {
    if !require_root() {
        return;
    }
    let ctrd = Containerd::start(rt);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/c.log");
    let uri = format!("file://{}", log.display());
    let id = ctrd.new_id("flog");
    let out = ctrd.ctr_run(
        &["--rm", "--log-uri", &uri],
        &id,
        &["sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert!(out.success(), "{}", out.describe());
    let text = fs::read_to_string(&log).unwrap();
    let complete = text.contains("to-out") && text.contains("to-err");
    // containerd's Go shim copies stdout and stderr into one shared file from two goroutines,
    // and one may close it under the other (containerd#3118): it then logs "error copying" and
    // the file misses a stream. That is the reference shim's bug, seen under load; only with
    // that evidence is a missing stream tolerated, and only for it.
    let known_go_shim_race =
        rt.runtime == Runtime::Runc && ctrd.log_tail(400).contains("error copying std");
    if !complete && known_go_shim_race {
        eprintln!("note: containerd-shim-runc-v2 lost a stream (containerd#3118): {text:?}");
    } else {
        assert!(complete, "{text:?}");
    }
    ctrd.assert_no_leaks();
}

fn binary_uri_feeds_a_logger_process(rt: Target) {
    if !require_root() {
        return;
    }
    let ctrd = Containerd::start(rt);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("logger.out");
    let logger = dir.path().join("logger.sh");
    // The logger protocol: stdout on fd 3, stderr on fd 4, close fd 5 when ready. Args come
    // from the URI query (`?out=<path>` → `out <path>`).
    fs::write(
        &logger,
        "#!/bin/sh\nexec 5>&-\ncat <&3 >>\"$2\" &\ncat <&4 >>\"$2\"\nwait\n",
    )
    .unwrap();
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?out={}", logger.display(), out_file.display());
    let id = ctrd.new_id("blog");
    let out = ctrd.ctr_run(
        &["--rm", "--log-uri", &uri],
        &id,
        &["sh", "-c", "echo via-logger; echo err-logger >&2"],
    );
    assert!(out.success(), "{}", out.describe());
    wait_until("logger wrote both streams", Duration::from_secs(10), || {
        let t = fs::read_to_string(&out_file).unwrap_or_default();
        (t.contains("via-logger") && t.contains("err-logger")).then_some(())
    });
    ctrd.assert_no_leaks();
}

runtime_tests!(
    file_uri_appends_stdout_and_stderr,
    binary_uri_feeds_a_logger_process
);
