//! A private OCI distribution registry for a test, and a minimal client to push images into it.
//!
//! [`Registry::start`] runs Debian's `docker-registry` (distribution 2.8) on `127.0.0.1:<free
//! port>` with filesystem storage in a tempdir and no auth, and waits until `GET /v2/` answers.
//! On drop the registry is killed and its storage removed. [`Registry::start_with`] can serve
//! HTTPS (a certificate from [`crate::certs`], client certificates required if asked) and can
//! serve another registry's storage, which is how a test fills an HTTPS registry: push to a
//! plain one, serve its storage over TLS. [`Registry::push`] uploads blobs
//! monolithically (`POST /v2/<name>/blobs/uploads/`, then `PUT <location>&digest=…`) and puts the
//! manifest by tag. The HTTP/1.1 client is the smallest that works against it: one request per
//! connection (`Connection: close`), Content-Length bodies, chunked responses decoded.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{cmd, wait_until};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry binary: `$CORRAL_REGISTRY_BIN` or `/usr/bin/docker-registry`.
pub fn registry_path() -> PathBuf {
    std::env::var_os("CORRAL_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// How to run a registry beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: require client certificates issued by this CA.
    pub client_ca: Option<PathBuf>,
    /// Serve this storage directory (another registry's [`Registry::storage`]) instead of a
    /// new one.
    pub storage: Option<PathBuf>,
}

/// A running registry; killed on drop.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    /// Config, log and (unless shared) storage; removed on drop.
    _dir: tempfile::TempDir,
    storage: PathBuf,
    tls: bool,
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Registry {
    /// Starts a registry on a free local port. Panics with its log if it does not come up.
    pub fn start() -> Registry {
        Registry::start_with(Options::default())
    }

    /// Starts a registry as `opts` say (see [`Options`]).
    pub fn start_with(opts: Options) -> Registry {
        let bin = registry_path();
        assert!(
            bin.is_file(),
            "{} not found (apt-get install docker-registry, or set CORRAL_REGISTRY_BIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("registry-it-")
            .tempdir()
            .expect("cannot create a temp dir for the registry");
        // A port that was free a moment ago; the registry fails loudly if someone took it since.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port")
            .port();
        let config = dir.path().join("config.yml");
        let storage = opts
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("storage"));
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = &opts.tls {
            text.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if let Some(ca) = &opts.client_ca {
                text.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        std::fs::write(&config, text).expect("cannot write the registry config");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("cannot create the registry log");
        let log2 = log.try_clone().expect("cannot dup the registry log");
        let mut c = Command::new(&bin);
        c.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        cmd::die_with_parent(&mut c);
        let child = c.spawn().expect("cannot start docker-registry");
        let mut me = Registry {
            child: Some(child),
            port,
            _dir: dir,
            storage,
            tls: opts.tls.is_some(),
        };
        wait_until("the registry answers", START_TIMEOUT, || {
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                panic!(
                    "docker-registry exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if me.tls {
                // Our client speaks no TLS: a listening port is what can be checked (the
                // registry listens only once its certificate is loaded).
                return TcpStream::connect(("127.0.0.1", me.port)).ok().map(|_| ());
            }
            me.request("GET", "/v2/", &[], &[])
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ())
        });
        me
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the registry host part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps its blobs and repositories.
    pub fn storage(&self) -> PathBuf {
        self.storage.clone()
    }

    /// One HTTP/1.1 request on a fresh connection; `path` is absolute (`/v2/…`). Plain HTTP
    /// registries only.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        if self.tls {
            return Err(invalid(
                "this registry serves HTTPS: push to a plain one and serve its storage",
            ));
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.host(),
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        parse_response(&raw)
    }

    /// Uploads `blob` to repository `name` (monolithic upload); returns its digest.
    pub fn push_blob(&self, name: &str, blob: &[u8]) -> io::Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
        let r = self.request("POST", &format!("/v2/{name}/blobs/uploads/"), &[], &[])?;
        expect_status(&r, 202, "start a blob upload")?;
        let location = r
            .header("location")
            .ok_or_else(|| invalid("upload answer has no Location"))?;
        // The Location may be absolute; keep path and query.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            blob,
        )?;
        expect_status(&r, 201, &format!("upload blob {digest}"))?;
        Ok(digest)
    }

    /// Pushes `blobs` and then `manifest` (of `media_type`) as `<name>:<tag>`.
    pub fn push(
        &self,
        name: &str,
        tag: &str,
        blobs: &[&[u8]],
        manifest: &[u8],
        media_type: &str,
    ) -> io::Result<()> {
        for b in blobs {
            self.push_blob(name, b)?;
        }
        let r = self.request(
            "PUT",
            &format!("/v2/{name}/manifests/{tag}"),
            &[("Content-Type", media_type)],
            manifest,
        )?;
        expect_status(&r, 201, &format!("put manifest {name}:{tag}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn expect_status(r: &Response, want: u16, what: &str) -> io::Result<()> {
    if r.status == want {
        return Ok(());
    }
    Err(invalid(format!(
        "{what}: HTTP {} (wanted {want}): {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    )))
}

/// Parses a complete response read until the server closed the connection.
fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("HTTP response without end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("non-UTF-8 HTTP headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad HTTP status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, v)) => {
                let n: usize = v.parse().map_err(|_| invalid("bad Content-Length"))?;
                rest.get(..n)
                    .ok_or_else(|| invalid("HTTP body shorter than Content-Length"))?
                    .to_vec()
            }
            None => rest.to_vec(),
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size"))?;
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| invalid("bad chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nLocation: /x?a=1\r\nContent-Length: 2\r\n\r\nokEXTRA",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.header("location"), &r.body[..]),
            (201, Some("/x?a=1"), &b"ok"[..])
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
