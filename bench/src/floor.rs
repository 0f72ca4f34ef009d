//! The floor under `ctr run --rm`: plain `runc run` of the same busybox root filesystem,
//! without daemon, shim or client — once on a prepared directory, once with an overlay mount
//! (the image's rootfs as lowerdir, a fresh upper/work dir) made and undone every time, as a
//! shim does.
//!
//! Layout of the temp dir: `rootfs/` (the test image's layer, extracted), `plain/config.json`
//! (root: `../rootfs`, read-only), `detached/config.json` (the same root, `sleep 1000`: the CRI
//! floor's create + start), `overlay/config.json` (root: `overlay/merged`, writable),
//! `overlay/{upper,work}-<n>/`, `runc/` (runc's `--root`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{cmd, image};
use nix::mount::{MntFlags, MsFlags};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Bundles for timing `runc run` of `/bin/true`; everything is removed on drop.
pub struct RuncFloor {
    dir: tempfile::TempDir,
    next: u32,
}

impl RuncFloor {
    /// Extracts the test image's root filesystem and writes the two bundles' `config.json`
    /// from `runc spec`. Panics naming what failed.
    pub fn new() -> RuncFloor {
        let dir = tempfile::Builder::new()
            .prefix("corral-bench-runc-")
            .tempdir()
            .expect("cannot create a temp dir for the runc bundles");
        let rootfs = dir.path().join("rootfs");
        let layer = image::busybox_layer_tar().expect("cannot build the busybox layer");
        let mut ar = tar::Archive::new(&layer[..]);
        ar.set_preserve_permissions(true);
        ar.unpack(&rootfs)
            .expect("cannot extract the busybox layer");
        let plain = dir.path().join("plain");
        let overlay = dir.path().join("overlay");
        let detached = dir.path().join("detached");
        for (bundle, root, readonly, args) in [
            (&plain, rootfs.clone(), true, &["/bin/true"][..]),
            (&overlay, overlay.join("merged"), false, &["/bin/true"][..]),
            (&detached, rootfs.clone(), true, &["sleep", "1000"][..]),
        ] {
            std::fs::create_dir_all(bundle).expect("cannot create a bundle dir");
            let out = Command::new("runc")
                .arg("spec")
                .arg("--bundle")
                .arg(bundle)
                .output()
                .expect("cannot run `runc spec`");
            assert!(
                out.status.success(),
                "runc spec failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = bundle.join("config.json");
            let mut spec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).expect("read config.json"))
                    .expect("runc spec wrote bad JSON");
            spec["process"]["terminal"] = false.into();
            spec["process"]["args"] = serde_json::json!(args);
            spec["root"]["path"] = root.display().to_string().into();
            spec["root"]["readonly"] = readonly.into();
            std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap())
                .expect("write config.json");
        }
        std::fs::create_dir_all(overlay.join("merged")).expect("cannot create the merge dir");
        RuncFloor { dir, next: 0 }
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    fn run(&mut self, bundle: &Path) {
        self.next += 1;
        let id = format!("corral-bench-{}-{}", std::process::id(), self.next);
        let mut c = Command::new("runc");
        c.arg("--root")
            .arg(self.runc_root())
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(&id);
        let out = cmd::output_with_timeout(&mut c, RUN_TIMEOUT).expect("cannot run runc");
        assert!(
            out.status.success() && !out.timed_out,
            "`runc run` of /bin/true failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `runc run` of the prepared bundle; returns the wall time.
    pub fn run_plain(&mut self) -> Duration {
        let bundle = self.dir.path().join("plain");
        let t = Instant::now();
        self.run(&bundle);
        t.elapsed()
    }

    /// `runc create` + `runc start` of `sleep 1000` on the prepared root filesystem, detached
    /// (what a shim asks of runc for each container of a pod); returns the wall time of the two.
    /// The container is killed and deleted afterwards, outside the timing.
    pub fn create_start(&mut self) -> Duration {
        self.next += 1;
        let id = format!("corral-bench-{}-{}", std::process::id(), self.next);
        let bundle = self.dir.path().join("detached");
        let runc = |args: &[&str]| {
            let mut c = Command::new("runc");
            c.arg("--root").arg(self.runc_root()).args(args);
            c
        };
        let t = Instant::now();
        // The container's init keeps runc create's stdio: /dev/null, never a pipe we would
        // wait on.
        let created = runc(&["create", "--bundle", bundle.to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("cannot run runc create");
        let started = created.success()
            && runc(&["start", &id])
                .status()
                .expect("cannot run runc start")
                .success();
        let el = t.elapsed();
        let _ = runc(&["delete", "--force", &id])
            .stderr(Stdio::null())
            .status();
        assert!(
            created.success() && started,
            "`runc create` + `runc start` of sleep failed ({created})"
        );
        el
    }

    /// Overlay mount (fresh upper and work dirs), `runc run`, unmount; returns the wall time of
    /// the three. The upper/work dirs are removed afterwards, outside the timing.
    pub fn run_overlay(&mut self) -> Duration {
        let overlay = self.dir.path().join("overlay");
        let n = self.next;
        let upper = overlay.join(format!("upper-{n}"));
        let work = overlay.join(format!("work-{n}"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).expect("cannot create overlay dirs");
        }
        let merged = overlay.join("merged");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.dir.path().join("rootfs").display(),
            upper.display(),
            work.display()
        );
        let t = Instant::now();
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .expect("cannot mount the overlay");
        let guard = Unmount(merged.clone());
        self.run(&overlay);
        drop(guard);
        let elapsed = t.elapsed();
        let _ = std::fs::remove_dir_all(&upper);
        let _ = std::fs::remove_dir_all(&work);
        elapsed
    }
}

/// Unmounts its path on drop (also when a failed run panics).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, MntFlags::empty()) {
            eprintln!("warning: cannot unmount {}: {e}", self.0.display());
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}
