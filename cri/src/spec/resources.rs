//! cgroup limits and OOM scores (containerd's `customopts.WithResources`, `WithOOMScoreAdj`,
//! `WithPodOOMScoreAdj`, `WithDefaultSandboxShares`).
//!
//! - 0 or empty means "not set" for every CRI field, so nothing is written for it.
//! - A memory limit without a swap limit also limits memory+swap to the limit (no swapping),
//!   when the node has the swap controller; runc refuses a swap limit it cannot apply.
//! - Hugepage limits are skipped on a node without the hugetlb controller (containerd's
//!   default `tolerate_missing_hugetlb_controller = true`).
//! - An OOM score below the one corral-cri itself has is raised to it: the kernel refuses a
//!   lower one to a process without CAP_SYS_RESOURCE in the initial user namespace, and root
//!   on some nodes lacks it (containerd's `restrict_oom_score_adj`).
//! - The pause container gets 2 CPU shares (the minimum) and OOM score -998: it must outlive
//!   its containers under memory pressure, as kubelet's own components do (-999).

use protocol::grpc::runtime::v1::LinuxContainerResources;
use serde_json::{Map, Value, json};

use super::Node;
use crate::error::{Error, Result};

pub const SANDBOX_CPU_SHARES: u64 = 2;
pub const SANDBOX_OOM_SCORE_ADJ: i64 = -998;

/// OCI `LinuxResources` (cpu, memory, hugepageLimits, unified) for CRI resources.
pub fn linux_resources(r: &LinuxContainerResources, node: &Node) -> Value {
    let mut out = Map::new();
    let mut cpu = Map::new();
    if r.cpu_shares != 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period != 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    let mut memory = Map::new();
    if r.memory_limit_in_bytes != 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
        if r.memory_swap_limit_in_bytes == 0 && node.swap {
            memory.insert("swap".into(), json!(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    if !memory.is_empty() {
        out.insert("memory".into(), Value::Object(memory));
    }
    if node.hugetlb && !r.hugepage_limits.is_empty() {
        let limits: Vec<Value> = r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
        out.insert("hugepageLimits".into(), json!(limits));
    }
    if !r.unified.is_empty() {
        let unified: Map<String, Value> = r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out.insert("unified".into(), Value::Object(unified));
    }
    Value::Object(out)
}

/// The OOM score to give a process that asks for `want`: validated, and no lower than ours.
pub fn oom_score_adj(want: i64, node: &Node) -> Result<i64> {
    if !(-1000..=1000).contains(&want) {
        return Err(Error::invalid(format!(
            "oom_score_adj {want} is outside -1000..1000"
        )));
    }
    Ok(want.max(node.oom_score_adj))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use protocol::grpc::runtime::v1::HugepageLimit;

    use super::*;

    fn node(swap: bool, hugetlb: bool) -> Node {
        Node {
            swap,
            hugetlb,
            ..Node::default()
        }
    }

    #[test]
    fn nothing_set_writes_nothing() {
        let v = linux_resources(&LinuxContainerResources::default(), &Node::default());
        assert_eq!(v, json!({}));
    }

    #[test]
    fn cpu_fields_are_copied() {
        let r = LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            ..Default::default()
        };
        let v = linux_resources(&r, &Node::default());
        assert_eq!(
            v["cpu"],
            json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"})
        );
        assert!(v.get("memory").is_none());
    }

    #[test]
    fn a_memory_limit_limits_swap_too_when_the_node_can() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        let v = linux_resources(&r, &node(true, true));
        assert_eq!(v["memory"], json!({"limit": 1 << 20, "swap": 1 << 20}));
        let v = linux_resources(&r, &node(false, true));
        assert_eq!(v["memory"], json!({"limit": 1 << 20}));
    }

    #[test]
    fn an_explicit_swap_limit_wins() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 300,
            ..Default::default()
        };
        let v = linux_resources(&r, &node(true, true));
        assert_eq!(v["memory"], json!({"limit": 100, "swap": 300}));
    }

    #[test]
    fn hugepages_need_the_hugetlb_controller() {
        let r = LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        };
        let v = linux_resources(&r, &node(true, true));
        assert_eq!(
            v["hugepageLimits"],
            json!([{"pageSize": "2MB", "limit": 4 << 20}])
        );
        let v = linux_resources(&r, &node(true, false));
        assert!(v.get("hugepageLimits").is_none());
    }

    #[test]
    fn unified_is_copied() {
        let r = LinuxContainerResources {
            unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
            ..Default::default()
        };
        let v = linux_resources(&r, &Node::default());
        assert_eq!(v["unified"], json!({"memory.high": "1000000"}));
    }

    #[test]
    fn oom_scores_are_clamped_to_ours() {
        let n = Node {
            oom_score_adj: -500,
            ..Node::default()
        };
        assert_eq!(oom_score_adj(-998, &n).unwrap(), -500);
        assert_eq!(oom_score_adj(-500, &n).unwrap(), -500);
        assert_eq!(oom_score_adj(300, &n).unwrap(), 300);
        assert_eq!(oom_score_adj(-998, &Node::default()).unwrap(), -998);
    }

    #[test]
    fn oom_scores_out_of_range_are_invalid() {
        for v in [-1001, 1001] {
            let e = oom_score_adj(v, &Node::default()).unwrap_err();
            assert!(e.message.contains(&v.to_string()), "{e}");
        }
    }
}
