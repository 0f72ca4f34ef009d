//! Block 4: pull + unpack, and import + unpack, of the 4-layer benchmark image
//! ([`crate::bigimage`]), each into a fresh daemon, with the daemon's root on the disk and on a
//! tmpfs, so that the figures say what the software does apart from what the disk does.
//!
//! ```text
//!  for medium in [disk, tmpfs]:
//!    rounds × { ctr images pull → containerd, ctr images pull → corrald, corral pull → corrald }
//!    (untimed: pull into containerd, ctr images export → <medium>/big.tar)
//!    rounds × { ctr images import → containerd, ctr images import → corrald,
//!               corral images import → corrald }
//! ```
//!
//! The `corral …` rows are compared with the `ctr …` into containerd of the same medium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use integration::containerd::Options;
use integration::registry::Registry;
use integration::{Containerd, Target, cmd};

use crate::stats::{Row, Unit};
use crate::{CONTAINERD, CORRALD, Config, PULL_TIMEOUT, Report, bigimage, host, label, side};

/// What a method needs: the image's reference at the registry and its exported archive.
struct Source<'a> {
    reference: &'a str,
    archive: &'a Path,
}

/// One way of getting the benchmark image into a fresh daemon.
struct Method {
    /// Row label (the medium is appended) and the column it fills.
    figure: &'static str,
    target: Target,
    command: fn(&Containerd, &Source) -> Result<Command, String>,
    /// The row whose containerd column this one is compared with, if not its own.
    baseline: Option<&'static str>,
    /// Highest corral/containerd ratio wanted.
    target_ratio: Option<f64>,
}

const CTR_PULL: &str = "pull + unpack: `ctr images pull --plain-http`";
const CTR_IMPORT: &str = "import + unpack: `ctr images import`";

/// Issue 16: `corral pull` (and import) at least 3x faster than ctr into containerd.
const THREE_TIMES: Option<f64> = Some(1.0 / 3.0);

const PULLS: &[Method] = &[
    Method {
        figure: CTR_PULL,
        target: CONTAINERD,
        command: ctr_pull,
        baseline: None,
        target_ratio: None,
    },
    Method {
        figure: CTR_PULL,
        target: CORRALD,
        command: ctr_pull,
        baseline: None,
        target_ratio: None,
    },
    Method {
        figure: "pull + unpack: `corral pull --plain-http` (server side) vs ctr into containerd",
        target: CORRALD,
        command: corral_pull,
        baseline: Some(CTR_PULL),
        target_ratio: THREE_TIMES,
    },
];

const IMPORTS: &[Method] = &[
    Method {
        figure: CTR_IMPORT,
        target: CONTAINERD,
        command: ctr_import,
        baseline: None,
        target_ratio: None,
    },
    Method {
        figure: CTR_IMPORT,
        target: CORRALD,
        command: ctr_import,
        baseline: None,
        target_ratio: None,
    },
    Method {
        figure: "import + unpack: `corral images import` vs ctr into containerd",
        target: CORRALD,
        command: corral_import,
        baseline: Some(CTR_IMPORT),
        target_ratio: THREE_TIMES,
    },
];

fn ctr_pull(d: &Containerd, s: &Source) -> Result<Command, String> {
    Ok(d.ctr()
        .command(&["images", "pull", "--plain-http", s.reference]))
}

fn ctr_import(d: &Containerd, s: &Source) -> Result<Command, String> {
    Ok(d.ctr()
        .command(&["images", "import", &s.archive.display().to_string()]))
}

/// The `corral` CLI: `$CORRAL_BIN`, else `corral` next to corrald.
fn corral_cli() -> PathBuf {
    std::env::var_os("CORRAL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| integration::corrald::corrald_path().with_file_name("corral"))
}

/// `corral --address <sock> --namespace <ns> <args>`, when the binary exists.
fn corral(d: &Containerd, args: &[&str]) -> Result<Command, String> {
    let bin = corral_cli();
    if !bin.is_file() {
        return Err(format!(
            "no corral CLI at {} (set CORRAL_BIN)",
            bin.display()
        ));
    }
    let mut c = Command::new(bin);
    c.arg("--address")
        .arg(d.address())
        .arg("--namespace")
        .arg(d.namespace())
        .args(args);
    cmd::die_with_parent(&mut c);
    Ok(c)
}

fn corral_pull(d: &Containerd, s: &Source) -> Result<Command, String> {
    corral(d, &["pull", "--plain-http", s.reference])
}

fn corral_import(d: &Containerd, s: &Source) -> Result<Command, String> {
    corral(d, &["images", "import", &s.archive.display().to_string()])
}

/// Where the daemons' directories go.
enum Medium {
    /// `$TMPDIR`, as everywhere else in the bench.
    Disk(tempfile::TempDir),
    /// A tmpfs mounted for the block, unmounted on drop.
    Tmpfs(tempfile::TempDir),
}

impl Medium {
    fn disk() -> Medium {
        Medium::Disk(
            tempfile::Builder::new()
                .prefix("corral-bench-disk-")
                .tempdir()
                .expect("cannot create a temp dir"),
        )
    }

    /// A tmpfs big enough for the image three times over (blobs, snapshots, the archive).
    fn tmpfs(image_bytes: u64) -> Result<Medium, String> {
        let dir = tempfile::Builder::new()
            .prefix("corral-bench-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let size = (image_bytes * 4).max(1 << 30);
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {}: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Medium::Tmpfs(dir))
    }

    fn name(&self) -> &'static str {
        match self {
            Medium::Disk(_) => "root on disk",
            Medium::Tmpfs(_) => "root on tmpfs",
        }
    }

    fn path(&self) -> &Path {
        match self {
            Medium::Disk(d) | Medium::Tmpfs(d) => d.path(),
        }
    }
}

impl Drop for Medium {
    fn drop(&mut self) {
        if let Medium::Tmpfs(d) = self {
            let _ = Command::new("umount").arg(d.path()).status();
        }
    }
}

/// Block 4.
pub fn block(cfg: &Config, report: &mut Report) {
    println!(
        "== block 4: pull and import of a 4-layer image of ~{} MB ({} rounds, disk and tmpfs)",
        4 * cfg.layer_bytes / 1_000_000,
        cfg.rounds
    );
    let registry = Registry::start();
    let t = Instant::now();
    let img = bigimage::push(
        &registry,
        "bench/big",
        "v1",
        cfg.layer_bytes,
        4,
        cfg.layers_cache.as_deref(),
    )
    .expect("cannot build and push the pull image");
    println!(
        "  image: {} layers, {:.1} MB compressed, {:.1} MB uncompressed (ready in {:.1}s)",
        img.layers,
        img.compressed as f64 / 1e6,
        img.uncompressed as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    report.notes.push(format!(
        "Pull image: {} gzip layers from /usr/share and /usr/lib, {:.1} MB compressed, {:.1} MB \
         uncompressed, served by a local docker-registry over plain HTTP; each pull or import \
         goes into a fresh daemon whose root is on the disk, then on a tmpfs (the registry's \
         storage stays on the disk). Import reads the archive `ctr images export` wrote of the \
         same image, from the same medium as the root. corrald extracts up to {} layers at once.",
        img.layers,
        img.compressed as f64 / 1e6,
        img.uncompressed as f64 / 1e6,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    ));
    let reference = format!("{}/bench/big:v1", registry.host());
    let mut rows: Vec<Row> = Vec::new();
    let media: Vec<Result<Medium, String>> = vec![
        Ok(Medium::disk()),
        Medium::tmpfs(img.compressed + img.uncompressed),
    ];
    for medium in media {
        let medium = match medium {
            Ok(m) => m,
            Err(why) => {
                report
                    .notes
                    .push(format!("Not measured: pull and import on a tmpfs: {why}"));
                continue;
            }
        };
        let archive = medium.path().join("big.tar");
        let source = Source {
            reference: &reference,
            archive: &archive,
        };
        run_methods(cfg, report, &medium, &source, PULLS, &img, &mut rows);
        // The archive to import: the image as ctr exports it from containerd.
        let exported = (|| -> Result<(), String> {
            let d = Containerd::start_in(CONTAINERD, options(), medium.path());
            let pulled = d.ctr().run(&["images", "pull", "--plain-http", &reference]);
            if !pulled.success() {
                return Err(pulled.describe());
            }
            let out = d.ctr().run(&[
                "images",
                "export",
                &archive.display().to_string(),
                &reference,
            ]);
            out.success().then_some(()).ok_or_else(|| out.describe())
        })();
        match exported {
            Ok(()) => run_methods(cfg, report, &medium, &source, IMPORTS, &img, &mut rows),
            Err(why) => report.notes.push(format!(
                "Not measured: import, {}: cannot export the image: {why}",
                medium.name()
            )),
        }
    }
    println!("{}", crate::stats::table(&rows));
    report.rows.extend(rows);
}

fn options() -> Options {
    Options {
        log_level: "info",
        import_image: false,
        runc_v2_is_corral: false,
        runc_timeout: None,
        cri_plugin: false,
        message_limits: None,
    }
}

/// `rounds` rounds of `methods` on `medium`, each into a fresh daemon; fills `rows`.
fn run_methods(
    cfg: &Config,
    report: &mut Report,
    medium: &Medium,
    source: &Source,
    methods: &[Method],
    img: &bigimage::BigImage,
    rows: &mut Vec<Row>,
) {
    let figure = |f: &str| format!("{f} ({})", medium.name());
    let mut unavailable: Vec<Option<String>> = vec![None; methods.len()];
    for r in 0..cfg.rounds {
        println!("  {}: round {}/{}", medium.name(), r + 1, cfg.rounds);
        for (i, m) in methods.iter().enumerate() {
            if unavailable[i].is_some() {
                continue;
            }
            let d = Containerd::start_in(m.target, options(), medium.path());
            let mut c = match (m.command)(&d, source) {
                Ok(c) => c,
                Err(why) => {
                    unavailable[i] = Some(why);
                    continue;
                }
            };
            // Each pull writes ~3x its size to disk; start every one with the previous pull's
            // dirty pages written back, or it pays for them (seen: 13 s then 51 s for the same
            // pull on this VM's disk).
            host::flush_dirty_pages();
            report.quiet(
                cfg,
                &format!("{} into {}: {}", medium.name(), label(m.target), m.figure),
            );
            let t = Instant::now();
            let out = cmd::output_with_timeout(&mut c, PULL_TIMEOUT);
            let el = t.elapsed();
            let ok = match &out {
                Ok(o) if o.status.success() && !o.timed_out => Ok(()),
                Ok(o) => Err(format!(
                    "exited {}{}: {}",
                    o.status,
                    if o.timed_out { " (timed out)" } else { "" },
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = ok {
                if m.baseline.is_some() {
                    // A corral way that does not work here: note and skip it.
                    unavailable[i] = Some(why);
                    continue;
                }
                panic!("{}: {} failed: {why}", label(m.target), m.figure);
            }
            // Sanity: the image is there, complete and unpacked.
            let check = d.ctr().ok(&["images", "check"]);
            let line = check
                .lines()
                .find(|l| l.starts_with(source.reference))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no image {} after {}:\n{check}",
                        label(m.target),
                        source.reference,
                        m.figure
                    )
                });
            assert!(
                line.contains("complete") && line.contains("true"),
                "{}: image not complete and unpacked after {}: {line}",
                label(m.target),
                m.figure
            );
            let ls = d.ctr().ok(&["images", "ls"]);
            assert!(
                ls.contains(&img.manifest_digest),
                "{}: wrong manifest:\n{ls}",
                label(m.target)
            );
            let name = figure(m.figure);
            let row = match rows.iter_mut().find(|row| row.figure == name) {
                Some(row) => row,
                None => {
                    rows.push(Row::new(&name, Unit::Seconds, m.target_ratio));
                    rows.last_mut().unwrap()
                }
            };
            side(row, m.target).push(el.as_secs_f64());
            println!("    {name} → {}: {:.2}s", label(m.target), el.as_secs_f64());
        }
    }
    // The corral rows borrow their containerd column from their baseline.
    for m in methods {
        let Some(base) = m.baseline else { continue };
        let baseline = rows
            .iter()
            .find(|r| r.figure == figure(base))
            .map(|r| r.containerd.clone())
            .unwrap_or_default();
        if let Some(row) = rows.iter_mut().find(|r| r.figure == figure(m.figure)) {
            row.containerd = baseline;
        }
    }
    for (m, why) in methods.iter().zip(&unavailable) {
        if let Some(why) = why {
            report.notes.push(format!(
                "Not measured: \"{}\" on {}: {why}",
                figure(m.figure),
                label(m.target)
            ));
            if !rows.iter().any(|r| r.figure == figure(m.figure)) {
                rows.push(Row::new(figure(m.figure), Unit::Seconds, m.target_ratio));
            }
        }
    }
}
