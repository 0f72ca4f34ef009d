//! critest, cri-tools' CRI validation suite, against corral-cri (or, for comparison, against
//! containerd 1.6's own CRI plugin), fully offline.
//!
//! critest pulls images by fixed names from `registry.k8s.io`, `gcr.io` and `k8s.gcr.io`. Here
//! look-alikes of them are built ([`images`], from a static busybox built from Debian's source
//! package, [`busybox`], and small static programs of ours), pushed into a local
//! docker-registry, and the three registry hosts are mirrored to it through a registry hosts
//! directory in containerd's layout, which corrald (`[registry] config_path`) and containerd's
//! CRI plugin both read:
//!
//! ```text
//! <setup>/hosts/registry.k8s.io/hosts.toml   server = "https://registry.k8s.io"
//!                                            [host."http://127.0.0.1:PORT"]
//!                                              capabilities = ["pull", "resolve"]
//! <setup>/hosts/gcr.io/hosts.toml            (the same, for gcr.io)
//! <setup>/hosts/k8s.gcr.io/hosts.toml        (the same, for k8s.gcr.io)
//! <setup>/images.yaml                        critest's -test-images-file
//! ```
//!
//! ```text
//! Setup::start ──► registry (127.0.0.1:PORT) ◄── push every image
//!      │
//!      ├─► CriNode (corrald --config [registry] config_path = hosts/, corral-cri) ─┐
//!      └─► ContainerdCri (containerd, CRI plugin, registry.config_path = hosts/) ───┤
//!                                                                                   ▼
//!          critest -runtime-endpoint unix://SOCK -test-images-file images.yaml
//!                  -ginkgo.skip AppArmor -ginkgo.json-report report.json ──► Report
//! ```
//!
//! With [`Options::websocket_streaming`], critest then runs its streaming tests again over
//! WebSocket instead of SPDY, against the same node.
//!
//! [`run`] does all of it; `corral-critest` (the binary behind `make critest`) and the
//! `critest` integration test call it.

pub mod busybox;
pub mod containerd_cri;
pub mod images;
pub mod report;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use containerd_cri::ContainerdCri;
use images::{BUSYBOX, MIRRORED_HOSTS, NGINX, TestImage};
pub use report::{Outcome, Report, Spec};

use crate::registry::Registry;
use crate::{CriNode, CriOptions, Ctr, cmd};

/// critest's tests that need AppArmor: this host has none, so they would skip themselves; they
/// are left out instead (`-ginkgo.skip`).
pub const SKIP_APPARMOR: &str = "AppArmor";

/// How long a whole critest run may take before it is killed (a run takes a few minutes).
const RUN_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// The registry, its images and the files critest and the daemons read; see the module docs.
/// Dropping it stops the registry and removes the files.
pub struct Setup {
    registry: Registry,
    dir: tempfile::TempDir,
    images: Vec<TestImage>,
    /// How long building (or finding the cached busybox) and pushing the images took.
    pub build_time: Duration,
}

impl Setup {
    /// Builds the images (and the static busybox, once per checkout), starts a registry, pushes
    /// every image, and writes the hosts directory and the images file. Panics with the cause
    /// if anything fails.
    pub fn start() -> Setup {
        let started = Instant::now();
        let busybox = busybox::static_busybox()
            .unwrap_or_else(|e| panic!("cannot build critest's static busybox: {e}"));
        let applets = busybox::applet_paths(&busybox)
            .unwrap_or_else(|e| panic!("cannot list the applets of {}: {e}", busybox.display()));
        let images = images::build_all(&busybox, &applets)
            .unwrap_or_else(|e| panic!("cannot build critest's images: {e}"));
        let registry = Registry::start();
        for img in &images {
            push(&registry, img);
        }
        let dir = tempfile::Builder::new()
            .prefix("critest-")
            .tempdir()
            .expect("cannot create a temp dir for critest");
        let me = Setup {
            registry,
            dir,
            images,
            build_time: started.elapsed(),
        };
        me.write_files();
        me
    }

    fn write_files(&self) {
        for host in MIRRORED_HOSTS {
            let d = self.hosts_dir().join(host);
            fs::create_dir_all(&d).expect("cannot create the hosts directory");
            fs::write(
                d.join("hosts.toml"),
                hosts_toml(host, &self.registry.host()),
            )
            .expect("cannot write hosts.toml");
        }
        fs::write(
            self.images_file(),
            format!("defaultTestContainerImage: {BUSYBOX}\nwebServerTestImage: {NGINX}\n"),
        )
        .expect("cannot write critest's images file");
    }

    /// The registry hosts directory (containerd's `hosts.toml` layout).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// critest's `-test-images-file`.
    pub fn images_file(&self) -> PathBuf {
        self.dir.path().join("images.yaml")
    }

    /// A directory for this run's files (report, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn images(&self) -> &[TestImage] {
        &self.images
    }

    /// Imports every image under every name into `ctr`'s namespace, so that tests which do
    /// not pull themselves find them even when the daemon cannot pull through the mirrors.
    pub fn preload(&self, ctr: &Ctr) {
        for img in &self.images {
            let names: Vec<&str> = img.references.iter().map(String::as_str).collect();
            let tar = crate::image::oci_layout_tar_named(&img.blobs, &names)
                .unwrap_or_else(|e| panic!("cannot pack {names:?}: {e}"));
            let path = self.dir.path().join("preload.tar");
            fs::write(&path, tar).expect("cannot write an image archive");
            ctr.ok(&["images", "import", path.to_str().expect("UTF-8 temp path")]);
            let _ = fs::remove_file(path);
        }
    }
}

fn push(registry: &Registry, img: &TestImage) {
    let blobs: Vec<&[u8]> = img
        .blobs
        .layers
        .iter()
        .map(Vec::as_slice)
        .chain([img.blobs.config.as_slice()])
        .collect();
    for (repo, tag) in img.pushes() {
        registry
            .push(
                &repo,
                &tag,
                &blobs,
                &img.blobs.manifest,
                crate::image::MEDIA_MANIFEST,
            )
            .unwrap_or_else(|e| panic!("cannot push {repo}:{tag}: {e}"));
    }
}

/// containerd's `hosts.toml` for `host`, mirrored to the plain-HTTP registry at `mirror`
/// (`127.0.0.1:PORT`).
pub fn hosts_toml(host: &str, mirror: &str) -> String {
    format!(
        "server = \"https://{host}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The CRI implementation critest runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// corral-cri on corrald.
    Corral,
    /// containerd 1.6 with its own CRI plugin: the reference.
    Containerd,
}

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    /// Import every image into the runtime before critest starts ([`Setup::preload`]).
    pub preload: bool,
    /// More critest flags (`-ginkgo.focus REGEX`, `-ginkgo.v`, …).
    pub flags: Vec<String>,
    /// critest's output goes to this file; to our stdout and stderr when `None`.
    pub log: Option<PathBuf>,
    /// Where ginkgo's JSON report is kept; a temp file when `None`.
    pub report: Option<PathBuf>,
    /// Run critest's streaming tests a second time over WebSocket (`-websocket-exec`,
    /// `-websocket-attach`, `-websocket-portforward`; the first run uses SPDY, kubelet's
    /// default), against the same node. Their results join the report with
    /// [`WEBSOCKET_SUFFIX`] after their names.
    pub websocket_streaming: bool,
}

/// What the names of the WebSocket run's tests end with in the report.
pub const WEBSOCKET_SUFFIX: &str = " [websocket]";
/// The tests the WebSocket run repeats.
pub const STREAMING_FOCUS: &str = "Streaming";

/// The result of [`run`].
pub struct Run {
    pub report: Report,
    /// critest's exit status (non-zero when a test failed).
    pub status: ExitStatus,
    /// Building and pushing the images.
    pub setup_time: Duration,
    /// critest itself.
    pub critest_time: Duration,
    /// The end of the daemons' logs (corral-cri and corrald, or containerd), for failures.
    pub daemon_log: String,
}

/// Sets everything up, runs critest against `options.target` and tears it all down.
pub fn run(options: &Options) -> Run {
    let setup = Setup::start();
    let report_path = options
        .report
        .clone()
        .unwrap_or_else(|| setup.dir().join("report.json"));
    let (status, critest_time, report, daemon_log) = match options.target {
        Target::Corral => {
            let node = CriNode::start_with(CriOptions {
                registry_hosts: Some(setup.hosts_dir()),
                ..CriOptions::default()
            });
            if options.preload {
                setup.preload(&node.corrald().ctr_in(crate::cri::K8S_NAMESPACE));
            }
            let (status, time, report) = passes(&node.socket(), &setup, options, &report_path);
            let log = format!(
                "--- corral-cri ---\n{}\n--- corrald ---\n{}",
                node.log_tail(80),
                node.corrald().log_tail(80)
            );
            (status, time, report, log)
        }
        Target::Containerd => {
            let node = ContainerdCri::start(&setup);
            if options.preload {
                setup.preload(&node.ctr());
            }
            let (status, time, report) = passes(&node.socket(), &setup, options, &report_path);
            (status, time, report, node.log_tail(120))
        }
    };
    Run {
        report,
        status,
        setup_time: setup.build_time,
        critest_time,
        daemon_log,
    }
}

/// critest once as `options` say, then (with `websocket_streaming`) its streaming tests over
/// WebSocket; the status is the first failure's, the report both runs'.
fn passes(
    socket: &Path,
    setup: &Setup,
    options: &Options,
    report_path: &Path,
) -> (ExitStatus, Duration, Report) {
    let (status, mut time) = critest(socket, setup, options, report_path);
    let mut report = read_report(report_path, status);
    if !options.websocket_streaming {
        return (status, time, report);
    }
    let mut ws = options.clone();
    ws.flags.extend(
        [
            &format!("-ginkgo.focus={STREAMING_FOCUS}"),
            "-websocket-exec",
            "-websocket-attach",
            "-websocket-portforward",
        ]
        .map(String::from),
    );
    ws.log = options
        .log
        .as_ref()
        .map(|l| l.with_extension("websocket.log"));
    let ws_report = report_path.with_extension("websocket.json");
    let (ws_status, ws_time) = critest(socket, setup, &ws, &ws_report);
    time += ws_time;
    for mut spec in read_report(&ws_report, ws_status).specs {
        if spec.outcome != Outcome::NotRun {
            spec.name.push_str(WEBSOCKET_SUFFIX);
            report.specs.push(spec);
        }
    }
    let status = if status.success() { ws_status } else { status };
    (status, time, report)
}

fn read_report(path: &Path, status: ExitStatus) -> Report {
    let json = fs::read(path).unwrap_or_else(|e| {
        panic!(
            "critest wrote no report at {} ({e}); it exited with {status}",
            path.display()
        )
    });
    Report::parse(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The critest command line for a CRI socket.
pub fn critest_command(socket: &Path, setup: &Setup, options: &Options, report: &Path) -> Command {
    let endpoint = format!("unix://{}", socket.display());
    let mut c = Command::new("critest");
    c.arg("-runtime-endpoint")
        .arg(&endpoint)
        .arg("-image-endpoint")
        .arg(&endpoint)
        .arg("-test-images-file")
        .arg(setup.images_file())
        .arg("-ginkgo.skip")
        .arg(SKIP_APPARMOR)
        .arg("-ginkgo.json-report")
        .arg(report)
        .args(&options.flags)
        .current_dir(setup.dir());
    c
}

fn critest(
    socket: &Path,
    setup: &Setup,
    options: &Options,
    report: &Path,
) -> (ExitStatus, Duration) {
    let mut c = critest_command(socket, setup, options, report);
    c.stdin(Stdio::null());
    if let Some(log) = &options.log {
        let f = fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let f2 = f.try_clone().expect("cannot dup the critest log");
        c.stdout(Stdio::from(f)).stderr(Stdio::from(f2));
        c.arg("-ginkgo.no-color");
    }
    cmd::die_with_parent(&mut c);
    let started = Instant::now();
    let child = c.spawn().unwrap_or_else(|e| {
        panic!("cannot run critest: {e} (install it: ../shared/cri-tools/install.sh)")
    });
    let (status, timed_out) =
        cmd::wait_with_timeout(child, RUN_TIMEOUT).expect("cannot wait for critest");
    assert!(
        !timed_out,
        "critest ran for more than {RUN_TIMEOUT:?} and was killed"
    );
    (status, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_mirrors_a_registry_to_plain_http() {
        assert_eq!(
            hosts_toml("registry.k8s.io", "127.0.0.1:5000"),
            "server = \"https://registry.k8s.io\"\n\n\
             [host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
    }
}
