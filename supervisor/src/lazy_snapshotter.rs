//! A snapshotter opened on first use.
//!
//! Each snapshotter keeps a redb file whose open state (allocator bitmaps, write buffer) costs
//! about 1.3 MB of the daemon's resident memory. The native snapshotter is there for hosts
//! and clients that ask for it, and most never do: it opens when first called, and a walk or
//! cleanup of one that has never been used (no metadata file) does not open it.
//!
//! A failed open is kept and answered to every call (as a failed open at start-up used to
//! stop the daemon, it now only fails that snapshotter's calls).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use snapshotter::{Error, Info, Labels, Mount, Result, Snapshotter, Usage};

/// Opens the snapshotter rooted at a directory.
pub type Opener = fn(&Path) -> Result<Box<dyn Snapshotter>>;

pub struct LazySnapshotter {
    root: PathBuf,
    /// The file whose existence means the snapshotter has state to look at.
    db_file: PathBuf,
    open: Opener,
    opened: OnceLock<std::result::Result<Box<dyn Snapshotter>, String>>,
}

impl LazySnapshotter {
    pub fn new(root: PathBuf, db_file: &str, open: Opener) -> LazySnapshotter {
        LazySnapshotter {
            db_file: root.join(db_file),
            root,
            open,
            opened: OnceLock::new(),
        }
    }

    /// The snapshotter, opened now if it was not.
    fn get(&self) -> Result<&dyn Snapshotter> {
        let opened = self.opened.get_or_init(|| {
            log::debug!("opening the snapshotter at {}", self.root.display());
            (self.open)(&self.root).map_err(|e| e.to_string())
        });
        match opened {
            Ok(s) => Ok(s.as_ref()),
            Err(msg) => Err(Error::Io {
                op: "open the snapshotter at",
                path: self.root.clone(),
                source: io::Error::other(msg.clone()),
            }),
        }
    }

    /// The snapshotter if it is open or has state on disk; None if it was never used.
    fn if_used(&self) -> Option<Result<&dyn Snapshotter>> {
        if self.opened.get().is_none() && !self.db_file.exists() {
            return None;
        }
        Some(self.get())
    }

    /// Whether it has been opened (for tests).
    pub fn is_open(&self) -> bool {
        self.opened.get().is_some()
    }
}

impl Snapshotter for LazySnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.get()?.stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        self.get()?.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.get()?.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.get()?.mounts(key)
    }
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.get()?.prepare(key, parent, labels)
    }
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.get()?.view(key, parent, labels)
    }
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.get()?.commit(name, key, labels)
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.get()?.remove(key)
    }
    fn walk(&self, filters: &[&str], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        match self.if_used() {
            // Nothing was ever stored: nothing to list (the filters still have to parse).
            None => snapshotter::Filter::parse(filters).map(|_| ()),
            Some(s) => s?.walk(filters, f),
        }
    }
    fn cleanup(&self) -> Result<()> {
        match self.if_used() {
            None => Ok(()),
            Some(s) => s?.cleanup(),
        }
    }

    fn settle(&self) {
        if let Some(Ok(s)) = self.if_used() {
            s.settle()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(root: &Path) -> Result<Box<dyn Snapshotter>> {
        Ok(Box::new(snapshotter::NativeSnapshotter::open(root)?))
    }

    #[test]
    fn opens_on_first_use_and_not_for_an_empty_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("native");
        let s = LazySnapshotter::new(root.clone(), "metadata.redb", native);
        let mut seen = 0;
        s.walk(&[], &mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        s.cleanup().unwrap();
        assert_eq!(seen, 0);
        assert!(!s.is_open(), "an empty walk or cleanup opened it");
        assert!(!root.exists(), "an empty walk created {}", root.display());
        let bad = s.walk(&["labels.\"unterminated"], &mut |_| Ok(()));
        assert_eq!(bad.unwrap_err().code(), snapshotter::Code::InvalidArgument);

        s.prepare("a", None, Labels::new()).unwrap();
        assert!(s.is_open());
        s.walk(&[], &mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 1);

        // A new instance over the same root sees the state and opens for the walk.
        drop(s);
        let again = LazySnapshotter::new(root, "metadata.redb", native);
        let mut keys = Vec::new();
        again
            .walk(&[], &mut |i| {
                keys.push(i.name);
                Ok(())
            })
            .unwrap();
        assert_eq!(keys, ["a"]);
    }

    #[test]
    fn a_failed_open_is_an_error_naming_the_root() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the root directory should be.
        let root = dir.path().join("native");
        std::fs::write(&root, b"not a directory").unwrap();
        let s = LazySnapshotter::new(root.clone(), "metadata.redb", native);
        let e = s.stat("x").unwrap_err();
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
        // And again, without retrying the open.
        assert!(s.stat("x").is_err());
    }
}
