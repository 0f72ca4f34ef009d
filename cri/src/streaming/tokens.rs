//! The tokens in streaming URLs: each Exec, Attach or PortForward answer holds one, and the
//! streaming server runs the request it stands for once, when a client presents it.
//!
//! Like kubelet's request cache (`pkg/kubelet/cri/streaming/request_cache.go`): a token is
//! random (16 bytes, base64url), used once (taking it removes it), and good for one minute; at
//! most [`MAX_IN_FLIGHT`] wait at a time, so callers that never come back cannot grow the
//! cache without bound: past it, issuing fails with ResourceExhausted until some expire.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a token stays good (kubelet's `CacheTTL`).
pub const TTL: Duration = Duration::from_secs(60);
/// Tokens issued and not yet used or expired (kubelet's `MaxInFlight`).
pub const MAX_IN_FLIGHT: usize = 1000;
/// Random bytes per token: kubelet uses 8; more costs nothing.
const TOKEN_BYTES: usize = 16;

struct Entry<T> {
    item: T,
    expires: Instant,
}

/// Single-use tokens for items of type `T`, each good for [`TTL`].
pub struct Tokens<T> {
    entries: Mutex<HashMap<String, Entry<T>>>,
    ttl: Duration,
    max: usize,
}

impl<T> Default for Tokens<T> {
    fn default() -> Tokens<T> {
        Tokens::new(TTL, MAX_IN_FLIGHT)
    }
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration, max: usize) -> Tokens<T> {
        Tokens {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// A new token for `item`.
    pub fn issue(&self, item: T) -> Result<String> {
        self.issue_at(item, Instant::now())
    }

    /// The item of `token`, which is used up by this call; None when it is unknown, used or
    /// expired.
    pub fn redeem(&self, token: &str) -> Option<T> {
        self.redeem_at(token, Instant::now())
    }

    fn issue_at(&self, item: T, now: Instant) -> Result<String> {
        let token = random_token()?;
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.max {
                return Err(Error::new(
                    protocol::Code::ResourceExhausted,
                    format!(
                        "{} streaming requests are waiting for their client; try again later",
                        entries.len()
                    ),
                ));
            }
        }
        entries.insert(
            token.clone(),
            Entry {
                item,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    fn redeem_at(&self, token: &str, now: Instant) -> Option<T> {
        let e = self.lock().remove(token)?;
        (e.expires > now).then_some(e.item)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        // Every change is one map operation: a panic elsewhere cannot leave it half-done.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn random_token() -> Result<String> {
    use base64::Engine;
    let mut b = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::internal(format!("streaming token: read /dev/urandom: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_once() {
        let t = Tokens::default();
        let a = t.issue("a").unwrap();
        let b = t.issue("b").unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 16, "{a}");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "not URL-safe: {a}"
        );
        assert_eq!(t.redeem(&b), Some("b"));
        assert_eq!(t.redeem(&b), None, "a used token must not work again");
        assert_eq!(t.redeem(&a), Some("a"));
        assert_eq!(t.redeem("nonsense"), None);
        assert_eq!(t.redeem(""), None);
    }

    #[test]
    fn a_token_expires() {
        let t = Tokens::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let a = t.issue_at(1, now).unwrap();
        let b = t.issue_at(2, now).unwrap();
        assert_eq!(t.redeem_at(&a, now + Duration::from_secs(59)), Some(1));
        assert_eq!(t.redeem_at(&b, now + Duration::from_secs(60)), None);
        // An expired token is gone, not waiting for a clock that goes back.
        assert_eq!(t.redeem_at(&b, now), None);
    }

    #[test]
    fn in_flight_tokens_are_bounded_until_they_expire() {
        let t = Tokens::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        for i in 0..3 {
            t.issue_at(i, now).unwrap();
        }
        let e = t.issue_at(3, now).unwrap_err();
        assert_eq!(e.code, protocol::Code::ResourceExhausted, "{e}");
        let later = now + Duration::from_secs(61);
        let d = t.issue_at(4, later).unwrap();
        assert_eq!(t.redeem_at(&d, later), Some(4));
    }
}
