//! The OCI runtime spec of a new container, the way `ctr run` builds it: containerd's default
//! Unix spec (namespaces, mounts, capabilities, rlimits, masked and read-only paths) plus what
//! the image config says (Entrypoint, Cmd, Env, WorkingDir, User), overridden by the flags.
//!
//! Networking is out of scope: the container gets a new network namespace, which runc gives a
//! loopback interface and nothing else (ctr without `--net-host` does the same).

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::image::RunConfig;

pub use protocol::oci::{DEFAULT_CAPS, DEFAULT_PATH_ENV as DEFAULT_PATH};
use protocol::oci::{MASKED_PATHS, READONLY_PATHS};

/// A `--mount type=T,src=S,dst=D,options=a:b` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct MountFlag {
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub options: Vec<String>,
}

impl std::str::FromStr for MountFlag {
    type Err = String;

    fn from_str(s: &str) -> Result<MountFlag, String> {
        let mut m = MountFlag {
            kind: "bind".into(),
            source: String::new(),
            destination: String::new(),
            options: Vec::new(),
        };
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("mount option {part:?} is not key=value"))?;
            match k {
                "type" => m.kind = v.into(),
                "src" | "source" => m.source = v.into(),
                "dst" | "destination" | "target" => m.destination = v.into(),
                "options" => {
                    m.options = v
                        .split(':')
                        .filter(|o| !o.is_empty())
                        .map(Into::into)
                        .collect()
                }
                _ => {
                    return Err(format!(
                        "unknown mount key {k:?} (want type, src, dst, options)"
                    ));
                }
            }
        }
        if m.destination.is_empty() || !m.destination.starts_with('/') {
            return Err(format!("mount {s:?} needs an absolute dst"));
        }
        if m.kind == "bind" {
            if m.source.is_empty() {
                return Err(format!("bind mount {s:?} needs a src"));
            }
            if !m.options.iter().any(|o| o == "bind" || o == "rbind") {
                m.options.insert(0, "rbind".into());
            }
        }
        Ok(m)
    }
}

/// What the command line says about the container's process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOpts {
    /// Arguments after the image name; replace the image's Cmd (the Entrypoint stays).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub terminal: bool,
}

/// `uid[:gid]`, numeric (names would need the container's /etc/passwd); `root` is 0.
pub fn parse_user(user: &str) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let num = |s: &str| -> Result<u32> {
        if s == "root" {
            return Ok(0);
        }
        match s.parse() {
            Ok(n) => Ok(n),
            Err(_) => bail!(
                "user {user:?}: only numeric uid[:gid] (or root) is supported, names need the \
                 container's /etc/passwd"
            ),
        }
    };
    let uid = num(u)?;
    let gid = match g {
        Some(g) => num(g)?,
        None => uid,
    };
    Ok((uid, gid))
}

/// Image env, then flags overriding by key; PATH defaulted; TERM for a terminal.
pub fn merge_env(image: &[String], flags: &[String], terminal: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let key = |e: &str| {
        e.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| e.to_string())
    };
    for e in image.iter().chain(flags) {
        let k = key(e);
        out.retain(|x| key(x) != k);
        out.push(e.clone());
    }
    if !out.iter().any(|e| key(e) == "PATH") {
        out.insert(0, DEFAULT_PATH.into());
    }
    if terminal && !out.iter().any(|e| key(e) == "TERM") {
        out.push("TERM=xterm".into());
    }
    out
}

/// The process part of the spec.
pub fn process(image: &RunConfig, opts: &ProcessOpts) -> Result<Value> {
    let mut args: Vec<String> = image.entrypoint.clone().unwrap_or_default();
    if opts.args.is_empty() {
        args.extend(image.cmd.clone().unwrap_or_default());
    } else {
        args.extend(opts.args.iter().cloned());
    }
    if args.is_empty() {
        bail!("no command: the image has no Entrypoint or Cmd and none was given");
    }
    let user = opts
        .user
        .clone()
        .or_else(|| Some(image.user.clone()).filter(|u| !u.is_empty()));
    let (uid, gid) = match &user {
        Some(u) => parse_user(u)?,
        None => (0, 0),
    };
    let cwd = opts
        .workdir
        .clone()
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        bail!("working directory {cwd:?} is not absolute");
    }
    let env = merge_env(
        image.env.as_deref().unwrap_or_default(),
        &opts.env,
        opts.terminal,
    );
    Ok(json!({
        "terminal": opts.terminal,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": DEFAULT_CAPS,
            "effective": DEFAULT_CAPS,
            "permitted": DEFAULT_CAPS,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true,
    }))
}

/// The whole spec of container `id` in namespace `ns`.
pub fn generate(
    ns: &str,
    id: &str,
    image: &RunConfig,
    opts: &ProcessOpts,
    mounts: &[MountFlag],
) -> Result<Value> {
    let mut all_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    for m in mounts {
        all_mounts.retain(|x| x["destination"] != m.destination.as_str());
        all_mounts.push(json!({
            "destination": m.destination,
            "type": m.kind,
            "source": m.source,
            "options": m.options,
        }));
    }
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": process(image, opts)?,
        "root": {"path": "rootfs"},
        "mounts": all_mounts,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "cgroupsPath": format!("/{ns}/{id}"),
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            user: String::new(),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            working_dir: "/work".into(),
            stop_signal: String::new(),
        }
    }

    #[test]
    fn image_config_fills_the_process() {
        let s = generate("ns", "c1", &image(), &ProcessOpts::default(), &[]).unwrap();
        assert_eq!(s["process"]["args"], json!(["/entry", "default"]));
        assert_eq!(s["process"]["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(s["process"]["cwd"], "/work");
        assert_eq!(s["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["linux"]["cgroupsPath"], "/ns/c1");
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
        ] {
            assert!(dests.contains(&d), "{d} missing from {dests:?}");
        }
        assert_eq!(s["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(s["process"]["rlimits"][0]["hard"], 1024);
        assert!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .contains(&json!("CAP_KILL"))
        );
        assert!(
            !s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .contains(&json!("CAP_SYS_ADMIN"))
        );
        assert!(
            s["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
        assert!(
            s["linux"]["readonlyPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/sys"))
        );
    }

    #[test]
    fn flags_override_the_image() {
        let opts = ProcessOpts {
            args: vec!["sh".into(), "-c".into(), "x".into()],
            env: vec!["A=2".into(), "B=3".into()],
            user: Some("1000:100".into()),
            workdir: Some("/tmp".into()),
            terminal: true,
        };
        let m: MountFlag = "type=bind,src=/host,dst=/data,options=ro".parse().unwrap();
        let s = generate("ns", "c1", &image(), &opts, &[m]).unwrap();
        // The Entrypoint stays, the Cmd is replaced.
        assert_eq!(s["process"]["args"], json!(["/entry", "sh", "-c", "x"]));
        assert_eq!(
            s["process"]["env"],
            json!(["PATH=/bin", "A=2", "B=3", "TERM=xterm"])
        );
        assert_eq!(s["process"]["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(s["process"]["cwd"], "/tmp");
        assert_eq!(s["process"]["terminal"], true);
        let last = s["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last,
            json!({"destination": "/data", "type": "bind", "source": "/host", "options": ["rbind", "ro"]})
        );
    }

    #[test]
    fn defaults_without_image_values() {
        let img = RunConfig {
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let s = generate("n", "c", &img, &ProcessOpts::default(), &[]).unwrap();
        assert_eq!(s["process"]["env"], json!([DEFAULT_PATH]));
        assert_eq!(s["process"]["cwd"], "/");
        let err = generate(
            "n",
            "c",
            &RunConfig::default(),
            &ProcessOpts::default(),
            &[],
        );
        assert!(err.unwrap_err().to_string().contains("no command"));
    }

    #[test]
    fn users_and_mount_flags() {
        assert_eq!(parse_user("0").unwrap(), (0, 0));
        assert_eq!(parse_user("root").unwrap(), (0, 0));
        assert_eq!(parse_user("5:6").unwrap(), (5, 6));
        assert!(
            parse_user("nobody")
                .unwrap_err()
                .to_string()
                .contains("numeric")
        );
        assert!("src=/a".parse::<MountFlag>().unwrap_err().contains("dst"));
        assert!(
            "type=bind,dst=/a"
                .parse::<MountFlag>()
                .unwrap_err()
                .contains("src")
        );
        assert!(
            "colour=red,dst=/a"
                .parse::<MountFlag>()
                .unwrap_err()
                .contains("colour")
        );
        let m: MountFlag = "type=tmpfs,dst=/scratch".parse().unwrap();
        assert!(m.options.is_empty());
        let m: MountFlag = "type=bind,src=/a,dst=/b,options=rbind:rw".parse().unwrap();
        assert_eq!(m.options, ["rbind", "rw"]);
    }
}
