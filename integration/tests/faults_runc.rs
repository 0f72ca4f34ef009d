//! Faults of the runtime (issue 14, item 3): a `runc` stand-in, chosen through the runc
//! options' `BinaryName`, that fails (exit 1, its message on stderr and in runc's JSON log),
//! hangs (sleeps until killed) or is killed (SIGKILLs itself) at `create`, `start`, `exec`,
//! `kill` or `delete`, and runs the real runc otherwise.
//!
//! For each (subcommand × fault): the client gets an error naming the runc subcommand within
//! the call's deadline, the hung runc is gone, the task can then be cleaned up, the same
//! container gets a working task with the real runc, and nothing is left (shim, mount, bundle,
//! cgroup, runc state). Under corrald, with our shim and with containerd's runc-v2 shim (which
//! has no bound of its own on a hung runc beyond the daemon's ttrpc deadline, so it runs the
//! failing and killed cases only).
//!
//! Our shim bounds each runc call ([`RUNC_TIMEOUT`] here, through corrald's environment).
//! The stand-in reads its fault from a file of the case's own at every call, so the test
//! turns a fault on right before the call under test and off right after it. For the `start`
//! cases it also hides runc's exec fifo between `create` and `start`: with the fifo there, our
//! shim releases the init itself and runs no `start` (issue 16). The `delete` cases delete a
//! created task (`runc delete --force`): a stopped container our shim deletes without runc.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::containerd::Options as DaemonOptions;
use integration::{Containerd, IMAGE_REF, Runtime, Target, api, corrald_runtime_tests};
use integration::{require_root, wait_until};
use protocol::grpc::tonic::Code;
use protocol::options::Options;

/// The bound of our shim's runc calls in these tests.
const RUNC_TIMEOUT: &str = "2s";
/// Longest a faulty call may take to answer: the bound, plus the shim's and daemon's work on
/// a loaded two-core machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(12);
const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Fail,
    Hang,
    Killed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Create,
    Start,
    Exec,
    Kill,
    Delete,
}

impl Step {
    /// The runc subcommand the step runs.
    fn runc(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Start => "start",
            Step::Exec => "exec",
            Step::Kill => "kill",
            Step::Delete => "delete",
        }
    }
}

const STEPS: [Step; 5] = [
    Step::Create,
    Step::Start,
    Step::Exec,
    Step::Kill,
    Step::Delete,
];
const FAULTS: [Fault; 3] = [Fault::Fail, Fault::Hang, Fault::Killed];

/// A faulty runc of one case: the script, the file that switches its fault on, and where a
/// hung call writes the pid of its `sleep`.
struct FaultyRunc {
    script: PathBuf,
    fault_file: PathBuf,
    hang_pid: PathBuf,
}

impl FaultyRunc {
    /// `hide_fifo`: after `create`, move runc's exec fifo aside (put back by `start`), as a
    /// runtime without one, so that our shim runs `start` (with the fifo it releases the
    /// init itself, and a fault at `start` would never be met).
    fn new(dir: &Path, tag: &str, hide_fifo: bool) -> FaultyRunc {
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("runc installed");
        let me = FaultyRunc {
            script: dir.join(format!("runc-{tag}")),
            fault_file: dir.join(format!("fault-{tag}")),
            hang_pid: dir.join(format!("hang-{tag}.pid")),
        };
        // The subcommand is runc's first argument that is neither a global flag nor the value
        // of one (`--root R --log L --log-format json [--systemd-cgroup] <sub> …`).
        let script = format!(
            r#"#!/bin/sh
fault=$(cat {fault} 2>/dev/null)
want=${{fault% *}}; what=${{fault#* }}
log= root= sub= skip= id=
for a in "$@"; do
    if [ -n "$skip" ]; then
        [ "$skip" = --log ] && log=$a; [ "$skip" = --root ] && root=$a; skip=; continue
    fi
    case "$a" in
        --root|--log|--log-format|--criu|--rootless) skip=$a ;;
        -*) ;;
        *) sub=$a; break ;;
    esac
done
for a in "$@"; do id=$a; done
fifo="$root/$id/exec.fifo"
if [ -n "{hide}" ] && [ "$sub" = start ] && [ -p "$fifo.hidden" ]; then mv "$fifo.hidden" "$fifo"; fi
if [ -n "{hide}" ] && [ "$sub" = create ]; then
    {runc} "$@" || exit $?
    mv "$fifo" "$fifo.hidden"
    exit $?
fi
if [ -n "$fault" ] && [ "$sub" = "$want" ]; then
    case "$what" in
        fail)
            msg="injected fault: runc $sub refuses"
            echo "$msg" >&2
            [ -n "$log" ] && printf '{{"level":"error","msg":"%s","time":"2024-01-01T00:00:00Z"}}\n' "$msg" >>"$log"
            exit 1 ;;
        hang)
            sleep 100000 &
            echo $! >{hang_pid}
            wait
            exit 1 ;;
        killed)
            kill -9 $$ ;;
    esac
fi
exec {runc} "$@"
"#,
            fault = me.fault_file.display(),
            hang_pid = me.hang_pid.display(),
            runc = runc.display(),
            hide = if hide_fifo { "yes" } else { "" },
        );
        fs::write(&me.script, script).expect("write the runc stand-in");
        fs::set_permissions(&me.script, fs::Permissions::from_mode(0o755)).expect("chmod");
        me
    }

    fn arm(&self, step: Step, fault: Fault) {
        let what = match fault {
            Fault::Fail => "fail",
            Fault::Hang => "hang",
            Fault::Killed => "killed",
        };
        fs::write(&self.fault_file, format!("{} {what}", step.runc())).expect("arm the fault");
    }

    fn disarm(&self) {
        fs::remove_file(&self.fault_file).expect("disarm the fault");
    }

    /// Runs `call` with the fault armed; checks that it failed in time with an error naming
    /// the runc subcommand (and, with our shim, the right code and cause).
    fn expect_fault<T: std::fmt::Debug>(
        &self,
        runtime: Runtime,
        step: Step,
        fault: Fault,
        call: impl FnOnce() -> Result<T, protocol::grpc::tonic::Status>,
    ) {
        let _ = fs::remove_file(&self.hang_pid);
        self.arm(step, fault);
        let t0 = Instant::now();
        let res = call();
        let took = t0.elapsed();
        self.disarm();
        let case = format!("{step:?} × {fault:?} with {runtime:?}");
        let err = res.expect_err(&format!("{case}: the call succeeded"));
        assert!(
            took < ANSWER_WITHIN,
            "{case}: the error came after {took:?}: {err:?}"
        );
        let msg = err.message();
        assert!(
            msg.contains(step.runc()),
            "{case}: the error does not name runc {}: {err:?}",
            step.runc()
        );
        if runtime == Runtime::Corral {
            let (code, cause) = match fault {
                Fault::Fail => (Code::Unknown, "injected fault: runc"),
                Fault::Hang => (Code::DeadlineExceeded, "did not finish within"),
                Fault::Killed => (Code::Unknown, "killed by signal 9"),
            };
            assert_eq!(err.code(), code, "{case}: {err:?}");
            assert!(msg.contains(cause), "{case}: no {cause:?} in {err:?}");
        }
        if fault == Fault::Hang {
            let pid: u32 = fs::read_to_string(&self.hang_pid)
                .expect("the hung runc wrote its sleep's pid")
                .trim()
                .parse()
                .expect("a pid");
            wait_until(&format!("{case}: the hung runc's sleep to die"), T, || {
                gone(pid).then_some(())
            });
        }
    }
}

/// True when `pid` no longer runs (gone or a zombie).
fn gone(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

/// One case: a container whose task meets `fault` at `step`; afterwards its task is cleaned
/// up and it runs a task with the real runc.
fn run_case(d: &Containerd, step: Step, fault: Fault) {
    let runtime = d.runtime();
    let tag = format!("{}-{:?}-{:?}", d.namespace(), step, fault).to_lowercase();
    let runc = FaultyRunc::new(d.dir(), &tag, step == Step::Start);
    let id = d.new_id(&format!("{:?}{:?}", step, fault).to_lowercase());
    d.ctr().ok(&[
        "containers",
        "create",
        "--runtime",
        runtime.name(),
        IMAGE_REF,
        &id,
        "--",
        "sleep",
        "1000",
    ]);
    let api = d.api();
    let options = || {
        Some(api::runc_options(&Options {
            binary_name: runc.script.display().to_string(),
            ..Default::default()
        }))
    };
    let stop = |api: &integration::Api| {
        api.kill(&id, libc::SIGKILL as u32);
        assert_eq!(api.wait(&id), 137);
    };
    if step == Step::Create {
        runc.expect_fault(runtime, step, fault, || api.create_task(&id, options()));
    } else {
        api.create_task(&id, options())
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        match step {
            Step::Start => {
                runc.expect_fault(runtime, step, fault, || api.try_start(&id, ""));
                // The created task is deleted (runc delete kills its init).
                api.try_delete_task(&id)
                    .unwrap_or_else(|e| panic!("delete {id} after a failed start: {e}"));
            }
            Step::Exec => {
                api.start_task(&id);
                api.exec(&id, "e1", &["sleep", "1000"])
                    .unwrap_or_else(|e| panic!("exec in {id}: {e}"));
                runc.expect_fault(runtime, step, fault, || api.try_start(&id, "e1"));
                api.try_delete_process(&id, "e1")
                    .unwrap_or_else(|e| panic!("delete the failed exec of {id}: {e}"));
                stop(&api);
                api.delete_task(&id);
            }
            Step::Kill => {
                api.start_task(&id);
                runc.expect_fault(runtime, step, fault, || api.try_kill(&id, 9));
                stop(&api);
                api.delete_task(&id);
            }
            // Of a created task: a stopped one with a PID namespace of its own is deleted by
            // our shim without runc (issue 16), so no fault would be met.
            Step::Delete => {
                runc.expect_fault(runtime, step, fault, || api.try_delete_task(&id));
                api.delete_task(&id);
            }
            Step::Create => unreachable!("handled above"),
        }
    }
    // The next task, with the real runc, works.
    api.create_task(&id, None)
        .unwrap_or_else(|e| panic!("{step:?} × {fault:?}: a task with the real runc: {e}"));
    api.start_task(&id);
    stop(&api);
    api.delete_task(&id);
    d.ctr().ok(&["containers", "rm", &id]);
}

/// Every (step × fault) case on one daemon, in parallel: each case has its own container and
/// stand-in.
fn runc_faults(t: Target) {
    if !require_root() {
        return;
    }
    let d = Containerd::start_with(
        t,
        DaemonOptions {
            runc_timeout: Some(RUNC_TIMEOUT),
            ..Default::default()
        },
    );
    let cases: Vec<(Step, Fault)> = STEPS
        .iter()
        .flat_map(|&s| FAULTS.iter().map(move |&f| (s, f)))
        // runc-v2 bounds a hung runc only by the daemon's ttrpc deadline (10 s to a minute).
        .filter(|&(_, f)| t.runtime == Runtime::Corral || f != Fault::Hang)
        .collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let d = &d;
        let handles: Vec<_> = cases
            .iter()
            .map(|&(step, fault)| s.spawn(move || run_case(d, step, fault)))
            .collect();
        let failed: Vec<String> = handles
            .into_iter()
            .zip(&cases)
            .filter_map(|(h, c)| h.join().err().map(|_| format!("{c:?}")))
            .collect();
        assert!(failed.is_empty(), "failed cases: {failed:?}");
    });
    eprintln!("{} cases in {:?}", cases.len(), t0.elapsed());
    d.assert_no_leaks();
}

corrald_runtime_tests!(runc_faults);
