//! Registry credentials: from the request, else from a docker-style `config.json`.
//!
//! The file is read per pull (it may change while corrald runs). Entries of `auths` are keyed
//! by host (`127.0.0.1:5000`) or by URL (`https://index.docker.io/v1/`); an entry carries
//! `auth` (base64 of `user:password`), or `username`/`password`, or an `identitytoken`.
//! Credential helpers (`credsStore`, `credHelpers`) are not run: a daemon must not exec
//! programs named in a user's file.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::Error;

/// What a pull authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// Sent as `Authorization: Bearer <token>`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Token(_) => write!(f, "Token(***)"),
        }
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
}

/// The host part of an `auths` key: `https://index.docker.io/v1/` → `index.docker.io`.
fn key_host(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// True if an `auths` key names registry `host` (`docker.io` and `index.docker.io` are one).
fn key_matches(key: &str, host: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    let k = key_host(key);
    k == host || (hub(k) && hub(host))
}

/// The credentials for `host` in the config.json text `json` (`None`: no entry).
pub fn from_docker_config(
    json: &str,
    host: &str,
    path: &Path,
) -> Result<Option<Credentials>, Error> {
    let bad = |reason: String| Error::BadCredentialsFile {
        path: path.display().to_string(),
        reason,
    };
    let cfg: DockerConfig = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    // An exact key wins over a URL form of the same host.
    let entry = cfg.auths.get(host).or_else(|| {
        cfg.auths
            .iter()
            .find(|(k, _)| key_matches(k, host))
            .map(|(_, v)| v)
    });
    let Some(e) = entry else {
        return Ok(None);
    };
    if !e.identitytoken.is_empty() {
        return Ok(Some(Credentials::Token(e.identitytoken.clone())));
    }
    if !e.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(e.auth.trim())
            .map_err(|err| bad(format!("auths.{host}.auth is not base64: {err}")))?;
        let text =
            String::from_utf8(raw).map_err(|_| bad(format!("auths.{host}.auth is not UTF-8")))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{host}.auth is not user:password")))?;
        return Ok(Some(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    if !e.username.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: e.username.clone(),
            password: e.password.clone(),
        }));
    }
    Ok(None)
}

/// The credentials for `host` from the file at `path`; a missing file means none.
pub fn from_docker_config_file(path: &Path, host: &str) -> Result<Option<Credentials>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => from_docker_config(&text, host, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::BadCredentialsFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(json: &str, host: &str) -> Result<Option<Credentials>, Error> {
        from_docker_config(json, host, Path::new("/x/config.json"))
    }

    #[test]
    fn docker_config_entries() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let json = format!(
            r#"{{"auths": {{
                "127.0.0.1:5000": {{"auth": "{b64}"}},
                "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}},
                "tok.example": {{"identitytoken": "T0K"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#
        );
        assert_eq!(
            creds(&json, "127.0.0.1:5000").unwrap(),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "s3cr:et".into()
            })
        );
        for hub in ["docker.io", "index.docker.io"] {
            assert_eq!(
                creds(&json, hub).unwrap(),
                Some(Credentials::Basic {
                    username: "bob".into(),
                    password: "pw".into()
                }),
                "{hub}"
            );
        }
        assert_eq!(
            creds(&json, "tok.example").unwrap(),
            Some(Credentials::Token("T0K".into()))
        );
        assert_eq!(creds(&json, "empty.example").unwrap(), None);
        assert_eq!(creds(&json, "other:5000").unwrap(), None);
        assert_eq!(creds("{}", "x").unwrap(), None);
        // Secrets never show in Debug output.
        let dbg = format!("{:?}", creds(&json, "127.0.0.1:5000").unwrap());
        assert!(!dbg.contains("s3cr"), "{dbg}");
    }

    #[test]
    fn broken_files_are_named() {
        let e = creds("{not json", "x").unwrap_err();
        assert!(e.to_string().contains("/x/config.json"), "{e}");
        let e = creds(r#"{"auths": {"h": {"auth": "%%%"}}}"#, "h").unwrap_err();
        assert!(e.to_string().contains("auths.h.auth"), "{e}");
        let nocolon = base64::engine::general_purpose::STANDARD.encode("alice");
        let e = creds(
            &format!(r#"{{"auths": {{"h": {{"auth": "{nocolon}"}}}}}}"#),
            "h",
        )
        .unwrap_err();
        assert!(e.to_string().contains("user:password"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            from_docker_config_file(&dir.path().join("none.json"), "h").unwrap(),
            None
        );
    }
}
