//! `critest -benchmark` (cri-tools v1.36.0) against both CRI nodes of the CRI block, offline.
//!
//! critest's benchmarks need three things a machine without internet lacks, all set up here:
//! a container image with `top` (our busybox test image, named in `-test-images-file`), an image
//! to pull (the same busybox, pushed to a local docker-registry on 127.0.0.1 and pulled over
//! plain HTTP through each node's registry hosts directory), and sizes
//! (`-benchmarking-params-file`; without one critest runs one benchmark of five). Each run
//! writes `*_benchmark_data.json` (every sample's duration per CRI call) into its own output
//! dir; the figures are the medians of those, and of the one timing critest only prints
//! ("create PodSandbox and container").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::registry::Registry;
use integration::{IMAGE_REF, cmd, image};

use crate::stats::{Row, Samples, Unit};

/// Deadline of one `critest -benchmark` run.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// Repository and tag of the pull benchmark's image in the local registry.
const PULL_REPO: &str = "bench/busybox";
const PULL_TAG: &str = "test";

/// The registry, its hosts directory and critest's two config files.
pub struct Setup {
    _registry: Registry,
    dir: tempfile::TempDir,
    pull_ref: String,
}

impl Setup {
    /// Starts a docker-registry, pushes the busybox test image, writes the hosts directory
    /// (plain HTTP to it) and critest's files for `n` samples per benchmark.
    pub fn new(n: usize) -> Result<Setup, String> {
        let registry = Registry::start();
        let img = image::image_blobs(&image::busybox_path(), &[])
            .map_err(|e| format!("cannot build the busybox image: {e}"))?;
        let mut blobs: Vec<&[u8]> = img.layers.iter().map(Vec::as_slice).collect();
        blobs.push(&img.config);
        registry
            .push(
                PULL_REPO,
                PULL_TAG,
                &blobs,
                &img.manifest,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .map_err(|e| format!("cannot push to the local registry: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("corral-bench-critest-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let host = registry.host();
        let hosts = dir.path().join("certs.d").join(&host);
        std::fs::create_dir_all(&hosts).map_err(|e| e.to_string())?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let pull_ref = format!("{host}/{PULL_REPO}:{PULL_TAG}");
        std::fs::write(
            dir.path().join("images.yaml"),
            format!("defaultTestContainerImage: {IMAGE_REF}\nwebServerTestImage: {IMAGE_REF}\n"),
        )
        .map_err(|e| e.to_string())?;
        // One sample at a time: the figures are latencies, comparable with the CRI block's.
        std::fs::write(
            dir.path().join("params.yaml"),
            format!(
                "containersNumber: {n}\ncontainersNumberParallel: 1\n\
                 podsNumber: {n}\npodsNumberParallel: 1\n\
                 imagesNumber: {n}\nimagesNumberParallel: 1\n\
                 containerBenchmarkTimeoutSeconds: 60\npodBenchmarkTimeoutSeconds: 60\n\
                 imageBenchmarkTimeoutSeconds: 60\npodContainerStartBenchmarkTimeoutSeconds: 60\n\
                 imagePullingBenchmarkImage: {pull_ref}\n\
                 imageListingBenchmarkImages:\n  - {pull_ref}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok(Setup {
            _registry: registry,
            dir,
            pull_ref,
        })
    }

    /// The registry hosts directory both nodes pull through.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    pub fn pull_ref(&self) -> &str {
        &self.pull_ref
    }

    /// Runs `critest -benchmark` against the CRI socket `socket`; returns the medians' inputs:
    /// `(figure, samples in ms)`, in critest's order.
    pub fn run(&self, label: &str, socket: &Path) -> Result<Vec<(String, Vec<f64>)>, String> {
        let out = self.dir.path().join(format!("out-{label}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let endpoint = format!("unix://{}", socket.display());
        let mut c = std::process::Command::new("critest");
        c.current_dir(self.dir.path())
            .arg("-runtime-endpoint")
            .arg(&endpoint)
            .arg("-image-endpoint")
            .arg(&endpoint)
            .arg("-test-images-file")
            .arg(self.dir.path().join("images.yaml"))
            .arg("-benchmark")
            .arg("-benchmarking-params-file")
            .arg(self.dir.path().join("params.yaml"))
            .arg("-benchmarking-output-dir")
            .arg(&out)
            .arg("-ginkgo.no-color");
        cmd::die_with_parent(&mut c);
        let o = cmd::output_with_timeout(&mut c, RUN_TIMEOUT)
            .map_err(|e| format!("cannot run critest (is it installed?): {e}"))?;
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() || o.timed_out {
            let tail: Vec<&str> = stdout
                .lines()
                .filter(|l| {
                    l.contains("[FAIL")
                        || l.contains("Unexpected error")
                        || l.contains("failed")
                        || l.contains("Ran ")
                })
                .take(8)
                .collect();
            return Err(format!(
                "critest -benchmark {}{}: {}",
                o.status,
                if o.timed_out { " (timed out)" } else { "" },
                tail.join(" / ")
            ));
        }
        let mut figures = printed_durations(&stdout);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| e.to_string())?;
            let what = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .trim_end_matches("_benchmark_data.json")
                .replace('_', " ");
            figures.extend(parse_data(&what, &text).map_err(|e| format!("{}: {e}", f.display()))?);
        }
        if figures.is_empty() {
            return Err("critest wrote no benchmark data".into());
        }
        Ok(figures)
    }
}

/// Samples of one `*_benchmark_data.json`: per operation, and each sample's whole sequence.
fn parse_data(what: &str, text: &str) -> Result<Vec<(String, Vec<f64>)>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let ops: Vec<String> = v["operationsNames"]
        .as_array()
        .ok_or("no operationsNames")?
        .iter()
        .map(|o| o.as_str().unwrap_or_default().to_string())
        .collect();
    let points = v["datapoints"].as_array().ok_or("no datapoints")?;
    let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
    let mut whole = Vec::new();
    for p in points {
        let d = p["operationsDurationsNs"]
            .as_array()
            .ok_or("datapoint without operationsDurationsNs")?;
        for (i, ns) in d.iter().enumerate().take(ops.len()) {
            per_op[i].push(ns.as_f64().unwrap_or(f64::NAN) / 1e6);
        }
        if let (Some(a), Some(b)) = (p["startTime"].as_f64(), p["endTime"].as_f64()) {
            whole.push((b - a) / 1e6);
        }
    }
    let mut out = vec![(format!("critest {what}: whole sequence"), whole)];
    for (op, samples) in ops.into_iter().zip(per_op) {
        out.push((format!("critest {what}: {op}"), samples));
    }
    Ok(out)
}

/// The gmeasure tables critest prints (`name [duration] | N | Min | Median | …`): the median
/// of each, as one sample (critest keeps no data file for them).
fn printed_durations(stdout: &str) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 4 || !cols[0].ends_with("[duration]") {
            continue;
        }
        if let Some(ms) = go_duration_ms(cols[3]) {
            let name = cols[0].trim_end_matches("[duration]").trim();
            out.push((format!("critest: {name} (median of {})", cols[1]), vec![ms]));
        }
    }
    out
}

/// A Go duration as printed (`265.9ms`, `1.2s`, `850µs`, `1m2.5s`) in milliseconds.
fn go_duration_ms(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let (unit, len) = [
            ("ns", 1e-6),
            ("µs", 1e-3),
            ("us", 1e-3),
            ("ms", 1.0),
            ("s", 1e3),
            ("m", 60e3),
            ("h", 3600e3),
        ]
        .iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, f)| (*f, u.len()))?;
        total += n * unit;
        rest = &rest[len..];
    }
    Some(total)
}

/// Rows from both sides' figures, in the order first seen.
pub fn rows(containerd: &[(String, Vec<f64>)], corral: &[(String, Vec<f64>)]) -> Vec<Row> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Row> = BTreeMap::new();
    for (side, figures) in [(0, containerd), (1, corral)] {
        for (name, samples) in figures {
            let row = by.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Row::new(name.clone(), Unit::Millis, None)
            });
            let s: &mut Samples = if side == 0 {
                &mut row.containerd
            } else {
                &mut row.corral
            };
            for v in samples {
                s.push(*v);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|name| by.remove(&name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_tables() {
        assert_eq!(go_duration_ms("265.9ms"), Some(265.9));
        assert_eq!(go_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(go_duration_ms("1m2s"), Some(62_000.0));
        assert_eq!(go_duration_ms("850µs"), Some(0.85));
        assert_eq!(go_duration_ms("0s"), Some(0.0));
        assert_eq!(go_duration_ms("fast"), None);
        let t = printed_durations(
            "    Name | N | Min | Median\n    create PodSandbox and container [duration] | 1 | 265.9ms | 265.9ms | 265.9ms | 0s | 265.9ms\n",
        );
        assert_eq!(
            t,
            vec![(
                "critest: create PodSandbox and container (median of 1)".to_string(),
                vec![265.9]
            )]
        );
    }

    #[test]
    fn parses_benchmark_data() {
        let text = r#"{"operationsNames": ["CreatePod", "StopPod"], "numParallel": 1,
            "datapoints": [
              {"sampleIndex": 0, "startTime": 1000000, "endTime": 5000000,
               "operationsDurationsNs": [2000000, 1000000]},
              {"sampleIndex": 1, "startTime": 6000000, "endTime": 8000000,
               "operationsDurationsNs": [1500000, 500000]}]}"#;
        let f = parse_data("pod", text).unwrap();
        assert_eq!(f[0], ("critest pod: whole sequence".into(), vec![4.0, 2.0]));
        assert_eq!(f[1], ("critest pod: CreatePod".into(), vec![2.0, 1.5]));
        assert_eq!(f[2], ("critest pod: StopPod".into(), vec![1.0, 0.5]));
        assert!(parse_data("pod", "{}").is_err());
    }
}
