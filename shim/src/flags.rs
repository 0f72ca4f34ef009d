//! Command line of a runtime v2 shim, as containerd execs it.
//!
//! Go `flag` style: `-flag value`, `-flag=value`, `--flag value`, booleans without a value, all
//! flags before the positional action (`start`, `delete`, or none for serve). Unknown flags are
//! skipped with a warning instead of failing: a newer containerd may pass flags we do not know.
//! 1.7 moved the namespace and address into `NAMESPACE`/`GRPC_ADDRESS`; they are fallbacks here.

/// What the shim was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start,
    Delete,
    Serve,
    Version,
}

/// The parsed command line plus the environment fallbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    /// The daemon's gRPC address (`-address`), part of the socket hash.
    pub address: String,
    pub publish_binary: String,
    pub bundle: Option<String>,
    /// Private between `start` and its server child: the socket address served on fd 3.
    pub socket: Option<String>,
    /// The daemon's ttrpc address for events, without the `unix://` prefix.
    pub ttrpc_address: String,
    pub debug: bool,
    pub action: Action,
    /// Flags we skipped, for a warning in the log.
    pub unknown: Vec<String>,
}

const BOOL_FLAGS: &[&str] = &["debug", "v", "version", "systemd-cgroup"];
const VALUE_FLAGS: &[&str] = &[
    "namespace",
    "id",
    "address",
    "publish-binary",
    "bundle",
    "socket",
    "debug-address",
];

/// Parses `args` (without argv[0]); `env` looks up environment variables.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Flags, String> {
    let mut f = Flags {
        namespace: String::new(),
        id: String::new(),
        address: String::new(),
        publish_binary: String::new(),
        bundle: None,
        socket: None,
        ttrpc_address: String::new(),
        debug: false,
        action: Action::Serve,
        unknown: Vec::new(),
    };
    let mut version = false;
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            positional.push(arg.clone());
            continue;
        };
        if stripped.is_empty() {
            positional.push(arg.clone());
            continue;
        }
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        if BOOL_FLAGS.contains(&name) {
            let on = match inline.as_deref() {
                None | Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(v) => return Err(format!("invalid boolean value {v:?} for flag -{name}")),
            };
            match name {
                "debug" => f.debug = on,
                "v" | "version" => version = on,
                _ => {}
            }
            continue;
        }
        let known = VALUE_FLAGS.contains(&name);
        let value = match inline {
            Some(v) => v,
            None if known => {
                let Some(v) = args.get(i) else {
                    return Err(format!("flag needs an argument: -{name}"));
                };
                i += 1;
                v.clone()
            }
            None => {
                // An unknown flag: take the next word as its value unless it looks like a flag
                // or an action, so that `-unknown start` still starts.
                if let Some(next) = args.get(i)
                    && !next.starts_with('-')
                    && !matches!(next.as_str(), "start" | "delete")
                {
                    i += 1;
                }
                f.unknown.push(name.to_string());
                continue;
            }
        };
        match name {
            "namespace" => f.namespace = value,
            "id" => f.id = value,
            "address" => f.address = value,
            "publish-binary" => f.publish_binary = value,
            "bundle" => f.bundle = Some(value),
            "socket" => f.socket = Some(value),
            _ => f.unknown.push(name.to_string()),
        }
    }
    if f.namespace.is_empty() {
        f.namespace = env("NAMESPACE").unwrap_or_default();
    }
    if f.address.is_empty() {
        f.address = env("GRPC_ADDRESS").unwrap_or_default();
    }
    let ttrpc = env("TTRPC_ADDRESS").unwrap_or_default();
    f.ttrpc_address = ttrpc.strip_prefix("unix://").unwrap_or(&ttrpc).to_string();
    f.action = if version {
        Action::Version
    } else {
        match positional.first().map(String::as_str) {
            None => Action::Serve,
            Some("start") => Action::Start,
            Some("delete") => Action::Delete,
            Some(other) => return Err(format!("unknown action {other:?}")),
        }
    };
    if f.action != Action::Version && f.namespace.is_empty() {
        return Err("shim namespace cannot be empty (-namespace or NAMESPACE)".into());
    }
    if matches!(f.action, Action::Start | Action::Delete) && f.id.is_empty() {
        return Err("shim id cannot be empty (-id)".into());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn containerd_start_argv() {
        let f = parse(
            &args("-namespace ns -address /run/c.sock -publish-binary /usr/bin/containerd -id t1 -debug start"),
            |k| (k == "TTRPC_ADDRESS").then(|| "/run/c.sock.ttrpc".to_string()),
        )
        .unwrap();
        assert_eq!(f.action, Action::Start);
        assert_eq!(f.namespace, "ns");
        assert_eq!(f.id, "t1");
        assert_eq!(f.address, "/run/c.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert!(f.debug);
        assert_eq!(f.ttrpc_address, "/run/c.sock.ttrpc");
    }

    #[test]
    fn delete_with_bundle_and_equals_forms() {
        let f = parse(&args("--namespace=ns -id=t2 -bundle /b delete"), no_env).unwrap();
        assert_eq!(f.action, Action::Delete);
        assert_eq!(f.bundle.as_deref(), Some("/b"));
        assert_eq!(f.id, "t2");
    }

    #[test]
    fn serve_has_no_action() {
        let f = parse(&args("-namespace ns -id t1 -address /a"), no_env).unwrap();
        assert_eq!(f.action, Action::Serve);
        assert!(!f.debug);
    }

    #[test]
    fn ttrpc_address_with_scheme_is_stripped() {
        let f = parse(&args("-namespace ns -id x"), |k| {
            (k == "TTRPC_ADDRESS").then(|| "unix:///run/c.sock.ttrpc".to_string())
        })
        .unwrap();
        assert_eq!(f.ttrpc_address, "/run/c.sock.ttrpc");
    }

    #[test]
    fn env_fallbacks_of_containerd_1_7() {
        let f = parse(&args("-id x start"), |k| match k {
            "NAMESPACE" => Some("k8s.io".into()),
            "GRPC_ADDRESS" => Some("/run/x.sock".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.address, "/run/x.sock");
    }

    #[test]
    fn unknown_flags_are_not_fatal() {
        let f = parse(
            &args("-namespace ns -id x -future-flag 7 -other-bool start"),
            no_env,
        )
        .unwrap();
        assert_eq!(f.action, Action::Start);
        assert_eq!(f.unknown, vec!["future-flag", "other-bool"]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse(&args("-id x start"), no_env).unwrap_err();
        assert!(e.contains("namespace"), "{e}");
        let e = parse(&args("-namespace ns -id"), no_env).unwrap_err();
        assert!(e.contains("-id"), "{e}");
        let e = parse(&args("-namespace ns -id x frobnicate"), no_env).unwrap_err();
        assert!(e.contains("frobnicate"), "{e}");
        assert_eq!(parse(&args("-v"), no_env).unwrap().action, Action::Version);
    }
}
