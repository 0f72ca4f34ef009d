//! The static busybox critest's images are made of, built from Debian's busybox source package.
//!
//! Why not Debian's `busybox-static`: it lacks `pgrep` and `ipcs`, and its shell runs applets as
//! builtins without searching `$PATH`, so a masked `/bin/ls` is never looked at (MaskedPaths),
//! `sleep` cannot be found by `pgrep` (ExecSync with timeout) and `ipcs` is missing (HostIpc).
//! Upstream's default configuration (`make defconfig`) has all of these and a shell that
//! executes `/bin/ls` from `$PATH`; only `CONFIG_STATIC` is switched on.
//!
//! The build (`apt-get source busybox`, `make defconfig`, `make`) takes about a minute on two
//! cores. Its result is cached as `<workspace>/target/critest/busybox` and reused by every run
//! of this checkout; a file lock keeps two concurrent first runs from building twice.
//! `$CORRAL_CRITEST_BUSYBOX` names a prebuilt static busybox instead.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where the built busybox is cached: `<workspace>/target/critest/`.
pub fn cache_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(&manifest)
        .join("target")
        .join("critest")
}

/// The static busybox to build images from: `$CORRAL_CRITEST_BUSYBOX`, else the cached build,
/// built now if there is none.
pub fn static_busybox() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CORRAL_CRITEST_BUSYBOX") {
        return Ok(PathBuf::from(p));
    }
    let dir = cache_dir();
    fs::create_dir_all(&dir)?;
    let out = dir.join("busybox");
    let lock = fs::File::create(dir.join("busybox.lock"))?;
    // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if out.is_file() {
        return Ok(out);
    }
    let build = dir.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build)?;
    let started = Instant::now();
    eprintln!(
        "critest: building a static busybox from Debian's source package in {} \
         (about a minute, once per checkout)",
        build.display()
    );
    let result = build_in(&build, &out);
    let _ = fs::remove_dir_all(&build);
    result?;
    eprintln!(
        "critest: built {} in {:.0?}",
        out.display(),
        started.elapsed()
    );
    Ok(out)
}

fn build_in(build: &Path, out: &Path) -> io::Result<()> {
    run(
        Command::new("apt-get")
            .args(["source", "-q", "busybox"])
            .current_dir(build),
        "apt-get source busybox (needs deb-src entries in apt's sources and `apt-get update`: \
         `make deps` adds /etc/apt/sources.list.d/debian-src.sources; and dpkg-dev, bzip2, xz-utils)",
    )?;
    let src = fs::read_dir(build)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| io::Error::other("apt-get source busybox left no source directory"))?;
    run(
        make(&src).arg("defconfig"),
        "make defconfig (busybox; needs make and gcc)",
    )?;
    let config_path = src.join(".config");
    let config = fs::read_to_string(&config_path)?;
    let off = "# CONFIG_STATIC is not set";
    if !config.lines().any(|l| l == off) {
        return Err(io::Error::other(format!(
            "{}: no `{off}` line to switch on",
            config_path.display()
        )));
    }
    fs::write(&config_path, config.replace(off, "CONFIG_STATIC=y"))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run(
        make(&src).arg(format!("-j{jobs}")).arg("busybox"),
        "make busybox (static: needs libc6-dev)",
    )?;
    let built = src.join("busybox");
    let check = Command::new(&built).arg("--list-full").output()?;
    if !check.status.success() || !String::from_utf8_lossy(&check.stdout).contains("bin/sh") {
        return Err(io::Error::other(format!(
            "{} does not run or lists no bin/sh",
            built.display()
        )));
    }
    // Copied next to its final name and renamed: a crash never leaves a half-written cache.
    let tmp = out.with_extension("tmp");
    fs::copy(&built, &tmp)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

/// `make -s -C src`, without the jobserver settings of a `make` we may run under (its
/// descriptors are not ours).
fn make(src: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-s")
        .arg("-C")
        .arg(src)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    c
}

fn run(c: &mut Command, what: &str) -> io::Result<()> {
    let out = c
        .output()
        .map_err(|e| io::Error::other(format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    Err(io::Error::other(format!(
        "{what} failed ({}):\n{}\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    )))
}

/// The applets of `busybox` with their install paths (`bin/ls`, `usr/bin/id`, …), as it lists
/// them itself (`busybox --list-full`).
pub fn applet_paths(busybox: &Path) -> io::Result<Vec<String>> {
    let out = Command::new(busybox).arg("--list-full").output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} --list-full: {}",
            busybox.display(),
            out.status
        )));
    }
    let mut paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        // linuxrc (init for an initrd) is the one applet installed at the root; no image
        // needs it.
        .filter(|p| p.contains('/') && *p != "bin/busybox")
        .map(str::to_string)
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}
