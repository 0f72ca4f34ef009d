//! Image references and platforms: what a pull is asked for, normalised as containerd does.
//!
//! References follow the docker/distribution grammar (parsed by `oci_client::Reference`);
//! Docker Hub short names are expanded: `busybox` → `docker.io/library/busybox:latest`,
//! `foo/bar` → `docker.io/foo/bar:latest`; a reference with neither tag nor digest gets
//! `:latest`. The normalised string is the image record's name.

use oci_client::Reference;

use super::Error;

/// A parsed, normalised reference.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// What the registry client resolves (tag or digest, registry, repository).
    pub oci: Reference,
    /// The normalised name: `docker.io/library/busybox:latest`, `host:5000/x@sha256:…`.
    pub name: String,
}

impl ImageRef {
    /// The registry as named in the reference (`docker.io`, `127.0.0.1:5000`): the key for
    /// the hosts directory, the insecure list and the `containerd.io/distribution.source.<host>`
    /// label.
    pub fn host(&self) -> &str {
        self.oci.registry()
    }

    /// The host the requests go to (`index.docker.io` for `docker.io`).
    pub fn endpoint(&self) -> &str {
        self.oci.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.oci.repository()
    }
}

/// Parses and normalises `s`. InvalidArgument naming `s` if it is not a reference.
pub fn parse(s: &str) -> Result<ImageRef, Error> {
    let bad = |reason: String| Error::BadReference {
        reference: s.to_string(),
        reason,
    };
    if s.trim() != s || s.is_empty() {
        return Err(bad("empty or surrounded by white space".into()));
    }
    // `scheme://` is a URL, not a reference (the grammar would read `scheme` as a host).
    if s.contains("://") {
        return Err(bad("a reference has no URL scheme".into()));
    }
    let mut oci: Reference = s.parse().map_err(|e| bad(format!("{e}")))?;
    // docker/distribution's splitDockerDomain also takes a first component with upper-case
    // letters for a host (repository names are lower case, host names are not); oci-spec's
    // port of it does not, and named `UPPER/x` `docker.io/UPPER/x:latest`, which no client
    // parses back.
    if let Some((first, _)) = s.split_once('/')
        && first.bytes().any(|b| b.is_ascii_uppercase())
        && !first.contains(['.', ':'])
        && first != "localhost"
        && let Some(repository) = oci.repository().strip_prefix(&format!("{first}/"))
    {
        let (registry, repository) = (first.to_string(), repository.to_string());
        oci = match (oci.tag(), oci.digest()) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
            (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
        };
    }
    let name = oci.whole();
    Ok(ImageRef { oci, name })
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
        assert_eq!((r.host(), r.oci.tag()), ("host:5000", None));
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
