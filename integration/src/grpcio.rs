//! grpcio, the Python binding of grpc C-core, from PyPI: a gRPC client that no one here wrote,
//! built on another stack than grpc-go (ctr, crictl) and tonic (ours). It is installed once into
//! a venv under the target directory and reused by later runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The grpcio release the tests run (what the defaults are, e.g. the `:authority` it sends on a
/// unix socket, depends on it).
pub const GRPCIO_VERSION: &str = "1.85.3";

/// Debian's interpreter, whose `venv` module comes with the `python3-venv` package (`make deps`).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(&manifest).join("target")
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn has_grpcio(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import grpc, sys; sys.exit(grpc.__version__ != sys.argv[1])",
        ])
        .arg(GRPCIO_VERSION)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python of a venv that has grpcio [`GRPCIO_VERSION`], made on first use.
///
/// The venv is built under a temporary name and renamed into place, so test processes running
/// at once never see half of one; one that loses the race drops its own copy.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = target_dir().join(format!("grpcio-{GRPCIO_VERSION}-venv"));
            let python = venv.join("bin/python");
            if has_grpcio(&python) {
                return python;
            }
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let tmp = target_dir().join(format!("grpcio-venv.tmp-{}-{nanos}", std::process::id()));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(target_dir()).expect("create the target directory");
            let out = Command::new(SYSTEM_PYTHON)
                .args(["-m", "venv"])
                .arg(&tmp)
                .output()
                .unwrap_or_else(|e| panic!("run {SYSTEM_PYTHON}: {e} (Debian package python3)"));
            assert!(
                out.status.success(),
                "{} (the venv module is Debian's python3-venv: `make deps`)",
                describe(&format!("{SYSTEM_PYTHON} -m venv"), &out)
            );
            let out = Command::new(tmp.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-input",
                ])
                .arg(format!("grpcio=={GRPCIO_VERSION}"))
                .output()
                .expect("run pip");
            if !out.status.success() {
                let _ = fs::remove_dir_all(&tmp);
                panic!(
                    "{} (grpcio comes from PyPI)",
                    describe("pip install grpcio", &out)
                );
            }
            if fs::rename(&tmp, &venv).is_err() {
                // Another process put its venv there first; or a stale one without grpcio is
                // in the way, which goes.
                if has_grpcio(&python) {
                    let _ = fs::remove_dir_all(&tmp);
                } else {
                    let _ = fs::remove_dir_all(&venv);
                    fs::rename(&tmp, &venv).expect("move the grpcio venv into place");
                }
            }
            assert!(has_grpcio(&python), "no grpcio in {}", venv.display());
            python
        })
        .clone()
}

/// Runs a Python script (its source) with grpcio's Python and `args`, and parses the one JSON
/// object it prints. Panics with its output if it fails.
pub fn run_script(source: &str, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::Builder::new()
        .prefix("grpcio-script-")
        .tempdir()
        .expect("a temp dir for the script");
    let script = dir.path().join("script.py");
    fs::write(&script, source).expect("write the script");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the grpcio script");
    assert!(out.status.success(), "{}", describe("grpcio script", &out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: {e}", describe("grpcio script output", &out)))
}
