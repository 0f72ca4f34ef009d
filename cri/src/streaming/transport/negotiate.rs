//! Which protocol an upgrade request gets, decided as kubelet's streaming server decides it:
//! the first protocol in the client's order that the server speaks.
//!
//! | upgrade   | route              | we speak                                                    |
//! |-----------|--------------------|-------------------------------------------------------------|
//! | SPDY/3.1  | exec, attach       | X-Stream-Protocol-Version v4, v3, v2 `.channel.k8s.io`, `channel.k8s.io` |
//! | SPDY/3.1  | portforward        | `portforward.k8s.io`                                        |
//! | websocket | exec, attach       | Sec-WebSocket-Protocol `v5.channel.k8s.io`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `channel.k8s.io`, `base64.channel.k8s.io`, or none |
//! | websocket | portforward        | `SPDY/3.1+portforward.k8s.io` (tunnel), `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or none |
//!
//! client-go's SPDY executor also offers v5 first; kubelet answers v4 over SPDY (v5 only adds
//! the CLOSE signal, which SPDY does not need), and so do we.

use hyper::StatusCode;
use hyper::header::HeaderMap;

use super::status::Version;

pub(crate) const PORT_FORWARD: &str = "portforward.k8s.io";
pub(crate) const SPDY_TUNNEL_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

const SPDY_REMOTE_COMMAND: &[(&str, Version)] = &[
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// (name, version, base64)
const WS_REMOTE_COMMAND: &[(&str, Version, bool)] = &[
    ("v5.channel.k8s.io", Version::V5, false),
    ("v4.channel.k8s.io", Version::V4, false),
    ("v4.base64.channel.k8s.io", Version::V4, true),
    ("channel.k8s.io", Version::V1, false),
    ("base64.channel.k8s.io", Version::V1, true),
];

/// A refused upgrade: the status, a text body, and extra response headers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

fn refuse(status: StatusCode, message: String) -> Refusal {
    Refusal {
        status,
        message,
        headers: Vec::new(),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    Spdy,
    WebSocket { key: String },
}

/// Whether the request asks for SPDY/3.1 or WebSocket (anything else is refused).
pub(crate) fn upgrade(h: &HeaderMap) -> Result<Upgrade, Refusal> {
    let connection_upgrade = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("upgrade"));
    let upgrade = h
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !connection_upgrade || upgrade.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: this endpoint streams over an HTTP upgrade to SPDY/3.1 or websocket (Connection: Upgrade and Upgrade headers are missing)".into(),
        ));
    }
    if upgrade.split(',').any(|u| u.trim() == "websocket") {
        let version = h
            .get("sec-websocket-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if version.trim() != "13" {
            let mut r = refuse(
                StatusCode::UPGRADE_REQUIRED,
                format!("unable to upgrade: WebSocket version {version:?}; only 13 is spoken"),
            );
            r.headers.push(("Sec-WebSocket-Version", "13".into()));
            return Err(r);
        }
        let key = h
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string();
        use base64::Engine;
        let valid = base64::engine::general_purpose::STANDARD
            .decode(&key)
            .is_ok_and(|k| k.len() == 16);
        if !valid {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: Sec-WebSocket-Key must be 16 bytes in base64".into(),
            ));
        }
        return Ok(Upgrade::WebSocket { key });
    }
    if upgrade.contains("spdy/3.1") {
        return Ok(Upgrade::Spdy);
    }
    Err(refuse(
        StatusCode::BAD_REQUEST,
        format!("unable to upgrade to {upgrade:?}: only SPDY/3.1 and websocket are spoken"),
    ))
}

/// The values of a list header, in order, over every occurrence.
fn list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SpdyChoice {
    RemoteCommand(Version),
    PortForward,
}

/// X-Stream-Protocol-Version negotiation (apimachinery httpstream.Handshake).
pub(crate) fn spdy(
    h: &HeaderMap,
    port_forward: bool,
) -> Result<(&'static str, SpdyChoice), Refusal> {
    const HEADER: &str = "X-Stream-Protocol-Version";
    if h.get(HEADER).is_none() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: header {HEADER} is required"),
        ));
    }
    let client = list(h, HEADER);
    let server: Vec<(&'static str, SpdyChoice)> = if port_forward {
        vec![(PORT_FORWARD, SpdyChoice::PortForward)]
    } else {
        SPDY_REMOTE_COMMAND
            .iter()
            .map(|(n, v)| (*n, SpdyChoice::RemoteCommand(*v)))
            .collect()
    };
    for c in &client {
        if let Some(i) = server.iter().position(|(n, _)| n == c) {
            return Ok(server.into_iter().nth(i).expect("found above"));
        }
    }
    let names: Vec<&str> = server.iter().map(|(n, _)| *n).collect();
    let mut r = refuse(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {names:?}"
        ),
    );
    for n in names {
        r.headers
            .push(("X-Accepted-Stream-Protocol-Versions", n.to_string()));
    }
    Err(r)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsChoice {
    RemoteCommand { version: Version, base64: bool },
    PortForward { base64: bool },
    SpdyTunnel,
}

/// Sec-WebSocket-Protocol negotiation (apimachinery wsstream, and the tunnel prefix). `None`
/// as the name: the client asked for no subprotocol and gets the plain binary channels.
pub(crate) fn websocket(
    h: &HeaderMap,
    port_forward: bool,
) -> Result<(Option<&'static str>, WsChoice), Refusal> {
    let client = list(h, "Sec-WebSocket-Protocol");
    let server: Vec<(&'static str, WsChoice)> = if port_forward {
        vec![
            (SPDY_TUNNEL_PORT_FORWARD, WsChoice::SpdyTunnel),
            ("v4.channel.k8s.io", WsChoice::PortForward { base64: false }),
            (
                "v4.base64.channel.k8s.io",
                WsChoice::PortForward { base64: true },
            ),
        ]
    } else {
        WS_REMOTE_COMMAND
            .iter()
            .map(|(n, version, base64)| {
                (
                    *n,
                    WsChoice::RemoteCommand {
                        version: *version,
                        base64: *base64,
                    },
                )
            })
            .collect()
    };
    if client.is_empty() {
        let plain = if port_forward {
            WsChoice::PortForward { base64: false }
        } else {
            WsChoice::RemoteCommand {
                version: Version::V1,
                base64: false,
            }
        };
        return Ok((None, plain));
    }
    for c in &client {
        if let Some(i) = server.iter().position(|(n, _)| n == c) {
            let (n, choice) = server.into_iter().nth(i).expect("found above");
            return Ok((Some(n), choice));
        }
    }
    let names: Vec<&str> = server.iter().map(|(n, _)| *n).collect();
    Err(refuse(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: requested WebSocket subprotocols {client:?} are not supported; supported: {names:?}"
        ),
    ))
}

/// The ports of a WebSocket port-forward: every `port` query parameter, each possibly a comma
/// list (apimachinery's V4Options).
pub(crate) fn ports(query: Option<&str>) -> Result<Vec<u16>, Refusal> {
    const MAX_PORTS: usize = 64;
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, m);
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "port" {
            continue;
        }
        if v.is_empty() {
            return Err(bad("query parameter \"port\" cannot be empty".into()));
        }
        for p in v.split("%2C").flat_map(|p| p.split(',')) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.push(n),
                _ => {
                    return Err(bad(format!(
                        "unable to parse {p:?} as a port from 1 to 65535"
                    )));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(bad("query parameter \"port\" is required".into()));
    }
    if out.len() > MAX_PORTS {
        return Err(bad(format!(
            "{} ports asked for; at most {MAX_PORTS}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn spdy_takes_the_clients_first_known_version() {
        // What client-go's SPDY executor sends: one header per protocol, v5 first.
        let h = headers(&[
            ("X-Stream-Protocol-Version", "v5.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "channel.k8s.io"),
        ]);
        assert_eq!(
            spdy(&h, false).unwrap(),
            ("v4.channel.k8s.io", SpdyChoice::RemoteCommand(Version::V4))
        );
        let h = headers(&[(
            "X-Stream-Protocol-Version",
            "v2.channel.k8s.io, channel.k8s.io",
        )]);
        assert_eq!(
            spdy(&h, false).unwrap().1,
            SpdyChoice::RemoteCommand(Version::V2)
        );
        let h = headers(&[("X-Stream-Protocol-Version", "portforward.k8s.io")]);
        assert_eq!(spdy(&h, true).unwrap().1, SpdyChoice::PortForward);
    }

    #[test]
    fn spdy_refusals() {
        let r = spdy(&HeaderMap::new(), false).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let h = headers(&[("X-Stream-Protocol-Version", "v9.channel.k8s.io")]);
        let r = spdy(&h, false).unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.headers.len(), 4);
        let h = headers(&[("X-Stream-Protocol-Version", "v4.channel.k8s.io")]);
        assert_eq!(spdy(&h, true).unwrap_err().status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn websocket_choices() {
        let h = headers(&[("Sec-WebSocket-Protocol", "v5.channel.k8s.io")]);
        assert_eq!(
            websocket(&h, false).unwrap(),
            (
                Some("v5.channel.k8s.io"),
                WsChoice::RemoteCommand {
                    version: Version::V5,
                    base64: false
                }
            )
        );
        let h = headers(&[(
            "Sec-WebSocket-Protocol",
            "v9.channel.k8s.io, v4.base64.channel.k8s.io",
        )]);
        assert_eq!(
            websocket(&h, false).unwrap().1,
            WsChoice::RemoteCommand {
                version: Version::V4,
                base64: true
            }
        );
        let h = headers(&[("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io")]);
        assert_eq!(websocket(&h, true).unwrap().1, WsChoice::SpdyTunnel);
        assert_eq!(
            websocket(&HeaderMap::new(), true).unwrap(),
            (None, WsChoice::PortForward { base64: false })
        );
        assert_eq!(
            websocket(&h, false).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn upgrade_kinds() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ws = headers(&[
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
        ]);
        assert_eq!(
            upgrade(&ws).unwrap(),
            Upgrade::WebSocket { key: key.into() }
        );
        let spdy = headers(&[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]);
        assert_eq!(upgrade(&spdy).unwrap(), Upgrade::Spdy);
        assert_eq!(
            upgrade(&HeaderMap::new()).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let old = headers(&[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", key),
        ]);
        assert_eq!(
            upgrade(&old).unwrap_err().status,
            StatusCode::UPGRADE_REQUIRED
        );
        let badkey = headers(&[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "c2hvcnQ="),
        ]);
        assert_eq!(
            upgrade(&badkey).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let h2c = headers(&[("Connection", "Upgrade"), ("Upgrade", "h2c")]);
        assert!(upgrade(&h2c).unwrap_err().message.contains("h2c"));
    }

    #[test]
    fn port_queries() {
        assert_eq!(
            ports(Some("port=80&port=8080,9090")).unwrap(),
            vec![80, 8080, 9090]
        );
        assert_eq!(ports(Some("port=1%2C2")).unwrap(), vec![1, 2]);
        assert!(ports(None).unwrap_err().message.contains("required"));
        assert!(ports(Some("port=0")).is_err());
        assert!(ports(Some("port=")).is_err());
        assert!(ports(Some("port=99999")).is_err());
    }
}
