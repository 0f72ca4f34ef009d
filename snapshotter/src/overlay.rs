//! The overlayfs snapshotter: each snapshot is one overlay layer.
//!
//! A snapshot directory holds `fs/` (the layer: the upper dir while active, a lower dir
//! once committed) and, for actives, `work/` (overlayfs's workdir). Mounts follow
//! containerd's overlay snapshotter exactly:
//!
//! | snapshot                 | mount                                                         |
//! |--------------------------|---------------------------------------------------------------|
//! | active, no parent        | `bind <id>/fs` `rw,rbind`                                     |
//! | active, parents          | `overlay` `[index=off,]workdir=…,upperdir=…,lowerdir=p1:p2:…` |
//! | view, no parent          | `bind <id>/fs` `ro,rbind`                                     |
//! | view, one parent         | `bind <parent>/fs` `ro,rbind`                                 |
//! | view, several parents    | `overlay` `[index=off,]lowerdir=p1:p2:…`                      |
//!
//! `lowerdir` lists the parent chain nearest first, as absolute paths. They are short
//! (`<root>/snapshots/<id>/fs`), and the mounter compacts them when a deep chain would not
//! fit the kernel's one-page mount data limit (see [`crate::Mount::mount_data`]).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::Mount;
use crate::error::{Error, Result};
use crate::metadata::{Driver, Engine, Options, Resolved, delegate_snapshotter, fsync_dir};
use crate::snapshotter::Kind;

/// The overlayfs snapshotter. See the [module docs](self).
pub struct OverlaySnapshotter {
    engine: Engine<OverlayDriver>,
}

pub(crate) struct OverlayDriver {
    index_off: bool,
}

/// Whether the kernel's overlay module knows the `index` option (containerd's check).
fn kernel_has_index_option() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

impl OverlaySnapshotter {
    /// Opens (creating if needed) an overlayfs snapshotter rooted at `root` and reconciles
    /// it with what a crash may have left. Keep `root` short: it is repeated once per layer
    /// in overlay mount options.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, Options::default())
    }

    /// [`OverlaySnapshotter::open`] with options.
    pub fn open_with(root: impl AsRef<Path>, opts: Options) -> Result<Self> {
        let root =
            std::path::absolute(root.as_ref()).map_err(Error::io("resolve", root.as_ref()))?;
        // Overlay options are split on ',' and lowerdir on ':'; the kernel would misread them.
        if root.to_string_lossy().contains([',', ':']) {
            return Err(Error::Unsupported {
                what: format!(
                    "overlayfs snapshotter root {} contains ',' or ':'",
                    root.display()
                ),
            });
        }
        let driver = OverlayDriver {
            index_off: opts
                .overlay_index_off
                .unwrap_or_else(kernel_has_index_option),
        };
        Ok(OverlaySnapshotter {
            engine: Engine::open(&root, driver, &opts)?,
        })
    }

    /// Checks that overlayfs works on `root`'s filesystem by mounting a two-layer overlay
    /// there, as containerd does before enabling its overlayfs snapshotter (some
    /// filesystems, overlayfs itself among them, cannot hold upper dirs). Needs
    /// `CAP_SYS_ADMIN`. `Unimplemented` naming the cause when overlay does not work.
    pub fn check_supported(root: impl AsRef<Path>) -> Result<()> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(Error::io("create", root))?;
        let td = tempfile::Builder::new()
            .prefix("overlay-check")
            .tempdir_in(root)
            .map_err(Error::io("create a temporary dir in", root))?;
        let d = |n: &str| -> Result<String> {
            let p = td.path().join(n);
            fs::create_dir(&p).map_err(Error::io("create", &p))?;
            Ok(path_str(&p))
        };
        let (l1, l2, upper, work, merged) =
            (d("l1")?, d("l2")?, d("upper")?, d("work")?, d("merged")?);
        let m = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("lowerdir={l2}:{l1}"),
                format!("upperdir={upper}"),
                format!("workdir={work}"),
            ],
        };
        m.mount(Path::new(&merged))
            .map_err(|e| Error::Unsupported {
                what: format!("overlayfs on {}: {e}", root.display()),
            })?;
        crate::mount::unmount(Path::new(&merged)).map_err(|e| Error::Unsupported {
            what: format!("overlayfs on {}: {e}", root.display()),
        })
    }

    /// Whether overlay mounts carry `index=off`.
    pub fn index_off(&self) -> bool {
        self.engine.driver.index_off
    }
}

// Each snapshot's `fs/` holds its own layer only: layers can be staged (crate::staging).
delegate_snapshotter!(OverlaySnapshotter, staging);

fn fs_dir(dir: &Path) -> PathBuf {
    dir.join("fs")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Driver for OverlayDriver {
    fn populate(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()> {
        let fs_path = fs_dir(dir);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&fs_path)
            .map_err(Error::io("create", &fs_path))?;
        if kind == Kind::Active {
            let work = dir.join("work");
            fs::DirBuilder::new()
                .mode(0o711)
                .create(&work)
                .map_err(Error::io("create", &work))?;
        }
        if let Some(parent) = parent {
            // The upper dir's root becomes the merged root: it must keep the owner of the
            // parent's root (containerd does the same), e.g. for user-namespaced images.
            let pfs = fs_dir(parent);
            let md = fs::metadata(&pfs).map_err(Error::io("stat", &pfs))?;
            std::os::unix::fs::lchown(&fs_path, Some(md.uid()), Some(md.gid()))
                .map_err(Error::io("chown", &fs_path))?;
        }
        Ok(())
    }

    fn sync(&self, dir: &Path) -> Result<()> {
        fsync_dir(&fs_dir(dir))?;
        fsync_dir(dir)
    }

    fn recreatable(&self, kind: Kind) -> bool {
        kind != Kind::Committed
    }

    fn mounts(&self, s: &Resolved) -> Vec<Mount> {
        let bind = |source: &Path, ro: bool| {
            vec![Mount {
                kind: "bind".into(),
                source: path_str(source),
                target: String::new(),
                options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
            }]
        };
        if s.parents.is_empty() {
            return bind(&fs_dir(&s.dir), s.kind != Kind::Active);
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if s.kind == Kind::Active {
            options.push(format!("workdir={}", path_str(&s.dir.join("work"))));
            options.push(format!("upperdir={}", path_str(&fs_dir(&s.dir))));
        } else if s.parents.len() == 1 {
            return bind(&fs_dir(&s.parents[0]), true);
        }
        let lower: Vec<String> = s.parents.iter().map(|p| path_str(&fs_dir(p))).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    fn layer_dir(&self, dir: &Path) -> PathBuf {
        fs_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshotter;

    /// The directory of an active snapshot, from its mounts (a bind of its `fs` without a
    /// parent, else the overlay's upper dir).
    fn own_dir(sn: &OverlaySnapshotter, key: &str) -> PathBuf {
        let m = &sn.mounts(key).unwrap()[0];
        let opt = |name: &str| {
            m.options
                .iter()
                .find_map(|o| o.strip_prefix(name))
                .map(PathBuf::from)
        };
        let fs = opt("upperdir=")
            .or_else(|| (m.kind == "bind").then(|| PathBuf::from(&m.source)))
            .unwrap_or_else(|| panic!("no own dir in {m:?}"));
        fs.parent().unwrap().to_path_buf()
    }

    /// Active snapshots are made without fsyncs (see `Driver::recreatable`): should a power
    /// loss take their directories, opening the root makes them again, empty and usable,
    /// while a committed layer whose directory is gone still takes its children with it.
    #[test]
    fn lost_active_directories_are_made_again_at_open() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("sn");
        let (active, child) = {
            let sn = OverlaySnapshotter::open(&root).unwrap();
            sn.prepare("base-active", None, Default::default()).unwrap();
            sn.commit("base", "base-active", Default::default())
                .unwrap();
            sn.prepare("top", None, Default::default()).unwrap();
            sn.prepare("child", Some("base"), Default::default())
                .unwrap();
            (own_dir(&sn, "top"), own_dir(&sn, "child"))
        };
        // What a power loss before the directories reached the disk leaves.
        fs::remove_dir_all(&active).unwrap();
        fs::remove_dir_all(&child).unwrap();
        let sn = OverlaySnapshotter::open(&root).unwrap();
        for key in ["top", "child"] {
            sn.stat(key).unwrap();
            let dir = own_dir(&sn, key);
            assert!(dir.join("fs").is_dir(), "{key}: {}", dir.display());
        }
        assert!(own_dir(&sn, "child").join("work").is_dir());
        // A committed layer is content: gone, it is not made up, and its child goes too.
        let base_dir = {
            sn.view("look", Some("base"), Default::default()).unwrap();
            let m = &sn.mounts("look").unwrap()[0];
            PathBuf::from(&m.source).parent().unwrap().to_path_buf()
        };
        drop(sn);
        fs::remove_dir_all(&base_dir).unwrap();
        let sn = OverlaySnapshotter::open(&root).unwrap();
        sn.stat("top").unwrap();
        for gone in ["base", "child", "look"] {
            assert!(
                matches!(sn.stat(gone), Err(Error::NotFound { .. })),
                "{gone} should be dropped with its committed parent's directory"
            );
        }
    }

    /// A 130-layer chain under a typical production root: the options as returned are
    /// containerd-shaped absolute paths (over one page), and what the mounter passes to the
    /// kernel after compaction is under one page.
    #[test]
    fn deep_chain_fits_one_page_after_compaction() {
        let root = Path::new("/var/lib/corral/io.containerd.snapshotter.v1.overlayfs/snapshots");
        let d = OverlayDriver { index_off: true };
        // Ids as a long-lived host has them: five digits.
        let parents: Vec<PathBuf> = (0..130)
            .rev()
            .map(|i| root.join((10_000 + i).to_string()))
            .collect();
        let mounts = d.mounts(&Resolved {
            kind: Kind::Active,
            dir: root.join("10130"),
            parents,
        });
        assert_eq!(mounts.len(), 1);
        let m = &mounts[0];
        assert_eq!(m.kind, "overlay");
        assert_eq!(m.options[0], "index=off");
        assert!(m.options[1].starts_with("workdir=/var/lib/corral/"));
        assert!(m.options[3].starts_with(&format!("lowerdir={}/10129/fs:", root.display())));
        let raw = m.options.join(",").len();
        let (_, data, chdir) = m.mount_data();
        assert_eq!(
            chdir.as_deref(),
            Some(Path::new(&format!("{}/", root.display())))
        );
        assert!(data.len() < 4096, "compacted data is {} bytes", data.len());
        eprintln!(
            "130 layers: returned options {raw} bytes, mount data {} bytes",
            data.len()
        );
    }
}
