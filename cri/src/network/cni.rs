//! [`Cni`]: attach a pod to the pod network and detach it (spec section 3), the way
//! containerd 1.6's CRI plugin drives go-cni and libcni: loopback first, then the pod network's
//! plugins with the previous result chained through; DEL in reverse with the ADD result; CHECK
//! with the ADD result; `K8S_POD_*` in `CNI_ARGS`; capability arguments only to the plugins that
//! declare them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::Code;
use serde::Serialize;
use serde_json::{Map, Value};

use super::cache::{self, Entry};
use super::conf::{self, NetworkConfig, PluginConfig, Stamp, valid_name};
use super::error::Error;
use super::exec::{self, Command, Invocation};
use super::netns::{self, NetNs};
use super::result::{Cidr, CniResult, select_pod_ips};
use super::template::render_template;

/// The pod's interface, as kubelet expects it.
pub const DEFAULT_IFNAME: &str = "eth0";
/// How long one plugin invocation may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The CRI `NetworkReady` condition's reason while [`Cni::status`] fails (containerd's).
pub const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";
/// The file [`Cni::write_conf_from_template`] writes in `conf_dir`.
pub const TEMPLATE_CONF_NAME: &str = "10-corral-net.conflist";
/// containerd passes the pod's annotations to plugins that declare this capability.
const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// A CRI port mapping, as the `portMappings` capability carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (sent lower-case whatever the case here).
    pub protocol: String,
    /// Empty: every host address.
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

impl PortMapping {
    pub fn tcp(host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            host_port,
            container_port,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }
    }
}

/// The pod's DNS config (the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Traffic shaping in bits per second and bits (the `bandwidth` capability; 0 = none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Bandwidth {
    #[serde(rename = "ingressRate")]
    pub ingress_rate: u64,
    #[serde(rename = "ingressBurst")]
    pub ingress_burst: u64,
    #[serde(rename = "egressRate")]
    pub egress_rate: u64,
    #[serde(rename = "egressBurst")]
    pub egress_burst: u64,
}

/// One range of the `ipRanges` capability (host-local's range syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IpRange {
    pub subnet: String,
    #[serde(rename = "rangeStart", skip_serializing_if = "String::is_empty")]
    pub range_start: String,
    #[serde(rename = "rangeEnd", skip_serializing_if = "String::is_empty")]
    pub range_end: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// One pod's attachment: who it is (for `CNI_ARGS`) and what it asks of the network.
/// DEL and CHECK must be given the same values as the ADD.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetwork {
    /// The sandbox id: `CNI_CONTAINERID` and `K8S_POD_INFRA_CONTAINER_ID`.
    pub id: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`; [`DEFAULT_IFNAME`] from [`PodNetwork::new`].
    pub ifname: String,
    /// Pod metadata: namespace, name, uid.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<Dns>,
    pub bandwidth: Option<Bandwidth>,
    pub ip_ranges: Vec<Vec<IpRange>>,
    pub annotations: BTreeMap<String, String>,
}

impl PodNetwork {
    pub fn new(id: impl Into<String>, netns: impl Into<PathBuf>) -> PodNetwork {
        PodNetwork {
            id: id.into(),
            netns: netns.into(),
            ifname: DEFAULT_IFNAME.into(),
            ..PodNetwork::default()
        }
    }

    /// `CNI_ARGS` as pairs, in containerd's set (IgnoreUnknown so plugins that do not know the
    /// K8S_* keys accept them).
    fn cni_args(&self) -> Vec<[String; 2]> {
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.namespace.as_str()),
            ("K8S_POD_NAME", self.name.as_str()),
            ("K8S_POD_INFRA_CONTAINER_ID", self.id.as_str()),
            ("K8S_POD_UID", self.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }

    fn capability_args(&self) -> Map<String, Value> {
        let mut caps = Map::new();
        if !self.port_mappings.is_empty() {
            let pms: Vec<PortMapping> = self
                .port_mappings
                .iter()
                .map(|p| PortMapping {
                    protocol: p.protocol.to_ascii_lowercase(),
                    ..p.clone()
                })
                .collect();
            caps.insert("portMappings".into(), to_value(&pms));
        }
        if let Some(b) = &self.bandwidth {
            caps.insert("bandwidth".into(), to_value(b));
        }
        if let Some(d) = &self.dns {
            caps.insert("dns".into(), to_value(d));
        }
        if !self.ip_ranges.is_empty() {
            caps.insert("ipRanges".into(), to_value(&self.ip_ranges));
        }
        caps.insert(
            POD_ANNOTATIONS_CAPABILITY.into(),
            to_value(&self.annotations),
        );
        caps
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if !valid_name(&self.id) {
            return bad(format!(
                "pod id {:?} is not a CNI container id (letters, digits, '_', '.', '-')",
                self.id
            ));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname.contains(['/', ':'])
            || self.ifname.contains(char::is_whitespace)
        {
            return bad(format!("invalid interface name {:?}", self.ifname));
        }
        if self.netns.as_os_str().is_empty() || self.netns.to_str().is_none() {
            return bad(format!("invalid network namespace path {:?}", self.netns));
        }
        for [k, v] in self.cni_args() {
            if v.contains([';', '=']) {
                return bad(format!("{k} {v:?} contains ';' or '='"));
            }
        }
        Ok(())
    }

    fn attachment(&self, netns: String) -> Attachment {
        let args = self
            .cni_args()
            .iter()
            .map(|[k, v]| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        Attachment {
            id: self.id.clone(),
            netns,
            ifname: self.ifname.clone(),
            args,
            caps: self.capability_args(),
        }
    }
}

/// What a successful [`Cni::setup`] gives the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupResult {
    /// The pod network's name.
    pub network: String,
    /// The pod IP: the first IPv4 address on the pod's interface (else the first address).
    pub ip: IpAddr,
    /// The pod's other addresses (dual stack), in result order.
    pub additional_ips: Vec<IpAddr>,
    pub result: CniResult,
    /// The final ADD result as the last plugin printed it: store it with the pod and hand it
    /// back to [`Cni::check`] and [`Cni::teardown`].
    pub raw: String,
}

/// The parameters of one attachment, as the plugins get them.
struct Attachment {
    id: String,
    netns: String,
    ifname: String,
    args: String,
    caps: Map<String, Value>,
}

/// The pod network of a node: its config (re-read when the file changes) and the plugins.
/// Methods take `&self` and hold no lock while plugins run, so one `Cni` serves all pods
/// concurrently; operations on one pod must not overlap (the spec forbids it).
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
    current: Mutex<Option<(Stamp, Arc<NetworkConfig>)>>,
    /// `lo` is set up by us, not by the loopback plugin (see [`Cni::internal_loopback`]).
    internal_loopback: bool,
}

impl Cni {
    /// Reads nothing yet: a node may start before its network plugin has written a config, and
    /// [`Cni::status`] reports that until it has.
    pub fn new(
        conf_dir: impl Into<PathBuf>,
        bin_dirs: Vec<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Cni {
        Cni {
            conf_dir: conf_dir.into(),
            bin_dirs,
            cache_dir: cache_dir.into(),
            timeout: DEFAULT_TIMEOUT,
            current: Mutex::new(None),
            internal_loopback: false,
        }
    }

    /// Whether `lo` is set up without the CNI loopback plugin (containerd 2.0's
    /// `use_internal_loopback`): the plugin only sets it up, and as one more Go process per
    /// pod it was a quarter of the plugin starts when many pods start at once. Its DEL only
    /// sets `lo` down, which the namespace's removal does anyway, so it is skipped too.
    pub fn internal_loopback(mut self, on: bool) -> Cni {
        self.internal_loopback = on;
        self
    }

    /// The deadline of each plugin invocation ([`DEFAULT_TIMEOUT`] otherwise).
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The pod network, if `conf_dir` has a usable one: for the CRI Status call
    /// (`NetworkReady=false`, reason [`NETWORK_NOT_READY_REASON`], message = the error, until
    /// this succeeds). A readdir and a stat when nothing changed; the file is parsed again
    /// only when its name, inode, size or mtime did.
    pub fn status(&self) -> Result<Arc<NetworkConfig>, Error> {
        let (path, stamp) = conf::find(&self.conf_dir)?;
        if let Some((seen, net)) = &*self.lock()
            && *seen == stamp
        {
            return Ok(net.clone());
        }
        let net = Arc::new(conf::load(&path)?);
        *self.lock() = Some((stamp, net.clone()));
        Ok(net)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Stamp, Arc<NetworkConfig>)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// ADD: brings up `lo`, then runs the pod network's plugins in order, each given the
    /// previous one's result; writes the cache entry; picks the pod IP. All or nothing: on any
    /// failure everything that ran is DELeted again before the error is returned (so a
    /// failed setup leaves no IP allocated and no veth behind), though [`Cni::teardown`] after
    /// a failed or interrupted setup is still safe.
    pub async fn setup(&self, pod: &PodNetwork) -> Result<SetupResult, Error> {
        pod.validate()?;
        let net = self.status()?;
        if !netns::is_netns(&pod.netns).unwrap_or(false) {
            return Err(Error::InvalidArgument(format!(
                "{} is not a network namespace",
                pod.netns.display()
            )));
        }
        let at = pod.attachment(pod.netns.display().to_string());
        let lo = NetworkConfig::loopback();
        let lo_at = Attachment {
            ifname: "lo".into(),
            ..pod.attachment(at.netns.clone())
        };
        if self.internal_loopback {
            let up = match NetNs::open(&pod.netns) {
                Ok(ns) => ns.run_async(netns::loopback_up).await.and_then(|r| r),
                Err(e) => Err(e),
            };
            up.map_err(|source| Error::Loopback {
                netns: pod.netns.clone(),
                source,
            })?;
        } else if let Err((e, _)) = self.add_list(&lo, &lo_at).await {
            self.del_list(&lo, &lo_at, None).await;
            return Err(e);
        }
        let (value, raw) = match self.add_list(&net, &at).await {
            Ok(r) => r,
            Err((e, partial)) => {
                self.undo_add(&net, &at, &lo, &lo_at, partial.as_ref())
                    .await;
                return Err(e);
            }
        };
        let last = &net.plugins[net.plugins.len() - 1].plugin_type;
        let picked = CniResult::parse(raw.as_bytes())
            .map_err(|reason| Error::InvalidResult {
                network: net.name.clone(),
                plugin: last.clone(),
                command: Command::Add,
                reason,
            })
            .and_then(|result| {
                let ips = result.ips_on(&pod.ifname);
                match select_pod_ips(&ips) {
                    Some((ip, additional_ips)) => Ok((result, ip, additional_ips)),
                    None => Err(Error::NoPodIp {
                        network: net.name.clone(),
                        id: pod.id.clone(),
                        ifname: pod.ifname.clone(),
                    }),
                }
            });
        let (result, ip, additional_ips) = match picked {
            Ok(p) => p,
            Err(e) => {
                self.undo_add(&net, &at, &lo, &lo_at, Some(&value)).await;
                return Err(e);
            }
        };
        let path = cache::path(&self.cache_dir, &net.name, &pod.id, &pod.ifname);
        let entry = Entry {
            kind: cache::KIND.into(),
            container_id: pod.id.clone(),
            config: Entry::encode_config(&net.to_json()),
            if_name: pod.ifname.clone(),
            network_name: net.name.clone(),
            netns: at.netns.clone(),
            cni_args: pod.cni_args(),
            capability_args: at.caps.clone(),
            result: Some(value.clone()),
        };
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || cache::write(&p, &entry))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(source) = written {
            self.undo_add(&net, &at, &lo, &lo_at, Some(&value)).await;
            return Err(Error::Cache { path, source });
        }
        log::info!(
            "cni: pod {} on network {:?}: {ip} {additional_ips:?}",
            pod.id,
            net.name
        );
        Ok(SetupResult {
            network: net.name.clone(),
            ip,
            additional_ips,
            result,
            raw,
        })
    }

    /// CHECK: asks every plugin whether the attachment is still as ADD left it. `prev_result`
    /// is the stored [`SetupResult::raw`]; without it the cache entry is used. A network whose
    /// version has no CHECK (before 0.4.0) or that sets `disableCheck` passes unasked.
    pub async fn check(&self, pod: &PodNetwork, prev_result: Option<&str>) -> Result<(), Error> {
        pod.validate()?;
        let net = self.status()?;
        if !net.supports_check() {
            return Ok(());
        }
        let path = cache::path(&self.cache_dir, &net.name, &pod.id, &pod.ifname);
        let prev = match prev_result {
            Some(s) => Some(parse_prev(s)?),
            None => cached_result(&path),
        };
        let Some(prev) = prev else {
            return Err(Error::NoPrevResult {
                network: net.name.clone(),
                id: pod.id.clone(),
            });
        };
        let at = pod.attachment(pod.netns.display().to_string());
        for plugin in &net.plugins {
            self.run(Command::Check, &net, plugin, &at, Some(&prev))
                .await?;
        }
        Ok(())
    }

    /// DEL: runs the pod network's plugins in reverse with the ADD result (`prev_result`, else
    /// the cache entry), then loopback's. A failing plugin does not stop the others — each
    /// releases its own state — and all failures come back together in
    /// [`Error::Teardown`]; the cache entry is kept until a DEL succeeds everywhere. Safe to
    /// repeat, after a failed or partial setup too, and after the namespace is gone (the
    /// plugins then get an empty `CNI_NETNS` and release what they hold on the host).
    /// Should the config file have disappeared since the ADD, the list kept in the cache entry
    /// is used.
    pub async fn teardown(&self, pod: &PodNetwork, prev_result: Option<&str>) -> Result<(), Error> {
        pod.validate()?;
        let (net, path) = match self.status() {
            Ok(net) => {
                let path = cache::path(&self.cache_dir, &net.name, &pod.id, &pod.ifname);
                (net, path)
            }
            Err(e) => match self.cached_network(pod) {
                Some(found) => found,
                None => return Err(e),
            },
        };
        let prev = if net.del_takes_prev_result() {
            match prev_result.map(parse_prev) {
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    log::warn!("cni: pod {}: ignoring the stored result: {e}", pod.id);
                    cached_result(&path)
                }
                None => cached_result(&path),
            }
        } else {
            None
        };
        let live = netns::is_netns(&pod.netns).unwrap_or(false);
        let ns = if live {
            pod.netns.display().to_string()
        } else {
            String::new()
        };
        let at = pod.attachment(ns);
        let mut errors = self.del_list(&net, &at, prev.as_ref()).await;
        if live && !self.internal_loopback {
            let lo = NetworkConfig::loopback();
            let lo_at = Attachment {
                ifname: "lo".into(),
                ..pod.attachment(at.netns.clone())
            };
            errors.extend(self.del_list(&lo, &lo_at, None).await);
        }
        if !errors.is_empty() {
            return Err(Error::Teardown {
                id: pod.id.clone(),
                errors,
            });
        }
        cache::remove(&path).map_err(|source| Error::Cache { path, source })?;
        // An entry left under an earlier network name (the config was renamed since the ADD)
        // belongs to this attachment too, and nothing else would ever remove it.
        while let Some((stale, _)) = cache::find(&self.cache_dir, &pod.id, &pod.ifname) {
            cache::remove(&stale).map_err(|source| Error::Cache {
                path: stale,
                source,
            })?;
        }
        Ok(())
    }

    /// UpdateRuntimeConfig's pod CIDR: renders `template` into
    /// `conf_dir/`[`TEMPLATE_CONF_NAME`] (atomically) and returns its path. Does nothing
    /// (`None`) when no template is configured, the CIDR is empty, or a network config already
    /// works — containerd 1.6 does not overwrite a working network either.
    pub fn write_conf_from_template(
        &self,
        template: &Path,
        pod_cidr: &str,
    ) -> Result<Option<PathBuf>, Error> {
        if template.as_os_str().is_empty() || pod_cidr.trim().is_empty() {
            return Ok(None);
        }
        for c in pod_cidr.split(',') {
            c.trim()
                .parse::<Cidr>()
                .map_err(|e| Error::InvalidArgument(format!("pod CIDR {e}")))?;
        }
        if let Ok(net) = self.status() {
            log::info!(
                "cni: network {:?} ({}) is ready; not writing one from {}",
                net.name,
                net.path.display(),
                template.display()
            );
            return Ok(None);
        }
        let failed = |reason: String, code: Code| Error::Template {
            path: template.to_path_buf(),
            reason,
            code,
        };
        let text = std::fs::read_to_string(template)
            .map_err(|e| failed(format!("read: {e}"), Code::FailedPrecondition))?;
        let out =
            render_template(&text, pod_cidr).map_err(|r| failed(r, Code::FailedPrecondition))?;
        let path = self.conf_dir.join(TEMPLATE_CONF_NAME);
        std::fs::create_dir_all(&self.conf_dir)
            .and_then(|()| cache::atomic_write(&path, out.as_bytes(), 0o644))
            .map_err(|source| Error::WriteConfig {
                path: path.clone(),
                source,
            })?;
        log::info!(
            "cni: wrote {} from {} for pod CIDR {pod_cidr}",
            path.display(),
            template.display()
        );
        Ok(Some(path))
    }

    /// ADD through a list. Ok: the final result as a value and as printed. Err: the error and
    /// the last result obtained before it, for the DEL that undoes the partial ADD.
    async fn add_list(
        &self,
        net: &NetworkConfig,
        at: &Attachment,
    ) -> Result<(Value, String), (Error, Option<Value>)> {
        let mut prev: Option<(Value, String)> = None;
        for plugin in &net.plugins {
            let out = self
                .run(Command::Add, net, plugin, at, prev.as_ref().map(|p| &p.0))
                .await;
            let out = match out {
                Ok(o) => o,
                Err(e) => return Err((e, prev.map(|p| p.0))),
            };
            let invalid = |reason: String| Error::InvalidResult {
                network: net.name.clone(),
                plugin: plugin.plugin_type.clone(),
                command: Command::Add,
                reason,
            };
            let text = String::from_utf8_lossy(&out).trim().to_string();
            match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) => prev = Some((v, text)),
                Ok(_) => return Err((invalid("not a JSON object".into()), prev.map(|p| p.0))),
                Err(e) => {
                    return Err((invalid(format!("{e}: {text:?}")), prev.map(|p| p.0)));
                }
            }
        }
        Ok(prev.expect("a network has at least one plugin"))
    }

    /// DEL through a list in reverse, every plugin whatever the others did.
    async fn del_list(
        &self,
        net: &NetworkConfig,
        at: &Attachment,
        prev: Option<&Value>,
    ) -> Vec<Error> {
        let mut errors = Vec::new();
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.run(Command::Del, net, plugin, at, prev).await {
                errors.push(e);
            }
        }
        errors
    }

    /// The DEL after a failed ADD, with what the ADD got as far as (libcni passes a result to
    /// DEL only from 0.4.0 on).
    async fn undo_add(
        &self,
        net: &NetworkConfig,
        at: &Attachment,
        lo: &NetworkConfig,
        lo_at: &Attachment,
        partial: Option<&Value>,
    ) {
        let prev = partial.filter(|_| net.del_takes_prev_result());
        let mut errors = self.del_list(net, at, prev).await;
        if !self.internal_loopback {
            errors.extend(self.del_list(lo, lo_at, None).await);
        }
        for e in errors {
            log::warn!("cni: pod {}: undoing a failed ADD: {e}", at.id);
        }
    }

    async fn run(
        &self,
        command: Command,
        net: &NetworkConfig,
        plugin: &PluginConfig,
        at: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, Error> {
        let stdin = request(net, plugin, prev, &at.caps);
        let inv = Invocation {
            command,
            container_id: &at.id,
            netns: &at.netns,
            ifname: &at.ifname,
            args: &at.args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        };
        exec::invoke(&inv, &net.name, &plugin.plugin_type, stdin).await
    }

    /// The network list and entry path cached by the ADD of `pod`, for a DEL when the
    /// config dir no longer gives one.
    fn cached_network(&self, pod: &PodNetwork) -> Option<(Arc<NetworkConfig>, PathBuf)> {
        let (path, entry) = cache::find(&self.cache_dir, &pod.id, &pod.ifname)?;
        let bytes = entry.config_bytes()?;
        match NetworkConfig::from_list(&path, &bytes) {
            Ok(net) => Some((Arc::new(net), path)),
            Err(e) => {
                log::warn!("cni: pod {}: cached network unusable: {e}", pod.id);
                None
            }
        }
    }
}

/// The request a plugin reads on stdin (spec section 3, "Deriving execution configuration"):
/// its own object with `name` and `cniVersion` of the list, `prevResult`, and `runtimeConfig`
/// holding the capability arguments it declares; `capabilities` itself removed.
fn request(
    net: &NetworkConfig,
    plugin: &PluginConfig,
    prev: Option<&Value>,
    caps: &Map<String, Value>,
) -> Vec<u8> {
    let mut obj = plugin.conf.clone();
    let declared = obj.remove("capabilities");
    obj.insert("name".into(), net.name.clone().into());
    obj.insert("cniVersion".into(), net.cni_version.clone().into());
    if let Some(prev) = prev {
        obj.insert("prevResult".into(), prev.clone());
    }
    let mut rc = Map::new();
    if let Some(Value::Object(declared)) = declared {
        for (cap, on) in declared {
            if on == Value::Bool(true)
                && let Some(arg) = caps.get(&cap)
            {
                rc.insert(cap, arg.clone());
            }
        }
    }
    if !rc.is_empty() {
        obj.insert("runtimeConfig".into(), Value::Object(rc));
    }
    serde_json::to_vec(&Value::Object(obj)).expect("a JSON map serialises")
}

fn parse_prev(s: &str) -> Result<Value, Error> {
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Error::InvalidArgument(format!(
            "stored CNI result is not a JSON object: {s:?}"
        ))),
    }
}

fn cached_result(path: &Path) -> Option<Value> {
    match cache::read(path) {
        Ok(e) => e.and_then(|e| e.result),
        Err(e) => {
            log::warn!("cni: cache entry {}: {e}", path.display());
            None
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("plain data serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkConfig {
        NetworkConfig::from_list(
            Path::new("t.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n1","plugins":[
              {"type":"bridge","bridge":"b0","capabilities":{"ips":true}},
              {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn requests_carry_only_declared_capabilities() {
        let net = net();
        let mut pod = PodNetwork::new("p1", "/x");
        pod.port_mappings.push(PortMapping {
            protocol: "TCP".into(),
            host_ip: "127.0.0.1".into(),
            ..PortMapping::tcp(8080, 80)
        });
        pod.bandwidth = Some(Bandwidth {
            ingress_rate: 1000,
            ..Bandwidth::default()
        });
        let caps = pod.capability_args();
        assert!(caps.contains_key(POD_ANNOTATIONS_CAPABILITY));

        let r: Value =
            serde_json::from_slice(&request(&net, &net.plugins[0], None, &caps)).unwrap();
        assert_eq!(r["name"], "n1");
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["bridge"], "b0");
        assert!(r.get("capabilities").is_none(), "{r}");
        assert!(r.get("runtimeConfig").is_none(), "{r}");
        assert!(r.get("prevResult").is_none(), "{r}");

        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let r: Value =
            serde_json::from_slice(&request(&net, &net.plugins[1], Some(&prev), &caps)).unwrap();
        assert_eq!(r["prevResult"], prev);
        assert_eq!(
            r["runtimeConfig"],
            serde_json::json!({"portMappings":[
                {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]})
        );
    }

    #[test]
    fn cni_args_and_validation() {
        let mut pod = PodNetwork::new("abc123", "/run/netns/abc123");
        pod.namespace = "default".into();
        pod.name = "web".into();
        pod.uid = "u-1".into();
        assert_eq!(
            pod.attachment(String::new()).args,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
        pod.validate().unwrap();
        for f in [
            |p: &mut PodNetwork| p.id = "-x".into(),
            |p: &mut PodNetwork| p.id = String::new(),
            |p: &mut PodNetwork| p.ifname = "a-very-long-ifname".into(),
            |p: &mut PodNetwork| p.netns = PathBuf::new(),
            |p: &mut PodNetwork| p.name = "a;b".into(),
        ] {
            let mut bad = pod.clone();
            f(&mut bad);
            let e = bad.validate().unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        }
    }

    #[test]
    fn status_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(dir.path().join("net.d"), vec![], dir.path().join("cache"));
        let e = cni.status().unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.to_string().contains("no network config"), "{e}");

        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        let f = dir.path().join("net.d/10-a.conflist");
        std::fs::write(
            &f,
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        let a = cni.status().unwrap();
        assert_eq!(a.name, "a");
        assert!(Arc::ptr_eq(&a, &cni.status().unwrap()), "unchanged: cached");

        std::fs::write(
            &f,
            r#"{"cniVersion":"1.0.0","name":"bb","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(cni.status().unwrap().name, "bb");
        std::fs::write(&f, "{").unwrap();
        let e = cni.status().unwrap_err().to_string();
        assert!(e.contains("10-a.conflist"), "{e}");
    }

    #[test]
    fn template_is_written_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        let cni = Cni::new(&conf_dir, vec![], dir.path().join("cache"));
        let tpl = dir.path().join("tpl");
        std::fs::write(
            &tpl,
            r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"{{.PodCIDR}}"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            cni.write_conf_from_template(Path::new(""), "10.0.0.0/24")
                .unwrap(),
            None
        );
        assert_eq!(cni.write_conf_from_template(&tpl, "").unwrap(), None);
        let e = cni.write_conf_from_template(&tpl, "10.0.0/24").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = cni
            .write_conf_from_template(&dir.path().join("missing"), "10.0.0.0/24")
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.to_string().contains("missing"), "{e}");

        let p = cni
            .write_conf_from_template(&tpl, "10.7.0.0/24")
            .unwrap()
            .unwrap();
        assert_eq!(p, conf_dir.join(TEMPLATE_CONF_NAME));
        let net = cni.status().unwrap();
        assert_eq!(net.plugins[0].conf["ipam"]["subnet"], "10.7.0.0/24");
        // Ready now: a second CIDR does not overwrite it.
        assert_eq!(
            cni.write_conf_from_template(&tpl, "10.8.0.0/24").unwrap(),
            None
        );
        assert_eq!(std::fs::read_dir(&conf_dir).unwrap().count(), 1);
    }
}
