//! Block 1's phase table: one `ctr run --rm` busybox `/bin/true` split into what the client and
//! daemon do, what the shim does, and what runc does, for both daemons, so that the table says
//! which part is runc's (the floor) and which is ours.
//!
//! A tiny C wrapper (built here with the system's C compiler) stands in front of `runc` and of
//! each shim binary: it forks and executes the real binary next to it (`<name>.real`, a
//! symlink), waits for it, and appends one line to `phases.log` beside itself:
//! `<name> <monotonic start ns> <monotonic end ns> <realtime start ns> <realtime end ns> <args>`.
//! Both shims find `runc` on `PATH` (ctr passes no `BinaryName` for either runtime), and the
//! daemons' `PATH` starts with their private `bin/`, where the wrappers go; containerd also
//! finds `containerd-shim-runc-v2` there, and corrald is pointed at its wrapped shim by its
//! config. The client's start and end are taken on the same monotonic clock around `ctr`.
//!
//! ```text
//!  ctr run --rm ─┬─ client + daemon before the shim ─┐
//!                │  shim start (`<shim> … start`)    │ the shim's `start` process
//!                │  shim up → runc create            │ connect, Create, bundle and rootfs
//!                │  runc create                      │
//!                │  runc create → runc start         │ Create answered, Wait and Start calls
//!                │  runc start                       │
//!                │  runc start → runc delete         │ /bin/true runs and exits, the exit
//!                │                                   │ reaches ctr, which deletes the task
//!                │  runc delete                      │ the task's (the first)
//!                └─ runc delete → ctr exits          ┘ shim shutdown, container and snapshot
//! ```
//!
//! Our shim makes no `runc start` (issue 16: it releases the init through runc's exec fifo
//! itself) and, for a stopped container that only needs its cgroups and runc's directory
//! removed, no `runc delete` (it removes them itself), so for corrald the `start` and
//! `delete` rows are empty and one row spans `runc create` to the client's exit instead.
//!
//! The runc floor is the first `runc create`, `start` and `delete`, those made: the runc
//! calls the runtime made. Further calls (containerd's `shim delete` runs another `runc
//! delete`) count as the runtime's own time. A second figure takes only `create` as the floor,
//! the call no runtime built on runc can avoid (`start` and `delete` can be: see above).
//!
//! The wrapper costs each wrapped call a fork and a wait (both sides alike), so these daemons
//! are separate from the ones block 1's figures come from.

use std::path::{Path, PathBuf};

use integration::{Containerd, Daemon, Runtime, Target, corral_shim_path};

use crate::stats::{Row, Unit};
use crate::{BENCH_OPTIONS, CONTAINERD, CORRALD, Config, Report, label, side};

const WRAPPER_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    long long m0 = now(CLOCK_MONOTONIC), r0 = now(CLOCK_REALTIME);
    char self[PATH_MAX], real[PATH_MAX + 8], dir[PATH_MAX], base[PATH_MAX], log[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) { perror("readlink /proc/self/exe"); return 125; }
    self[n] = 0;
    snprintf(real, sizeof real, "%s.real", self);
    strcpy(dir, self);
    strcpy(base, self);
    snprintf(log, sizeof log, "%s/phases.log", dirname(dir));
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 125; }
    if (p == 0) {
        execv(real, argv);
        perror(real);
        _exit(127);
    }
    int st = 0;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR) {}
    long long m1 = now(CLOCK_MONOTONIC), r1 = now(CLOCK_REALTIME);
    char line[8192];
    int len = snprintf(line, sizeof line, "%s %lld %lld %lld %lld", basename(base), m0, m1, r0, r1);
    for (int i = 1; i < argc && len < (int)sizeof line - 2; i++)
        len += snprintf(line + len, sizeof line - len, " %s", argv[i]);
    if (len > (int)sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) { if (write(fd, line, len) < 0) {} close(fd); }
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) { signal(WTERMSIG(st), SIG_DFL); raise(WTERMSIG(st)); return 128 + WTERMSIG(st); }
    return 125;
}
"#;

/// Builds the wrapper into `dir`; its path.
fn build_wrapper(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("wrapper.c");
    let bin = dir.join("wrapper");
    std::fs::write(&src, WRAPPER_C).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(bin)
}

/// `name` on the bench's `PATH`.
fn on_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not on PATH"))
}

/// Puts the wrapper at `bin/<name>` in front of `real`.
fn wrap(wrapper: &Path, bin: &Path, name: &str, real: &Path) -> Result<(), String> {
    let at = bin.join(name);
    let real_link = bin.join(format!("{name}.real"));
    let _ = std::fs::remove_file(&at);
    let _ = std::fs::remove_file(&real_link);
    std::os::unix::fs::symlink(real, &real_link).map_err(|e| e.to_string())?;
    std::fs::copy(wrapper, &at).map_err(|e| format!("copy to {}: {e}", at.display()))?;
    Ok(())
}

/// A daemon whose runc and shim are wrapped.
fn start_wrapped(target: Target, wrapper: &Path) -> Result<Containerd, String> {
    let mut d = Containerd::start_with(target, BENCH_OPTIONS);
    let bin = d.dir().join("bin");
    wrap(wrapper, &bin, "runc", &on_path("runc")?)?;
    match target.daemon {
        Daemon::Containerd => {
            let shim = Runtime::Runc.binary_name();
            wrap(wrapper, &bin, shim, &on_path(shim)?)?;
        }
        Daemon::Corrald => {
            // corrald runs the shim its config names: name the wrapper instead, and restart.
            let shim = Runtime::Corral.binary_name();
            let real = corral_shim_path();
            wrap(wrapper, &bin, shim, &real)?;
            let config = d.dir().join("corrald.toml");
            let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
            let from = format!("binary = \"{}\"", real.display());
            if !text.contains(&from) {
                return Err(format!(
                    "{} does not name {}",
                    config.display(),
                    real.display()
                ));
            }
            let to = format!("binary = \"{}\"", bin.join(shim).display());
            std::fs::write(&config, text.replace(&from, &to)).map_err(|e| e.to_string())?;
            d.restart();
        }
    }
    Ok(d)
}

/// One wrapped call.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    start: i64,
    end: i64,
    args: Vec<String>,
}

impl Call {
    fn ms(&self) -> f64 {
        (self.end - self.start) as f64 / 1e6
    }

    /// runc's subcommand: the first argument that is one.
    fn runc_command(&self) -> Option<&str> {
        const COMMANDS: &[&str] = &[
            "create",
            "start",
            "delete",
            "kill",
            "state",
            "run",
            "exec",
            "pause",
            "resume",
            "update",
            "events",
            "ps",
            "features",
            "checkpoint",
            "restore",
            "list",
            "spec",
        ];
        self.args
            .iter()
            .map(String::as_str)
            .find(|a| COMMANDS.contains(a))
    }
}

fn parse_log(path: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let name = f.next()?.to_string();
            let start = f.next()?.parse().ok()?;
            let end = f.next()?.parse().ok()?;
            let _realtime = (f.next()?, f.next()?);
            Some(Call {
                name,
                start,
                end,
                args: f.map(str::to_string).collect(),
            })
        })
        .collect()
}

fn monotonic_ns() -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// The phase rows, in table order.
const PHASES: &[&str] = &[
    "client + daemon before the shim",
    "shim start (the shim's `start` process)",
    "shim up → runc create (connect, Create, bundle, rootfs)",
    "runc create",
    "runc create → runc start (Create answered, Wait, Start)",
    "runc start",
    "runc start → runc delete (/bin/true runs, exit reaches ctr, Delete)",
    "runc create → runc delete, no runc start (Create answered, Wait, Start releasing the init \
     through the exec fifo, /bin/true runs, exit reaches ctr, Delete)",
    "runc delete",
    "runc delete → ctr exits (shim shutdown, container and snapshot removed)",
    "runc create → ctr exits, no runc start or delete (Create answered, Wait, Start through the \
     exec fifo, /bin/true runs, exit reaches ctr, Delete removing runc's cgroups and directory, \
     shim shutdown, container and snapshot removed)",
];

/// What one run shows.
struct Phases {
    /// ms, in [`PHASES`] order; `None` for a phase this runtime has not (the `start` rows
    /// without a `runc start`, the `delete` rows without a `runc delete`, and the rows spanning
    /// past a call that was made).
    phases: Vec<Option<f64>>,
    /// The first runc create, start and delete, those made: the runc calls made (the floor).
    floor: f64,
    /// The first runc create: the runc call no runtime can avoid.
    floor_min: f64,
    /// Every other wrapped call (more runc calls, `shim delete`), summed.
    others: f64,
    wall: f64,
    /// The calls, in order, for the notes.
    names: Vec<String>,
}

/// One run's phases; `None` when an expected call is missing.
fn phases_of(calls: &[Call], c0: i64, c1: i64) -> Option<Phases> {
    let runc: Vec<&Call> = calls.iter().filter(|c| c.name == "runc").collect();
    let first = |cmd: &str| runc.iter().find(|c| c.runc_command() == Some(cmd));
    // The task's delete is the first; containerd's `shim delete` runs another in teardown.
    let (create, start, delete) = (first("create")?, first("start"), first("delete"));
    let shim = calls
        .iter()
        .find(|c| c.name != "runc" && c.args.last().map(String::as_str) == Some("start"))?;
    let ms = |a: i64, b: i64| (b - a) as f64 / 1e6;
    let phases = vec![
        Some(ms(c0, shim.start)),
        Some(shim.ms()),
        Some(ms(shim.end, create.start)),
        Some(create.ms()),
        start.map(|s| ms(create.end, s.start)),
        start.map(|s| s.ms()),
        start.zip(delete).map(|(s, d)| ms(s.end, d.start)),
        delete
            .filter(|_| start.is_none())
            .map(|d| ms(create.end, d.start)),
        delete.map(|d| d.ms()),
        delete.map(|d| ms(d.end, c1)),
        (start.is_none() && delete.is_none()).then(|| ms(create.end, c1)),
    ];
    let floor_min = create.ms();
    let floor = floor_min + start.map_or(0.0, |s| s.ms()) + delete.map_or(0.0, |d| d.ms());
    // Calls made inside another wrapped call (the `runc delete` of `shim delete`) are counted
    // with it.
    let counted: Vec<&Call> = [Some(shim), Some(*create), start.copied(), delete.copied()]
        .into_iter()
        .flatten()
        .collect();
    let others: f64 = calls
        .iter()
        .filter(|c| !counted.iter().any(|k| std::ptr::eq(*k, *c)))
        .filter(|c| {
            !calls
                .iter()
                .any(|o| !std::ptr::eq(o, *c) && o.start <= c.start && c.end <= o.end)
        })
        .fold(0.0, |sum, c| sum + c.ms());
    let names = calls
        .iter()
        .map(|c| match c.runc_command() {
            Some(cmd) if c.name == "runc" => format!("runc {cmd}"),
            _ => format!("{} {}", c.name, c.args.last().cloned().unwrap_or_default()),
        })
        .collect();
    Some(Phases {
        phases,
        floor,
        floor_min,
        others,
        wall: ms(c0, c1),
        names,
    })
}

/// Runs the phase measurement and adds its table to the report.
pub fn block(cfg: &Config, report: &mut Report) {
    println!(
        "== block 1b: phases of ctr run --rm ({} iterations)",
        cfg.run_iters
    );
    let work = tempfile::tempdir().expect("temp dir");
    let wrapper = match build_wrapper(work.path()) {
        Ok(w) => w,
        Err(why) => {
            report
                .notes
                .push(format!("Not measured: the phase table: {why}"));
            return;
        }
    };
    let daemons: Vec<Containerd> = match [CONTAINERD, CORRALD]
        .into_iter()
        .map(|t| start_wrapped(t, &wrapper))
        .collect::<Result<_, _>>()
    {
        Ok(d) => d,
        Err(why) => {
            report
                .notes
                .push(format!("Not measured: the phase table: {why}"));
            return;
        }
    };
    let mut rows: Vec<Row> = PHASES
        .iter()
        .map(|p| Row::new(*p, Unit::Millis, None))
        .collect();
    let mut wall = Row::new(
        "`ctr run --rm` with the wrappers (wall)",
        Unit::Millis,
        None,
    );
    let mut others = Row::new(
        "of which other wrapped calls (more runc calls, `shim delete`)",
        Unit::Millis,
        None,
    );
    let mut floor = Row::new(
        "runc floor: runc create + start + delete (those made)",
        Unit::Millis,
        None,
    );
    let mut above = Row::new(
        "time above the runc floor: wall − (runc create + start + delete, those made)",
        Unit::Millis,
        Some(0.3),
    );
    let mut above_min = Row::new(
        "time above runc create (`runc start` and `runc delete` counted as the runtime's own)",
        Unit::Millis,
        None,
    );
    let mut calls_seen: Vec<(Target, Vec<String>)> = Vec::new();
    let once = |d: &Containerd| -> Result<(Vec<Call>, i64, i64), String> {
        let log = d.dir().join("bin/phases.log");
        let _ = std::fs::remove_file(&log);
        let id = d.new_id("phase");
        let c0 = monotonic_ns();
        let out = d.ctr_run(&["--rm"], &id, &["/bin/true"]);
        let c1 = monotonic_ns();
        if !out.success() {
            return Err(out.describe());
        }
        Ok((parse_log(&log), c0, c1))
    };
    // Warm-up, as block 1.
    for d in &daemons {
        for _ in 0..2 {
            if let Err(e) = once(d) {
                report.notes.push(format!(
                    "Not measured: the phase table: ctr run --rm failed on {}: {e}",
                    label(target_of(d))
                ));
                return;
            }
        }
    }
    report.quiet(cfg, "phases of run --rm");
    for i in 0..cfg.run_iters {
        if i > 0 && i % 10 == 0 {
            report.quiet(cfg, "phases of run --rm (cont.)");
        }
        for d in &daemons {
            let target = target_of(d);
            let (calls, c0, c1) = match once(d) {
                Ok(r) => r,
                Err(e) => {
                    report.notes.push(format!(
                        "phase table: a ctr run --rm failed on {}: {e}",
                        label(target)
                    ));
                    continue;
                }
            };
            let Some(p) = phases_of(&calls, c0, c1) else {
                report.notes.push(format!(
                    "phase table: a run on {} lacked a wrapped call: {:?}",
                    label(target),
                    calls.iter().map(|c| (&c.name, &c.args)).collect::<Vec<_>>()
                ));
                continue;
            };
            for (row, v) in rows.iter_mut().zip(p.phases) {
                if let Some(v) = v {
                    side(row, target).push(v);
                }
            }
            side(&mut others, target).push(p.others);
            side(&mut wall, target).push(p.wall);
            side(&mut floor, target).push(p.floor);
            side(&mut above, target).push(p.wall - p.floor);
            side(&mut above_min, target).push(p.wall - p.floor_min);
            match calls_seen.iter_mut().find(|(t, _)| *t == target) {
                Some(seen) => seen.1 = p.names,
                None => calls_seen.push((target, p.names)),
            }
        }
    }
    rows.extend([others, wall, floor, above, above_min]);
    println!("{}", crate::stats::table(&rows));
    for (t, names) in calls_seen {
        report.notes.push(format!(
            "Wrapped calls of one `ctr run --rm` on {}: {}.",
            label(t),
            names.join(", ")
        ));
    }
    report.phases = rows;
}

fn target_of(d: &Containerd) -> Target {
    Target {
        daemon: d.daemon(),
        runtime: d.runtime(),
    }
}
