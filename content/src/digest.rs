//! `Digest`: the name of a blob, `sha256:<64 lowercase hex>`. Only sha256 is supported, as in
//! practice for containerd 1.6 images; anything else is InvalidArgument naming the bad string.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::{Error, Result};

/// A validated sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub const ALGORITHM: &'static str = "sha256";

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest> {
        let bad = |reason| Error::InvalidDigest {
            input: s.to_owned(),
            reason,
        };
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("missing \"<algorithm>:\" prefix"))?;
        if alg != Self::ALGORITHM {
            return Err(bad("unsupported algorithm (only sha256)"));
        }
        Self::from_hex(hex).map_err(|e| match e {
            Error::InvalidDigest { reason, .. } => bad(reason),
            other => other,
        })
    }

    /// Parses the 64 lowercase hex characters alone (a blob's file name).
    pub fn from_hex(hex: &str) -> Result<Digest> {
        let bad = |reason| Error::InvalidDigest {
            input: hex.to_owned(),
            reason,
        };
        if hex.len() != 64 {
            return Err(bad("sha256 hex must be 64 characters"));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("sha256 hex must be lowercase hexadecimal"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out)
            .map_err(|_| bad("sha256 hex must be lowercase hexadecimal"))?;
        Ok(Digest(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut d = Digester::new();
        d.update(data);
        d.digest()
    }

    /// The 64 hex characters (the blob's file name).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Self::ALGORITHM, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

/// A running sha256 over appended data; `digest()` reports the digest so far without consuming it.
#[derive(Clone, Default)]
pub struct Digester(sha2::Sha256);

impl Digester {
    pub fn new() -> Digester {
        Digester(sha2::Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn digest(&self) -> Digest {
        Digest(self.0.clone().finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_canonical_form() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(Digest::from_hex(&d.hex()).unwrap(), d);
    }

    #[test]
    fn bad_strings_are_invalid_argument_naming_the_input() {
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let cases = [
            "",
            "sha256",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            &upper,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85é",
        ];
        for input in cases {
            let err = Digest::parse(input).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{input:?}");
            assert!(
                err.to_string().contains(&format!("{input:?}")),
                "{err} does not name {input:?}"
            );
        }
    }

    #[test]
    fn running_digest_matches_one_shot() {
        let mut d = Digester::new();
        d.update(b"hello ");
        let mid = d.digest();
        d.update(b"world");
        assert_eq!(mid, Digest::of(b"hello "));
        assert_eq!(d.digest(), Digest::of(b"hello world"));
    }
}
