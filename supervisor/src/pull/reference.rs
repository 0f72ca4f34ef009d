//! Image references and platforms: what a pull is asked for, normalised as containerd does.
//!
//! References follow docker/distribution's grammar, checked by hand rather than with its
//! regular expression (whose Unicode `\w` made the regex crate build an automaton of about
//! 15 MB, kept for the daemon's life; Go's `\w`, and so containerd's, is ASCII):
//!
//! ```text
//! reference := name [ ":" tag ] [ "@" digest ]
//! name      := [ domain "/" ] path
//! domain    := component ( "." component )* [ ":" port ]   component: [A-Za-z0-9] or
//!                                                           [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! path      := path-component ( "/" path-component )*
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest    := algorithm ":" hex, sha256 (64 hex), sha384 (96) or sha512 (128), lower case
//! ```
//!
//! Docker Hub short names are expanded as docker/distribution's `splitDockerDomain` does:
//! `busybox` → `docker.io/library/busybox:latest`, `foo/bar` → `docker.io/foo/bar:latest`; a
//! first component is a host if it has a `.` or a `:`, is `localhost`, or has upper case
//! letters (repository names are lower case). A reference with neither tag nor digest gets
//! `:latest`. The normalised string is the image record's name.

use super::Error;

/// The longest repository (after normalisation), as docker/distribution allows.
const MAX_REPOSITORY: usize = 255;
/// The longest tag.
const MAX_TAG: usize = 128;

/// A parsed, normalised reference.
#[derive(Debug, Clone)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    /// The normalised name: `docker.io/library/busybox:latest`, `host:5000/x@sha256:…`.
    pub name: String,
}

impl ImageRef {
    /// The registry as named in the reference (`docker.io`, `127.0.0.1:5000`): the key for
    /// the hosts directory, the insecure list and the `containerd.io/distribution.source.<host>`
    /// label.
    pub fn host(&self) -> &str {
        &self.registry
    }

    /// The host the requests go to (`index.docker.io` for `docker.io`).
    pub fn endpoint(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" => "index.docker.io",
            r => r,
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

/// Parses and normalises `s`. InvalidArgument naming `s`, and what is wrong with it, if it is
/// not a reference.
pub fn parse(s: &str) -> Result<ImageRef, Error> {
    let bad = |reason: &str| Error::BadReference {
        reference: s.to_string(),
        reason: reason.to_string(),
    };
    if s.trim() != s || s.is_empty() {
        return Err(bad("empty or surrounded by white space"));
    }
    // `scheme://` is a URL, not a reference (the grammar would read `scheme` as a host).
    if s.contains("://") {
        return Err(bad("a reference has no URL scheme"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => (rest, Some(check_digest(d).map_err(bad)?)),
        None => (s, None),
    };
    // A `:` after the last `/` starts the tag; one before it belongs to the host's port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let first_ok = tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !first_ok
            || tag.len() > MAX_TAG
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(bad(
                "a tag is 1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -",
            ));
        }
    }
    let (registry, repository) = split_name(name).map_err(bad)?;
    if repository.len() > MAX_REPOSITORY {
        return Err(bad("the repository name is longer than 255 characters"));
    }
    let tag = match (tag, digest) {
        (None, None) => Some("latest"),
        (t, _) => t,
    };
    let mut full = format!("{registry}/{repository}");
    if let Some(t) = tag {
        full = format!("{full}:{t}");
    }
    if let Some(d) = digest {
        full = format!("{full}@{d}");
    }
    Ok(ImageRef {
        registry,
        repository,
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
        name: full,
    })
}

/// A digest of a supported algorithm, with its hex in lower case and of the algorithm's length.
fn check_digest(d: &str) -> Result<&str, &'static str> {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return Err("a digest is algorithm:hex");
    };
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("the digest's algorithm is not sha256, sha384 or sha512"),
    };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("the digest's hex is not of lower-case hex digits of its algorithm's length");
    }
    Ok(d)
}

/// Checks a name and splits it into registry and repository as `splitDockerDomain` does.
fn split_name(name: &str) -> Result<(String, String), &'static str> {
    let path = |p: &str| p.split('/').all(is_path_component);
    // The grammar's optional domain: the name is a path, or a domain and a path.
    let valid = path(name)
        || name
            .split_once('/')
            .is_some_and(|(first, rest)| is_domain(first) && path(rest));
    if !valid {
        return Err(
            "a name is [host[:port]/]path, the path of lower-case components of a-z \
                    0-9 joined by . _ __ or dashes, separated by /",
        );
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if protocol::image::names_a_host(first) => (first, rest),
        _ => ("docker.io", name),
    };
    Ok(match registry {
        "docker.io" | "index.docker.io" if !repository.contains('/') => {
            ("docker.io".into(), format!("library/{repository}"))
        }
        "index.docker.io" => ("docker.io".into(), repository.to_string()),
        r => (r.to_string(), repository.to_string()),
    })
}

/// `host[:port]`: dot-separated components of letters, digits and inner dashes.
fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !c.starts_with('-')
            && !c.ends_with('-')
    };
    host.split('.').all(component)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let ok = match &b[start..i] {
            b"." | b"_" | b"__" => true,
            sep => sep.iter().all(|&x| x == b'-'),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// What this daemon runs: linux/amd64 (containerd's default on this machine).
    pub fn default_linux() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`; empty means [`Platform::default_linux`]. Architecture
    /// aliases are normalised as containerd does (`x86_64` → `amd64`, `aarch64` → `arm64`).
    pub fn parse(s: &str) -> Result<Platform, Error> {
        if s.is_empty() {
            return Ok(Platform::default_linux());
        }
        let parts: Vec<&str> = s.split('/').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !ok {
            return Err(Error::BadPlatform(s.to_string()));
        }
        let (architecture, variant) =
            normalise_arch(&parts[1].to_ascii_lowercase(), parts.get(2).copied());
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture,
            variant,
        })
    }

    /// True if an index entry with this platform serves us. A wanted variant must match; an
    /// entry's variant is ignored when none is wanted, except the arm64 default `v8`.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let (arch, variant) = normalise_arch(&architecture.to_ascii_lowercase(), variant);
        if !os.eq_ignore_ascii_case(&self.os) || arch != self.architecture {
            return false;
        }
        match (&self.variant, variant) {
            (None, _) => true,
            (Some(w), Some(v)) => *w == v,
            (Some(_), None) => false,
        }
    }
}

/// containerd's `normalizeArch`.
fn normalise_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(str::to_ascii_lowercase);
    match arch {
        "i386" => ("386".into(), None),
        "x86_64" | "x86-64" => ("amd64".into(), None),
        "aarch64" | "arm64" => {
            let v = variant.filter(|v| v != "8" && v != "v8");
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("7") => Some("v7".into()),
                Some("5") | Some("6") | Some("8") => variant.map(|v| format!("v{v}")),
                _ => variant,
            };
            ("arm".into(), v)
        }
        a => (a.to_string(), variant),
    }
}

/// containerd's chain ID of a stack of layers: chainID(0) = diffID(0),
/// chainID(n) = sha256(chainID(n-1) + " " + diffID(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => content::Digest::of(format!("{parent} {d}").as_bytes()).to_string(),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the image_reference fuzz target: `UPPER/case` was named
    /// `docker.io/UPPER/case:latest`, which does not parse again.
    #[test]
    fn an_upper_case_first_component_is_a_host_as_in_docker() {
        for (input, name, host, repo) in [
            ("UPPER/case", "UPPER/case:latest", "UPPER", "case"),
            ("Reg/a/b:v1", "Reg/a/b:v1", "Reg", "a/b"),
            (
                "lower/case",
                "docker.io/lower/case:latest",
                "docker.io",
                "lower/case",
            ),
        ] {
            let r = parse(input).unwrap();
            assert_eq!(
                (r.name.as_str(), r.host(), r.repository()),
                (name, host, repo)
            );
            assert_eq!(parse(&r.name).unwrap().name, r.name, "{input}");
        }
        let d = format!("X/y@sha256:{}", "a".repeat(64));
        assert_eq!(parse(&d).unwrap().name, d);
        assert_eq!(parse(&d).unwrap().host(), "X");
        assert!(parse("docker.io/UPPER/case").is_err());
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("localhost/x", "localhost/x:latest"),
            ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"),
            (
                &format!("host:5000/x@sha256:{}", "a".repeat(64)),
                &format!("host:5000/x@sha256:{}", "a".repeat(64)),
            ),
        ] {
            let r = parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(r.name, want, "{given}");
        }
        let r = parse("busybox").unwrap();
        assert_eq!(
            (r.host(), r.endpoint(), r.repository()),
            ("docker.io", "index.docker.io", "library/busybox")
        );
        let r = parse(&format!("host:5000/x@sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!((r.host(), r.tag()), ("host:5000", None));
    }

    /// Cases where the grammar alone decides: a first component that is no host name but is
    /// a repository component is still a registry for `splitDockerDomain` if it has a dot.
    #[test]
    fn names_split_as_docker_distribution_does() {
        for (given, name) in [
            ("a_b.c/x", "a_b.c/x:latest"),
            ("a-b/x", "docker.io/a-b/x:latest"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            ("a---b__c_d/f:T_1.-x", "docker.io/a---b__c_d/f:T_1.-x"),
            (
                &format!("h.io/x:v@sha512:{}", "e".repeat(128)),
                &format!("h.io/x:v@sha512:{}", "e".repeat(128)),
            ),
            (
                &format!("x:{}", "t".repeat(128)),
                &format!("docker.io/library/x:{}", "t".repeat(128)),
            ),
        ] {
            let r = parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(r.name, name, "{given}");
        }
    }

    #[test]
    fn bad_references_are_named() {
        for bad in [
            "",
            " busybox",
            "Busybox",
            "http://host/x",
            "a//b",
            "x:",
            "host:5000/x@sha256:abc",
            "x@md5:0123",
            // Go's `\w`, so containerd's, is ASCII.
            "x:caf\u{e9}",
            "x:.a",
            "x:-a",
            &format!("x:{}", "t".repeat(129)),
            // containerd's digests are lower-case hex.
            &format!("x@sha256:{}", "A".repeat(64)),
            "a_b/x:y@sha256:",
            "-a.io/x",
            "a.io:/x",
            "a.io:5x/x",
            &format!("a/{}", "b".repeat(254)),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code(), protocol::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn platforms_parse_and_match() {
        let p = Platform::parse("").unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert!(p.matches("linux", "amd64", None));
        assert!(p.matches("linux", "x86_64", None));
        assert!(!p.matches("linux", "arm64", None));
        assert!(!p.matches("windows", "amd64", None));

        let p = Platform::parse("linux/arm/v6").unwrap();
        assert!(p.matches("linux", "arm", Some("v6")));
        assert!(!p.matches("linux", "arm", Some("v7")));
        assert!(
            !p.matches("linux", "arm", None),
            "arm without variant is v7"
        );

        let p = Platform::parse("linux/aarch64").unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(p.matches("linux", "arm64", None));

        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            let e = Platform::parse(bad).unwrap_err();
            assert_eq!(e.code(), protocol::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn chain_ids_as_containerd_computes_them() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b'), d('c')]);
        assert_eq!(ids[0], d('a'));
        let one = content::Digest::of(format!("{} {}", d('a'), d('b')).as_bytes()).to_string();
        assert_eq!(ids[1], one);
        let two = content::Digest::of(format!("{one} {}", d('c')).as_bytes()).to_string();
        assert_eq!(ids[2], two);
        assert!(chain_ids(&[]).is_empty());
    }
}
