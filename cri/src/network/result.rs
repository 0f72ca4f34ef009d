//! The CNI ADD result (spec section 5) of versions 0.3.x, 0.4.0 and 1.x — `interfaces`, `ips`
//! with an index into `interfaces`, `routes`, `dns` — and the older 0.1/0.2 form (`ip4`, `ip6`),
//! parsed into one shape; and containerd's choice of the pod IP from it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// An address with its prefix length (`10.88.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The namespace path for interfaces inside the pod, empty for host interfaces.
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Cidr,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; `None` means the attachment's own interface (go-cni).
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ResultDns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: ResultDns,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    dns: Option<ResultDns>,
    ip4: Option<RawLegacy>,
    ip6: Option<RawLegacy>,
}

#[derive(Deserialize)]
struct RawInterface {
    name: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    sandbox: String,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<i64>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[derive(Deserialize)]
struct RawLegacy {
    ip: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

impl CniResult {
    /// Parses a result as a plugin printed it; the error says what is wrong with it.
    pub fn parse(json: &[u8]) -> Result<CniResult, String> {
        let raw: Raw = serde_json::from_slice(json).map_err(|e| format!("{e}"))?;
        let mut out = CniResult {
            cni_version: raw.cni_version,
            interfaces: raw
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                })
                .collect(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: raw.dns.unwrap_or_default(),
        };
        for ip in raw.ips {
            let interface = match ip.interface {
                None => None,
                Some(i) if i >= 0 && (i as usize) < out.interfaces.len() => Some(i as usize),
                Some(i) => {
                    return Err(format!(
                        "ip {} names interface {i} of {}",
                        ip.address,
                        out.interfaces.len()
                    ));
                }
            };
            out.ips.push(IpConfig {
                address: ip.address.parse()?,
                gateway: parse_gateway(ip.gateway)?,
                interface,
            });
        }
        for r in raw.routes {
            out.routes.push(route(r)?);
        }
        for legacy in [raw.ip4, raw.ip6].into_iter().flatten() {
            out.ips.push(IpConfig {
                address: legacy.ip.parse()?,
                gateway: parse_gateway(legacy.gateway)?,
                interface: None,
            });
            for r in legacy.routes {
                out.routes.push(route(r)?);
            }
        }
        Ok(out)
    }

    /// The addresses on the pod's interface `ifname`, in result order. An IP with no
    /// interface index belongs to the attachment's interface (go-cni's reading).
    pub fn ips_on(&self, ifname: &str) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self.interfaces[i].name == ifname,
                None => true,
            })
            .map(|ip| ip.address.addr)
            .collect()
    }
}

/// containerd's `selectPodIPs` with its default preference: the first IPv4 address is the pod
/// IP (or the first of any family when there is none), the others keep their order.
pub fn select_pod_ips(ips: &[IpAddr]) -> Option<(IpAddr, Vec<IpAddr>)> {
    let i = ips.iter().position(IpAddr::is_ipv4).unwrap_or(0);
    let primary = *ips.get(i)?;
    let rest = ips
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, a)| *a)
        .collect();
    Some((primary, rest))
}

fn parse_gateway(g: Option<String>) -> Result<Option<IpAddr>, String> {
    match g.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("bad gateway {s:?}")),
    }
}

fn route(r: RawRoute) -> Result<Route, String> {
    Ok(Route {
        dst: r.dst.parse()?,
        gw: parse_gateway(r.gw)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // What Debian's bridge plugin 1.1.1 prints for cniVersion 1.0.0 (dns trimmed).
    const BRIDGE_100: &str = r#"{"cniVersion":"1.0.0","interfaces":[
        {"name":"crb1","mac":"aa:bb:cc:dd:ee:01"},
        {"name":"veth1234","mac":"aa:bb:cc:dd:ee:02"},
        {"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/run/netns/p"}],
        "ips":[{"interface":2,"address":"10.99.0.5/24","gateway":"10.99.0.1"}],
        "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

    #[test]
    fn parses_each_version() {
        let r = CniResult::parse(BRIDGE_100.as_bytes()).unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox, "/run/netns/p");
        assert_eq!(r.ips[0].address.to_string(), "10.99.0.5/24");
        assert_eq!(r.ips[0].gateway, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(
            r.ips_on("eth0"),
            vec!["10.99.0.5".parse::<IpAddr>().unwrap()]
        );
        assert!(r.ips_on("eth1").is_empty());

        // 0.3.1/0.4.0 carry a "version" in each ip, ignored.
        let r = CniResult::parse(
            br#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
            "ips":[{"version":"4","interface":0,"address":"10.1.0.2/16","gateway":"10.1.0.1"}],
            "dns":{"nameservers":["10.1.0.10"],"search":["svc"]}}"#,
        )
        .unwrap();
        assert_eq!(r.ips_on("eth0").len(), 1);
        assert_eq!(r.dns.nameservers, vec!["10.1.0.10"]);

        // 0.2.0: ip4/ip6, no interfaces.
        let r = CniResult::parse(
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.2.0.3/24","gateway":"10.2.0.1",
            "routes":[{"dst":"0.0.0.0/0"}]},"ip6":{"ip":"fd00:2::3/64"}}"#,
        )
        .unwrap();
        let ips = r.ips_on("eth0");
        assert_eq!(ips.len(), 2);
        assert_eq!(r.routes.len(), 1);

        for (bad, want) in [
            (r#"{"ips":[{"address":"10.0.0.1"}]}"#, "CIDR"),
            (r#"{"ips":[{"address":"10.0.0.1/33"}]}"#, "prefix"),
            (
                r#"{"ips":[{"address":"10.0.0.1/8","interface":0}]}"#,
                "interface 0 of 0",
            ),
            (
                r#"{"ips":[{"address":"10.0.0.1/8","gateway":"x"}]}"#,
                "gateway",
            ),
            (r#"[]"#, "expected struct"),
        ] {
            let e = CniResult::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn pod_ip_prefers_the_first_ipv4() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(select_pod_ips(&[]), None);
        assert_eq!(
            select_pod_ips(&[a("fd00::5"), a("10.0.0.5"), a("10.0.0.6")]),
            Some((a("10.0.0.5"), vec![a("fd00::5"), a("10.0.0.6")]))
        );
        assert_eq!(
            select_pod_ips(&[a("fd00::5"), a("fd00::6")]),
            Some((a("fd00::5"), vec![a("fd00::6")]))
        );
    }
}
