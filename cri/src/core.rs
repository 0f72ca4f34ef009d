//! [`Cri`]: what every CRI call works with — the configuration, the corrald client, the view of
//! pods and containers, CNI, images and the event fan-out. The operations themselves live one
//! per file under `sandbox/` and `container/` as `impl Cri` blocks; the gRPC services in
//! `server/` only translate requests to them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::corrald::Corrald;
use crate::events::Events;
use crate::image::Images;
use crate::network::Cni;
use crate::spec::Node;
use crate::store::Store;

pub struct Cri {
    pub cfg: Config,
    pub corrald: Corrald,
    pub store: Arc<Store>,
    pub cni: Cni,
    pub images: Images,
    pub events: Events,
    /// Previous CPU samples, for usage_nano_cores.
    pub stats: crate::stats::CpuSamples,
    /// What the specs depend on about this node (capabilities, cgroups, our OOM score).
    pub node: Node,
    /// Tokens of Exec, Attach and PortForward answers, and the streaming server's URL.
    pub streaming: crate::streaming::Streaming,
}

impl Cri {
    pub fn new(cfg: Config) -> Cri {
        let corrald = Corrald::new(&cfg.address, &cfg.namespace, &cfg.snapshotter);
        let cni = Cni::new(
            cfg.cni.conf_dir.clone(),
            cfg.cni.bin_dirs.clone(),
            cfg.root.join("cni"),
        )
        .internal_loopback(cfg.cni.internal_loopback);
        Cri {
            images: Images::new(corrald.clone()),
            corrald,
            store: Arc::new(Store::default()),
            cni,
            events: Events::default(),
            stats: Default::default(),
            node: crate::host::node(),
            streaming: Default::default(),
            cfg,
        }
    }

    /// Where pod network namespaces are pinned.
    pub fn netns_dir(&self) -> PathBuf {
        self.cfg.root.join("netns")
    }

    /// A pod's files: hostname, hosts, resolv.conf, shm/.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("sandboxes").join(id)
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.cfg.root.join("sandboxes")
    }

    /// FIFOs of ExecSync and Exec calls in flight.
    pub fn exec_dir(&self) -> PathBuf {
        self.cfg.root.join("exec")
    }
}
