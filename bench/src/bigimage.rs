//! The pull benchmark's image: 4 gzip layers of ~70 MB each (~280 MB compressed), made from
//! files on this machine (`/usr/share`, then `/usr/lib`), pushed to a private docker-registry.
//!
//! Generating the layers takes about a minute; with `BENCH_LAYERS=<dir>` they are kept there
//! (with their diff ids) and reused by the next run.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use integration::image::{MEDIA_MANIFEST, manifest_for_gzip_layers};
use integration::registry::Registry;
use sha2::{Digest, Sha256};

/// Files larger than this are skipped: a handful of huge files would make layers lumpy.
const MAX_FILE: u64 = 16 << 20;

/// The pushed image.
pub struct BigImage {
    /// Compressed bytes of all layers.
    pub compressed: u64,
    /// Uncompressed bytes of all layers.
    pub uncompressed: u64,
    pub layers: usize,
    /// The manifest digest, for the sanity check after a pull.
    pub manifest_digest: String,
}

/// Counts and hashes what goes through it (the uncompressed tar: its digest is the diff id).
struct Hashing<W> {
    inner: W,
    n: u64,
    sha: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.sha.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Directories, regular files (up to [`MAX_FILE`]) and symlinks under `roots`, in a stable order.
fn source_files(roots: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = roots.iter().rev().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            out.push(p.clone());
            let Ok(rd) = std::fs::read_dir(&p) else {
                continue;
            };
            let mut kids: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            kids.sort();
            stack.extend(kids.into_iter().rev());
        } else if (m.is_file() && m.len() < MAX_FILE) || m.file_type().is_symlink() {
            out.push(p);
        }
    }
    out
}

/// One gzip layer of files from `files[*next..]` until its compressed size reaches `target`.
/// Returns (compressed layer, diff id, uncompressed size).
fn make_layer(
    files: &[PathBuf],
    next: &mut usize,
    target: u64,
) -> io::Result<(Vec<u8>, String, u64)> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(Hashing {
        inner: gz,
        n: 0,
        sha: Sha256::new(),
    });
    b.follow_symlinks(false);
    while (b.get_ref().inner.get_ref().len() as u64) < target {
        if *next >= files.len() {
            return Err(io::Error::other(
                "not enough files under /usr/share and /usr/lib for the pull image",
            ));
        }
        let p = &files[*next];
        *next += 1;
        let rel = p.strip_prefix("/").unwrap_or(p);
        if b.append_path_with_name(p, rel).is_err() {
            continue; // unreadable or vanished: skip
        }
    }
    b.finish()?;
    let h = b.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(h.sha.finalize()));
    Ok((h.inner.finish()?, diff_id, h.n))
}

/// Generates (or reads from `cache`) the layers.
fn layers(
    per_layer: u64,
    count: usize,
    cache: Option<&Path>,
) -> io::Result<Vec<(Vec<u8>, String, u64)>> {
    let mut out = Vec::new();
    let mut files: Option<Vec<PathBuf>> = None;
    let mut next = 0;
    for i in 0..count {
        let cached = cache.map(|d| {
            (
                d.join(format!("layer{i}-{}.tar.gz", per_layer / 1_000_000)),
                d.join(format!("layer{i}-{}.meta", per_layer / 1_000_000)),
            )
        });
        if let Some((blob, meta)) = &cached
            && let (Ok(b), Ok(m)) = (std::fs::read(blob), std::fs::read_to_string(meta))
            && let Some((diff_id, size)) = m.trim().split_once(' ')
            && let Ok(size) = size.parse()
        {
            out.push((b, diff_id.to_string(), size));
            continue;
        }
        let files = files.get_or_insert_with(|| source_files(&["/usr/share", "/usr/lib"]));
        let layer = make_layer(files, &mut next, per_layer)?;
        println!(
            "  layer {i}: {:.1} MB compressed, {:.1} MB uncompressed",
            layer.0.len() as f64 / 1e6,
            layer.2 as f64 / 1e6
        );
        if let Some((blob, meta)) = &cached {
            std::fs::create_dir_all(blob.parent().unwrap())?;
            let mut f = BufWriter::new(File::create(blob)?);
            f.write_all(&layer.0)?;
            f.flush()?;
            std::fs::write(meta, format!("{} {}\n", layer.1, layer.2))?;
        }
        out.push(layer);
    }
    Ok(out)
}

/// Builds the image and pushes it to `registry` as `<name>:<tag>`.
pub fn push(
    registry: &Registry,
    name: &str,
    tag: &str,
    per_layer: u64,
    count: usize,
    cache: Option<&Path>,
) -> io::Result<BigImage> {
    let (mut blobs, mut diff_ids, mut uncompressed) = (Vec::new(), Vec::new(), 0);
    for (blob, diff_id, size) in layers(per_layer, count, cache)? {
        blobs.push(blob);
        diff_ids.push(diff_id);
        uncompressed += size;
    }
    let (manifest, config) = manifest_for_gzip_layers(&blobs, &diff_ids)?;
    let mut all: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    all.push(&config);
    registry.push(name, tag, &all, &manifest, MEDIA_MANIFEST)?;
    Ok(BigImage {
        compressed: blobs.iter().map(|b| b.len() as u64).sum(),
        uncompressed,
        layers: blobs.len(),
        manifest_digest: format!("sha256:{}", hex::encode(Sha256::digest(&manifest))),
    })
}
