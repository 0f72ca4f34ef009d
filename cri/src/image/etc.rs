//! Reading an image's /etc/passwd and /etc/group (for USER names, run_as_username and the
//! groups a user belongs to), and measuring the snapshotter's directory for ImageFsInfo.
//!
//! The files are read from a read-only view of the image's top snapshot, mounted here for the
//! moment of the read (corral-cri runs as root beside corrald; snapshots are mounts as data,
//! and here we are the one who mounts them). A symlinked /etc or file is not followed: on the
//! host it would point outside the image.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags};
use protocol::grpc::containerd::services::snapshots::v1 as snapshots;
use protocol::grpc::containerd::types::Mount;

use crate::corrald::Corrald;
use crate::error::{Context, Error, Result};
use crate::spec::ImageEtc;

pub async fn read(corrald: &Corrald, chain_id: &str) -> Result<ImageEtc> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = format!(
        "corral-cri-etc-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let client = corrald.client();
    let mounts = client
        .snapshots()
        .view(client.req(snapshots::ViewSnapshotRequest {
            snapshotter: corrald.snapshotter().to_string(),
            key: key.clone(),
            parent: chain_id.to_string(),
            labels: Default::default(),
        }))
        .await
        .with_context(|| format!("view snapshot {chain_id}"))?
        .into_inner()
        .mounts;
    let read = tokio::task::spawn_blocking(move || read_mounted(&mounts))
        .await
        .map_err(|e| Error::internal(format!("read image files: {e}")));
    let removed = corrald.remove_snapshot(&key).await;
    let etc = read??;
    removed?;
    Ok(etc)
}

fn read_mounted(mounts: &[Mount]) -> Result<ImageEtc> {
    let [m] = mounts else {
        return Err(Error::internal(format!(
            "a view snapshot came with {} mounts, expected one",
            mounts.len()
        )));
    };
    let dir = tempfile::Builder::new()
        .prefix("corral-cri-etc-")
        .tempdir()
        .map_err(|e| Error::internal(format!("temp dir: {e}")))?;
    mount_ro(m, dir.path())?;
    let etc = ImageEtc {
        passwd: read_plain(dir.path(), "passwd"),
        group: read_plain(dir.path(), "group"),
    };
    if let Err(e) = nix::mount::umount2(dir.path(), MntFlags::MNT_DETACH) {
        log::warn!("unmount {}: {e}", dir.path().display());
    }
    Ok(etc)
}

/// `<root>/etc/<name>` if both are plain (not symlinks) and readable.
fn read_plain(root: &Path, name: &str) -> Option<String> {
    let etc = root.join("etc");
    let file = etc.join(name);
    let plain = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| !m.file_type().is_symlink())
            .unwrap_or(false)
    };
    if !plain(&etc) || !plain(&file) {
        return None;
    }
    let meta = std::fs::metadata(&file).ok()?;
    if !meta.is_file() || meta.len() > 4 << 20 {
        return None;
    }
    std::fs::read_to_string(&file).ok()
}

fn mount_ro(m: &Mount, target: &Path) -> Result<()> {
    let failed = |e: nix::Error| {
        Error::internal(format!(
            "mount {} {} on {}: {e}",
            m.r#type,
            m.source,
            target.display()
        ))
    };
    match m.r#type.as_str() {
        "bind" | "rbind" => {
            nix::mount::mount(
                Some(m.source.as_str()),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(failed)?;
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(failed)
        }
        "overlay" => {
            let data: Vec<&str> = m
                .options
                .iter()
                .map(String::as_str)
                .filter(|o| *o != "ro" && *o != "rw")
                .collect();
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(data.join(",").as_str()),
            )
            .map_err(failed)
        }
        other => Err(Error::internal(format!(
            "cannot read an image from a {other:?} mount"
        ))),
    }
}

/// Bytes (allocated blocks) and inodes below `dir`, each inode counted once.
pub fn usage(dir: &Path) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if seen.insert((m.dev(), m.ino())) {
                bytes += m.blocks() * 512;
                inodes += 1;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_files_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        assert_eq!(
            read_plain(root.path(), "group").as_deref(),
            Some("root:x:0:\n")
        );
        assert_eq!(read_plain(root.path(), "passwd"), None);
        let (bytes, inodes) = usage(root.path());
        assert!(inodes >= 3 && bytes > 0, "{bytes} {inodes}");
    }
}
