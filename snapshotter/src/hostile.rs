//! Hostile layers (target `layer`; see `protocol::fuzzing` for how targets run).
//!
//! The first byte of an input picks the media type (low 3 bits), whether the layer goes onto
//! a parent snapshot with files, symlinks and directories a layer may try to abuse (bit 3),
//! and whether it is applied as an overlayfs upperdir instead of a native snapshot (bit 4);
//! the rest is the layer blob.
//!
//! Property: the apply succeeds, or fails with a code that says the layer was bad
//! (InvalidArgument, Unimplemented; ResourceExhausted when it fills the disk); after a failure
//! removing the snapshot leaves the snapshotter as it was (no snapshot, no directory); the
//! parent and everything outside the snapshot are unchanged; memory stays bounded.
//!
//! As root, every case runs on one thread with a mount namespace of its own in which every
//! mount is read-only but a private tmpfs holding the snapshotter: a layer that escaped would
//! fail there with EROFS (a wrong code, so a failed case) instead of writing to the host.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use protocol::fuzzing::{TempDir, tree};

use crate::apply::{self, WhiteoutMode};
use crate::{Code, Labels, NativeSnapshotter, Snapshotter};

const MEDIA_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/vnd.oci.image.layer.v1.tar"),
    Some("application/vnd.oci.image.layer.v1.tar+gzip"),
    Some("application/vnd.oci.image.layer.v1.tar+zstd"),
    Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
    Some("application/octet-stream"),
    Some("application/vnd.oci.image.layer.v1.tar+bzip2"),
    Some("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
];

/// Where the sandbox's tmpfs goes, in its own mount namespace only: a directory every Linux
/// system has, so nothing is created on the host (and nothing is left when the process ends).
const SANDBOX_MOUNT: &str = "/dev/shm";

/// The tmpfs of the sandbox: small, so that a seed can fill it cheaply (a layer that fills
/// the disk must fail with ResourceExhausted).
const SANDBOX_SIZE: &str = "size=64m";

pub fn layer(data: &[u8]) {
    let Some((&flags, blob)) = data.split_first() else {
        return;
    };
    let blob = blob.to_vec();
    in_sandbox(move |s| s.case(flags, &blob));
}

/// The snapshotter and the fixtures, on the sandbox thread.
struct Sandbox {
    dir: PathBuf,
    sn: NativeSnapshotter,
    /// What the parent snapshot, the lower dir and the bystander dir hold: never changed.
    fixtures: BTreeMap<PathBuf, String>,
    /// The snapshotter's directory with only the parent in it.
    sn_tree: BTreeMap<PathBuf, String>,
}

type Job = Box<dyn FnOnce(&mut Sandbox) + Send>;
type Done = mpsc::Sender<Result<(), String>>;

/// Runs `job` on the sandbox thread; a panic there is a panic here.
fn in_sandbox(job: impl FnOnce(&mut Sandbox) + Send + 'static) {
    static WORKER: OnceLock<Mutex<mpsc::Sender<(Job, Done)>>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Job, Done)>();
        std::thread::Builder::new()
            .name("layer-sandbox".into())
            .spawn(move || {
                let mut sandbox = Sandbox::new();
                for (job, done) in rx {
                    let r = catch_unwind(AssertUnwindSafe(|| job(&mut sandbox)));
                    let _ = done.send(r.map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into())
                    }));
                }
            })
            .expect("spawn the sandbox thread");
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = mpsc::channel();
    worker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((Box::new(job), done_tx))
        .expect("the sandbox thread is alive");
    if let Err(msg) = done_rx.recv().expect("the sandbox thread answers") {
        panic!("{msg}");
    }
}

impl Sandbox {
    fn new() -> Sandbox {
        // SAFETY: geteuid has no preconditions.
        let dir = if unsafe { libc::geteuid() } == 0 {
            confine(Path::new(SANDBOX_MOUNT));
            Path::new(SANDBOX_MOUNT).join("corral")
        } else {
            let t = TempDir::new("corral-layer-sandbox");
            let dir = t.path().to_path_buf();
            // The thread, and so the directory, lives as long as the process.
            std::mem::forget(t);
            remove_at_exit(&dir);
            dir
        };
        std::fs::create_dir_all(&dir).expect("create the sandbox directory");
        let sn = NativeSnapshotter::open(dir.join("sn")).expect("open the native snapshotter");
        let mounts = sn
            .prepare("parent-active", None, Labels::new())
            .expect("prepare the parent");
        populate(Path::new(&mounts[0].source));
        sn.commit("parent", "parent-active", Labels::new())
            .expect("commit the parent");
        populate(&dir.join("lower"));
        populate(&dir.join("bystander"));
        let mut s = Sandbox {
            sn_tree: tree(&dir.join("sn")),
            fixtures: BTreeMap::new(),
            dir,
            sn,
        };
        s.fixtures = s.fixtures();
        s
    }

    fn fixtures(&self) -> BTreeMap<PathBuf, String> {
        let mut all = BTreeMap::new();
        for d in ["lower", "bystander"] {
            for (p, v) in tree(&self.dir.join(d)) {
                all.insert(Path::new(d).join(p), v);
            }
        }
        all.insert(PathBuf::from("(top)"), format!("{:?}", tree_top(&self.dir)));
        all
    }

    fn case(&mut self, flags: u8, blob: &[u8]) {
        let media = MEDIA_TYPES[usize::from(flags & 7)];
        let with_parent = flags & 8 != 0;
        if flags & 16 != 0 {
            self.overlay_case(media, blob, with_parent);
        } else {
            self.native_case(media, blob, with_parent);
        }
        assert_eq!(
            self.fixtures(),
            self.fixtures,
            "the layer changed something outside its snapshot"
        );
    }

    fn native_case(&mut self, media: Option<&str>, blob: &[u8], with_parent: bool) {
        let parent = with_parent.then_some("parent");
        let mounts = self
            .sn
            .prepare("case", parent, Labels::new())
            .expect("prepare");
        let result = apply::apply_to_mounts(&mounts, Cursor::new(blob), media);
        if let Err(e) = &result {
            check_error(e);
        }
        if let Ok(a) = &result {
            check_applied(a);
            // A layer that applied commits like any other.
            self.sn
                .commit("case-committed", "case", Labels::new())
                .expect("commit an applied layer");
            self.sn.remove("case-committed").expect("remove the commit");
        } else {
            self.sn
                .remove("case")
                .unwrap_or_else(|e| panic!("removing the snapshot of a failed apply: {e}"));
        }
        self.sn.settle();
        let mut keys = Vec::new();
        self.sn
            .walk(&[], &mut |info| {
                keys.push(info.name);
                Ok(())
            })
            .expect("walk");
        assert_eq!(keys, ["parent"], "snapshots left behind");
        assert_eq!(
            tree(&self.dir.join("sn")),
            self.sn_tree,
            "the snapshotter's directory changed"
        );
    }

    fn overlay_case(&mut self, media: Option<&str>, blob: &[u8], with_lower: bool) {
        let upper = self.dir.join("upper");
        std::fs::create_dir(&upper).expect("create the upperdir");
        let lowerdirs = if with_lower {
            vec![self.dir.join("lower")]
        } else {
            Vec::new()
        };
        let result = apply::apply_layer(
            Cursor::new(blob),
            media,
            &upper,
            WhiteoutMode::Overlay { lowerdirs },
        );
        match &result {
            Ok(a) => check_applied(a),
            Err(e) => check_error(e),
        }
        std::fs::remove_dir_all(&upper).expect("remove the upperdir");
    }
}

fn check_error(e: &apply::ApplyError) {
    let allowed = [
        Code::InvalidArgument,
        Code::Unimplemented,
        Code::ResourceExhausted,
    ];
    assert!(
        allowed.contains(&e.code()),
        "a bad layer answered {:?}: {e}",
        e.code()
    );
    assert!(!e.to_string().is_empty());
}

fn check_applied(a: &apply::Applied) {
    let hex = a
        .diff_id
        .strip_prefix("sha256:")
        .expect("diff ID is sha256");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "diff ID {}",
        a.diff_id
    );
}

fn tree_top(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What a layer may try to abuse: a symlink to `/etc` and one climbing out, a file to
/// whiteout, a directory to make opaque, a file to hard-link.
fn populate(dir: &Path) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    std::fs::create_dir_all(dir.join("etc")).expect("fixture");
    std::fs::create_dir_all(dir.join("d/sub")).expect("fixture");
    std::fs::create_dir_all(dir.join("bin")).expect("fixture");
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("fixture");
    std::fs::write(dir.join("d/sub/f"), "lower file\n").expect("fixture");
    std::fs::write(dir.join("bin/sh"), "#!\n").expect("fixture");
    std::fs::set_permissions(dir.join("bin/sh"), std::fs::Permissions::from_mode(0o755))
        .expect("fixture");
    symlink("/etc", dir.join("lnk")).expect("fixture");
    symlink("../../..", dir.join("up")).expect("fixture");
    symlink("d/sub", dir.join("rel")).expect("fixture");
}

/// Makes this thread's view of the system read-only but `dir`, a fresh tmpfs: its own mount
/// namespace, private so nothing propagates to the host, every mount remounted read-only.
fn confine(dir: &Path) {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make mounts private");
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect();
    points.dedup();
    for p in &points {
        let r = mount(
            None::<&str>,
            p.as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        assert!(r.is_ok() || p != "/", "remount / read-only: {r:?}");
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(SANDBOX_SIZE),
    )
    .expect("mount the sandbox tmpfs");
}

/// Removes `dir` when the process exits (the sandbox thread never returns).
fn remove_at_exit(dir: &Path) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn cleanup() {
        if let Some(d) = DIR.get() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    if DIR.set(dir.to_path_buf()).is_ok() {
        // SAFETY: registers a function without arguments that only removes a directory.
        unsafe { libc::atexit(cleanup) };
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use protocol::fuzzing::{Target, run};

    use super::*;

    #[test]
    fn the_sandbox_is_read_only_outside_its_tmpfs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        in_sandbox(|s| {
            let outside = std::env::temp_dir().join("corral-sandbox-probe");
            let e = std::fs::write(&outside, b"x").expect_err("the host is writable");
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
            std::fs::write(s.dir.join("probe"), b"x").expect("the sandbox is writable");
            std::fs::remove_file(s.dir.join("probe")).unwrap();
        });
        assert!(!std::env::temp_dir().join("corral-sandbox-probe").exists());
    }

    #[test]
    fn layer() {
        run(
            &Target {
                name: "layer",
                cases: 3000,
                max_alloc: 8 << 20,
                dict: &[
                    b"./",
                    b"../",
                    b"/etc/passwd",
                    b"lnk/",
                    b"up/",
                    b".wh.",
                    b".wh..wh..opq",
                    b"ustar\0",
                    b"ustar  \0",
                    b"PaxHeader",
                    b"path=",
                    b"linkpath=",
                    b"size=",
                    b"SCHILY.xattr.",
                    b"GNU.sparse.",
                    b"././@LongLink",
                    &[0x1f, 0x8b, 8, 0],
                    &[0x28, 0xb5, 0x2f, 0xfd],
                ],
            },
            super::layer,
        );
    }
}
