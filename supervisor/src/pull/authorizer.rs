//! Answers to a registry host's authentication challenge (`WWW-Authenticate` on a 401), per
//! host: each host of a pull has its own [`Authorizer`], so a mirror's token is never sent to
//! another host and each host's challenge is answered with its own token service.
//!
//! - `Bearer realm="…",service="…",scope="…"`: a token from the realm (`GET
//!   realm?service=…&scope=…`, with basic credentials when there are some; the answer's `token`
//!   or `access_token`), then the request again with `Authorization: Bearer <token>`.
//! - `Basic realm="…"`: the request again with the basic credentials, if there are some.
//!
//! An identity token from the request or the credentials file is sent as the bearer token
//! itself. The header that worked is kept for the host's next requests; a 401 on a kept header
//! (an expired token) is answered again once.

use std::sync::Mutex;

use base64::Engine;
use protocol::Code;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::Error;
use super::auth::Credentials;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names lower-cased.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235: challenges of a scheme and `name=value`
/// parameters, values tokens or quoted strings; several challenges separated by commas).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=' | b'"') {
            *i += 1;
        }
        header[start..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // A stray character: skip it rather than loop.
            i += 1;
            continue;
        }
        let mut j = i;
        while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch_len = header[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&header[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.push((word.to_ascii_lowercase(), value));
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

/// The largest token service answer read (tokens are JWTs of a few KiB).
const MAX_TOKEN_ANSWER: usize = 1 << 20;

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

/// The authentication state of one host.
pub struct Authorizer {
    creds: Credentials,
    /// The `Authorization` header the host accepted (or the one to try first).
    header: Mutex<Option<HeaderValue>>,
}

impl Authorizer {
    pub fn new(creds: Credentials) -> Authorizer {
        let first = match &creds {
            Credentials::Token(t) => HeaderValue::from_str(&format!("Bearer {t}")).ok(),
            _ => None,
        };
        Authorizer {
            creds,
            header: Mutex::new(first),
        }
    }

    /// The header to send now, if any.
    pub fn current(&self) -> Option<HeaderValue> {
        self.header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers the challenges of a 401 from `host`; `Ok(false)`: nothing to answer with (the
    /// 401 stands). `default_scope` is used when a bearer challenge names no scope.
    pub async fn answer(
        &self,
        client: &reqwest::Client,
        host: &str,
        www_authenticate: &[String],
        default_scope: &str,
    ) -> Result<bool, Error> {
        let challenges: Vec<Challenge> = www_authenticate
            .iter()
            .flat_map(|h| parse_challenges(h))
            .collect();
        let unauthenticated = |detail: String| Error::Registry {
            code: Code::Unauthenticated,
            host: host.to_string(),
            what: "authentication".into(),
            detail,
        };
        let value = if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Credentials::Token(_) = self.creds {
                // The token we were given is the one refused.
                return Ok(false);
            }
            let realm = c.param("realm").ok_or_else(|| {
                unauthenticated("the bearer challenge names no realm (token service)".into())
            })?;
            let mut url = reqwest::Url::parse(realm)
                .map_err(|e| unauthenticated(format!("token realm {realm:?}: {e}")))?;
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = c.param("service") {
                    q.append_pair("service", service);
                }
                q.append_pair("scope", c.param("scope").unwrap_or(default_scope));
            }
            let mut req = client.get(url.clone());
            if let Credentials::Basic { username, password } = &self.creds {
                req = req.basic_auth(username, Some(password));
            }
            let resp = req.send().await.map_err(|e| {
                unauthenticated(format!("token service {realm}: {}", error_chain(&e)))
            })?;
            let status = resp.status();
            let (body, more) = super::registry::read_at_most(resp, MAX_TOKEN_ANSWER)
                .await
                .map_err(|e| {
                    unauthenticated(format!("token service {realm}: {}", error_chain(&e)))
                })?;
            if more && status.is_success() {
                return Err(unauthenticated(format!(
                    "token service {realm}: an answer over {} KiB",
                    MAX_TOKEN_ANSWER >> 10
                )));
            }
            if !status.is_success() {
                return Err(unauthenticated(format!(
                    "token service {realm} answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
                )));
            }
            let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                unauthenticated(format!("token service {realm}: not a token answer: {e}"))
            })?;
            let token = if answer.token.is_empty() {
                answer.access_token
            } else {
                answer.token
            };
            if token.is_empty() {
                return Err(unauthenticated(format!(
                    "token service {realm} gave no token"
                )));
            }
            format!("Bearer {token}")
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            let Credentials::Basic { username, password } = &self.creds else {
                return Ok(false);
            };
            let raw = format!("{username}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        } else {
            return Ok(false);
        };
        let value = HeaderValue::from_str(&value)
            .map_err(|_| unauthenticated("the token is not a valid header value".into()))?;
        *self.header.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(true)
    }
}

/// A reqwest error with its sources ("error sending request" alone does not say why).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        src = s.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));

        let c = parse_challenges(r#"Basic realm="a \"q\" b", Bearer realm=x, error=invalid_token"#);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].scheme.as_str(), c[0].param("realm")),
            ("basic", Some("a \"q\" b"))
        );
        assert_eq!(c[1].param("realm"), Some("x"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));

        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Negotiate")[0].scheme, "negotiate");
        // Garbage does not hang or panic.
        parse_challenges("=\"\\");
        parse_challenges("Bearer realm=\"unterminated");
        parse_challenges("Bearer realm=\"é\"");
    }

    #[test]
    fn identity_tokens_are_sent_from_the_start() {
        let a = Authorizer::new(Credentials::Token("T".into()));
        assert_eq!(a.current().unwrap(), "Bearer T");
        assert!(Authorizer::new(Credentials::Anonymous).current().is_none());
    }
}
