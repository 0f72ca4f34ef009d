//! Every line corrald, its shims and corral-cri log is containerd's (logrus text, RFC 3339
//! time with nine fractional digits):
//!
//! ```text
//! time="2026-12-06T01:02:03.123456789Z" level=info msg="serving on /run/corral/corral.sock"
//! ```
//!
//! corrald's log carries its shims' lines too (it copies each bundle's `log` FIFO, as
//! containerd does), so a container's life puts both in one file.

use integration::{Containerd, CriNode, Target, require_root};

/// `key=value` pairs of a logrus text line; values bare or Go-quoted. None if it is not one.
fn parse(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => {
                        let (_, c) = chars.next()?;
                        value.push('\\');
                        value.push(c);
                    }
                    (_, c) => value.push(c),
                }
            };
            (value, &quoted[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let bare = &after[..end];
            if !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c))
            {
                return None;
            }
            (bare.to_string(), &after[end..])
        };
        out.push((key.to_string(), value));
        rest = match after.strip_prefix(' ') {
            Some(r) => r,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(out)
}

/// `2026-12-06T01:02:03.123456789Z`
fn is_rfc3339_nanos(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 30
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..29)
        && b[29] == b'Z'
}

/// Panics naming the first line of `log` that is not containerd's format; returns the lines'
/// messages.
fn check_log(what: &str, log: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = Vec::new();
    for line in log.lines() {
        let fields = parse(line).unwrap_or_else(|| panic!("{what}: not logrus text: {line}"));
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            keys.len() >= 3 && keys[..3] == ["time", "level", "msg"],
            "{what}: {line}"
        );
        let mut rest = keys[3..].to_vec();
        rest.sort_unstable();
        assert_eq!(rest, keys[3..], "{what}: fields not sorted: {line}");
        assert!(is_rfc3339_nanos(&fields[0].1), "{what}: time: {line}");
        assert!(
            ["error", "warning", "info", "debug", "trace"].contains(&fields[1].1.as_str()),
            "{what}: level: {line}"
        );
        lines.push(fields);
    }
    assert!(!lines.is_empty(), "{what}: empty log");
    lines
}

fn field<'a>(line: &'a [(String, String)], key: &str) -> Option<&'a str> {
    line.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn corrald_and_shim_lines_are_containerds() {
    if !require_root() {
        return;
    }
    let d = Containerd::start(Target::CORRAL);
    let id = d.new_id("logfmt");
    let out = d.ctr_run(&["--rm"], &id, &["sh", "-c", "echo hi"]);
    assert!(out.success(), "{}", out.describe());
    let log = std::fs::read_to_string(d.log_path()).unwrap();
    let lines = check_log("corrald", &log);
    assert!(
        lines
            .iter()
            .any(|l| field(l, "msg").is_some_and(|m| m.starts_with("serving on "))),
        "no start-up line:\n{log}"
    );
    let shim = lines
        .iter()
        .find(|l| field(l, "runtime") == Some("io.containerd.corral.v1"))
        .unwrap_or_else(|| panic!("no shim line:\n{log}"));
    assert_eq!(field(shim, "namespace"), Some(d.namespace()), "{shim:?}");
    assert_eq!(field(shim, "id"), Some(id.as_str()), "{shim:?}");
}

#[test]
fn corral_cri_lines_are_containerds() {
    if !require_root() {
        return;
    }
    let node = CriNode::start();
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    let lines = check_log("corral-cri", &log);
    assert!(
        lines
            .iter()
            .any(|l| field(l, "msg").is_some_and(|m| m.starts_with("serving CRI on "))),
        "no start-up line:\n{log}"
    );
}

#[test]
fn the_checker_refuses_other_formats() {
    for bad in [
        "time=1796518923.123456789 level=info msg=\"x\"",
        "time=\"2026-12-06T01:02:03Z\" level=info msg=x",
        "level=info time=\"2026-12-06T01:02:03.123456789Z\" msg=x",
        "time=\"2026-12-06T01:02:03.123456789Z\" level=warn msg=x",
        "time=\"2026-12-06T01:02:03.123456789Z\" level=info msg=a b",
        "time=\"2026-12-06T01:02:03.123456789Z\" level=info msg=x b=1 a=2",
        "runc: something on stderr",
    ] {
        let r = std::panic::catch_unwind(|| check_log("test", bad));
        assert!(r.is_err(), "accepted: {bad}");
    }
    check_log(
        "test",
        "time=\"2026-12-06T01:02:03.123456789Z\" level=warning msg=\"a \\\"b\\\"\" id=c1 namespace=n",
    );
}
