//! ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats: cgroup figures
//! from corrald's Tasks.Metrics (cgroup v1 metrics, as containerd's shims report them), the
//! writable layer from Snapshots.Usage, and a pod's network from its namespace.
//!
//! `usage_nano_cores` is a rate: it needs two samples of the cumulative CPU time, so the first
//! answer for a container has none and later ones use the previous sample (as containerd's
//! CRI does).

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::grpc::io::containerd::cgroups::v1::Metrics as CgroupMetrics;
use protocol::grpc::prost::Message;
use protocol::grpc::runtime::v1::*;

use crate::core::Cri;
use crate::corrald::now_nanos;
use crate::error::{Error, Result};
use crate::sandbox::status::labels_match;
use crate::store::{Container, Sandbox, State};

const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
/// cgroup v1 reports "no limit" as a huge number.
const NO_LIMIT: u64 = 1 << 62;

/// The previous CPU sample per container or pod: (when, cumulative nanoseconds).
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// Nanocores since the previous sample of `id`, and records this one.
    fn rate(&self, id: &str, at: i64, total: u64) -> Option<u64> {
        let mut m = self.0.lock().unwrap();
        let prev = m.insert(id.to_string(), (at, total));
        let (t0, c0) = prev?;
        let dt = u64::try_from(at - t0).ok().filter(|d| *d > 0)?;
        Some(((total.saturating_sub(c0)) as u128 * 1_000_000_000 / dt as u128) as u64)
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

/// Decoded metrics by task id.
async fn metrics(cri: &Cri, ids: &[String]) -> Result<HashMap<String, (i64, CgroupMetrics)>> {
    let mut out = HashMap::new();
    for m in cri.corrald.metrics(ids).await? {
        let Some(data) = m.data else { continue };
        if !data.type_url.ends_with(METRICS_TYPE) {
            continue;
        }
        let decoded = CgroupMetrics::decode(data.value.as_slice())
            .map_err(|e| Error::internal(format!("metrics of {}: {e}", m.id)))?;
        let at = m
            .timestamp
            .as_ref()
            .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
            .unwrap_or_else(now_nanos);
        out.insert(m.id, (at, decoded));
    }
    Ok(out)
}

fn cpu(cri: &Cri, id: &str, at: i64, m: &CgroupMetrics) -> Option<CpuUsage> {
    let total = m.cpu.as_ref()?.usage.as_ref()?.total;
    Some(CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: value(total),
        usage_nano_cores: cri.stats.rate(id, at, total).and_then(value),
        psi: None,
    })
}

fn memory(at: i64, m: &CgroupMetrics) -> Option<MemoryUsage> {
    let mem = m.memory.as_ref()?;
    let usage = mem.usage.as_ref()?;
    let working_set = usage.usage.saturating_sub(mem.total_inactive_file);
    Some(MemoryUsage {
        timestamp: at,
        working_set_bytes: value(working_set),
        available_bytes: (usage.limit < NO_LIMIT)
            .then(|| usage.limit.saturating_sub(working_set))
            .and_then(value),
        usage_bytes: value(usage.usage),
        rss_bytes: value(mem.total_rss),
        page_faults: value(mem.total_pg_fault),
        major_page_faults: value(mem.total_pg_maj_fault),
        psi: None,
    })
}

impl Cri {
    async fn writable_layer(&self, id: &str, mountpoint: &str) -> Option<FilesystemUsage> {
        let u = self.corrald.snapshot_usage(id).await.ok()?;
        Some(FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: mountpoint.to_string(),
            }),
            used_bytes: value(u.size.max(0) as u64),
            inodes_used: value(u.inodes.max(0) as u64),
        })
    }

    async fn container_stats_of(&self, containers: Vec<Container>) -> Result<Vec<ContainerStats>> {
        let running: Vec<String> = containers
            .iter()
            .filter(|c| c.state() == State::Running)
            .map(|c| c.id.clone())
            .collect();
        let metrics = metrics(self, &running).await?;
        let mountpoint = self
            .images
            .snapshotter_dir()
            .await
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let config = c.record.config.clone().unwrap_or_default();
            let mut s = ContainerStats {
                attributes: Some(ContainerAttributes {
                    id: c.id.clone(),
                    metadata: config.metadata.clone(),
                    labels: config.labels.clone(),
                    annotations: config.annotations.clone(),
                }),
                writable_layer: self.writable_layer(&c.id, &mountpoint).await,
                ..Default::default()
            };
            if let Some((at, m)) = metrics.get(&c.id) {
                s.cpu = cpu(self, &c.id, *at, m);
                s.memory = memory(*at, m);
            }
            out.push(s);
        }
        Ok(out)
    }

    pub async fn container_stats(
        &self,
        r: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse> {
        let c = self.store.find_container(&r.container_id)?;
        let stats = self.container_stats_of(vec![c]).await?.pop();
        Ok(ContainerStatsResponse { stats })
    }

    pub async fn list_container_stats(
        &self,
        r: ListContainerStatsRequest,
    ) -> Result<ListContainerStatsResponse> {
        let f = r.filter.unwrap_or_default();
        let containers = self
            .store
            .containers_matching(&f.id, &f.pod_sandbox_id)
            .into_iter()
            .filter(|c| {
                let labels = c
                    .record
                    .config
                    .as_ref()
                    .map(|c| c.labels.clone())
                    .unwrap_or_default();
                labels_match(&labels, &f.label_selector)
            })
            .collect();
        Ok(ListContainerStatsResponse {
            stats: self.container_stats_of(containers).await?,
        })
    }

    async fn pod_stats_of(&self, s: Sandbox) -> Result<PodSandboxStats> {
        let config = s.record.config.clone().unwrap_or_default();
        let containers = self
            .container_stats_of(self.store.containers_of(&s.id))
            .await?;
        let at = now_nanos();
        let mut linux = LinuxPodSandboxStats {
            containers,
            ..Default::default()
        };
        if s.ready {
            // The pod's figures: its containers' and the pause process's.
            let pause = metrics(self, std::slice::from_ref(&s.id)).await?;
            let mut total_cpu = 0u64;
            let (mut ws, mut usage, mut rss, mut pf, mut major) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut procs = 0u64;
            let mut add = |m: &CgroupMetrics| {
                if let Some(u) = m.cpu.as_ref().and_then(|c| c.usage.as_ref()) {
                    total_cpu += u.total;
                }
                if let Some(mem) = m.memory.as_ref() {
                    let u = mem.usage.as_ref().map(|u| u.usage).unwrap_or(0);
                    usage += u;
                    ws += u.saturating_sub(mem.total_inactive_file);
                    rss += mem.total_rss;
                    pf += mem.total_pg_fault;
                    major += mem.total_pg_maj_fault;
                }
                if let Some(p) = m.pids.as_ref() {
                    procs += p.current;
                }
            };
            if let Some((_, m)) = pause.get(&s.id) {
                add(m);
            }
            let running: Vec<String> = linux
                .containers
                .iter()
                .filter(|c| c.cpu.is_some())
                .filter_map(|c| c.attributes.as_ref().map(|a| a.id.clone()))
                .collect();
            for (_, m) in metrics(self, &running).await?.values() {
                add(m);
            }
            linux.cpu = Some(CpuUsage {
                timestamp: at,
                usage_core_nano_seconds: value(total_cpu),
                usage_nano_cores: self.stats.rate(&s.id, at, total_cpu).and_then(value),
                psi: None,
            });
            linux.memory = Some(MemoryUsage {
                timestamp: at,
                working_set_bytes: value(ws),
                usage_bytes: value(usage),
                rss_bytes: value(rss),
                page_faults: value(pf),
                major_page_faults: value(major),
                ..Default::default()
            });
            linux.process = Some(ProcessUsage {
                timestamp: at,
                process_count: value(procs),
            });
            if s.pid != 0 && !s.record.netns_path.is_empty() {
                linux.network = network(s.pid, at);
            }
        }
        Ok(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: s.id.clone(),
                metadata: config.metadata.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
            }),
            linux: Some(linux),
            windows: None,
        })
    }

    pub async fn pod_sandbox_stats(
        &self,
        r: PodSandboxStatsRequest,
    ) -> Result<PodSandboxStatsResponse> {
        let s = self.store.find_sandbox(&r.pod_sandbox_id)?;
        Ok(PodSandboxStatsResponse {
            stats: Some(self.pod_stats_of(s).await?),
        })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        r: ListPodSandboxStatsRequest,
    ) -> Result<ListPodSandboxStatsResponse> {
        let f = r.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for s in self.store.sandboxes() {
            let labels = s
                .record
                .config
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default();
            if (!f.id.is_empty() && !s.id.starts_with(&f.id))
                || !labels_match(&labels, &f.label_selector)
            {
                continue;
            }
            stats.push(self.pod_stats_of(s).await?);
        }
        Ok(ListPodSandboxStatsResponse { stats })
    }
}

/// Interface counters of the pod's network namespace, read through its pause process.
fn network(pid: u32, at: i64) -> Option<NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut ifaces = parse_net_dev(&text);
    ifaces.retain(|i| i.name != "lo");
    let default = ifaces
        .iter()
        .position(|i| i.name == "eth0")
        .map(|i| ifaces.remove(i));
    Some(NetworkUsage {
        timestamp: at,
        default_interface: default,
        interfaces: ifaces,
    })
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs ... tx_bytes
/// tx_packets tx_errs ...` (8 receive and 8 transmit columns).
fn parse_net_dev(text: &str) -> Vec<NetworkInterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let n: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if n.len() < 16 {
                return None;
            }
            Some(NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: value(n[0]),
                rx_errors: value(n[2]),
                tx_bytes: value(n[8]),
                tx_errors: value(n[10]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_needs_two_samples() {
        let s = CpuSamples::default();
        assert_eq!(s.rate("c", 1_000_000_000, 5_000), None);
        // 0.5 s of CPU over 1 s: half a core.
        assert_eq!(s.rate("c", 2_000_000_000, 500_005_000), Some(500_000_000));
        assert_eq!(
            s.rate("c", 2_000_000_000, 600_000_000),
            None,
            "no time passed"
        );
    }

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2000      20    3    0    0     0          0         0     4000      40    5    0    0     0       0          0\n";
        let v = parse_net_dev(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].name, "eth0");
        assert_eq!(v[1].rx_bytes, value(2000));
        assert_eq!(v[1].rx_errors, value(3));
        assert_eq!(v[1].tx_bytes, value(4000));
        assert_eq!(v[1].tx_errors, value(5));
    }

    #[test]
    fn memory_working_set_excludes_inactive_file() {
        use protocol::grpc::io::containerd::cgroups::v1::{MemoryEntry, MemoryStat};
        let m = CgroupMetrics {
            memory: Some(MemoryStat {
                total_inactive_file: 30,
                total_rss: 50,
                usage: Some(MemoryEntry {
                    usage: 100,
                    limit: 1000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let u = memory(7, &m).unwrap();
        assert_eq!(u.working_set_bytes, value(70));
        assert_eq!(u.available_bytes, value(930));
        assert_eq!(u.usage_bytes, value(100));
        let unlimited = CgroupMetrics {
            memory: Some(MemoryStat {
                usage: Some(MemoryEntry {
                    usage: 100,
                    limit: u64::MAX,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(memory(7, &unlimited).unwrap().available_bytes, None);
    }
}
