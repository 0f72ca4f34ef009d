//! containerd's log line format, for corrald, corral-cri and the shim alike.
//!
//! containerd logs through logrus' text formatter with full RFC 3339 timestamps at a fixed nine
//! fractional digits (its `log.RFC3339NanoFixed`), and tools that read a node's logs (journald
//! queries, log shippers' logfmt parsers, `grep level=error`) expect exactly that shape:
//!
//! ```text
//! time="2026-12-06T01:02:03.123456789Z" level=info msg="serving on /run/corral/corral.sock"
//! time="2026-12-06T01:02:03.200000000Z" level=warning msg=oops id=c1 namespace=k8s.io
//! ```
//!
//! The rules are logrus': `time`, `level` and `msg` first, then the other fields sorted by key;
//! a value is written bare when it is made only of `[A-Za-z0-9-._/@^+]` and quoted as Go's `%q`
//! otherwise (so a timestamp is always quoted and an empty message is `msg=`). Levels are
//! logrus' names (`warning`, not `warn`). Times are UTC (`Z`), where containerd writes the local
//! offset; both are RFC 3339.
//!
//! [`Logger`] writes such lines to stderr, one `write` per line, so lines stay whole when stderr
//! is a pipe or a FIFO shared with other writers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Metadata, Record};

/// `t` as RFC 3339 in UTC with nine fractional digits: `2026-12-06T01:02:03.123456789Z`.
/// Times before 1970 print as the epoch (no clock of ours goes there).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339_parts(d.as_secs() as i64, d.subsec_nanos())
}

/// [`rfc3339`] of `seconds` and `nanos` since the epoch (a protobuf `Timestamp`'s fields).
pub fn rfc3339_parts(seconds: i64, nanos: u32) -> String {
    let secs = seconds.max(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(secs / 86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        nanos.min(999_999_999)
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds) of `secs` since the epoch, as containerd
/// writes times in labels and ctr prints them.
pub fn rfc3339_seconds(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date (year, month, day) of a count of days since 1970-01-01 (days
/// may be negative; Howard Hinnant's `civil_from_days`): the year is shifted to start in March,
/// so the leap day is the last day of its year and each 400-year era has the same 146097 days.
/// Every RFC 3339 time corral writes (logs, CRI logs, labels, the CLI) is dated with this.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of the proleptic Gregorian date `year-month-day`: the inverse of
/// [`civil_from_days`] (Howard Hinnant's `days_from_civil`, the same March-based year). Every
/// RFC 3339 time corral reads (GC expiry labels, tests of CRI logs) is counted with this.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // year of era, 0..=399
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1; // day of the March-based year
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // day of era
    era * 146_097 + doe - 719_468
}

/// logrus' name of a level.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The filter for a configured level name (`[debug] level` in the daemons' configs; logrus'
/// names and `warn`). Anything else is `info`, the default.
pub fn parse_level(name: &str) -> LevelFilter {
    match name {
        "trace" => LevelFilter::Trace,
        "debug" => LevelFilter::Debug,
        "warn" | "warning" => LevelFilter::Warn,
        "error" | "fatal" | "panic" => LevelFilter::Error,
        _ => LevelFilter::Info,
    }
}

/// Whether logrus would quote `s`: anything outside `[A-Za-z0-9-._/@^+]`.
fn needs_quoting(s: &str) -> bool {
    !s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+'))
}

/// Appends `s` as Go's `strconv.Quote` writes it: in double quotes, with `"` and `\` escaped,
/// the usual control characters as `\n`, `\t`, ..., other ASCII controls as `\xNN` and other
/// non-printable characters as `\uNNNN` / `\UNNNNNNNN`.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                if (c as u32) <= 0xffff {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_value(out: &mut String, s: &str) {
    if needs_quoting(s) {
        push_quoted(out, s);
    } else {
        out.push_str(s);
    }
}

/// One log line, newline included: `time=... level=... msg=...` then `fields` sorted by key.
pub fn line(time: SystemTime, level: Level, msg: &str, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(64 + msg.len());
    out.push_str("time=");
    push_quoted(&mut out, &rfc3339(time));
    out.push_str(" level=");
    out.push_str(level_name(level));
    out.push_str(" msg=");
    push_value(&mut out, msg);
    let mut sorted: Vec<&(&str, &str)> = fields.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    for (k, v) in sorted {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        push_value(&mut out, v);
    }
    out.push('\n');
    out
}

/// A `log` backend writing [`line`]s to stderr.
pub struct Logger {
    /// Crates (log targets' first path segment) whose lines are written at every enabled
    /// level. Lines of other crates (dependencies: h2, hyper, ...) are written from `warn`
    /// up only. Empty: every crate at every enabled level.
    own_targets: Vec<String>,
    /// Written after `msg` on every line (the shim's `namespace`, `id`, `runtime`).
    fields: Vec<(String, String)>,
}

impl Logger {
    /// Lines of `own_targets` at every enabled level, other crates' from `warn` up.
    pub fn new(own_targets: &[&str]) -> Logger {
        Logger {
            own_targets: own_targets.iter().map(|t| t.to_string()).collect(),
            fields: Vec::new(),
        }
    }

    /// Adds `key=value` to every line.
    pub fn with_field(mut self, key: &str, value: &str) -> Logger {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    /// Installs this logger with `level` as the maximum level. A second call (tests) keeps
    /// the first logger.
    pub fn install(self, level: LevelFilter) {
        if log::set_boxed_logger(Box::new(self)).is_ok() {
            log::set_max_level(level);
        }
    }

    fn own(&self, target: &str) -> bool {
        let krate = target.split("::").next().unwrap_or(target);
        self.own_targets.is_empty() || self.own_targets.iter().any(|t| t == krate)
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level() && (m.level() <= Level::Warn || self.own(m.target()))
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let fields: Vec<(&str, &str)> = self
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let text = line(SystemTime::now(), r.level(), &r.args().to_string(), &fields);
        // One write per line: whole lines in a pipe or FIFO (writes up to PIPE_BUF are
        // atomic). A full or closed stderr loses the line rather than stopping the caller.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        // Four 400-year eras around the epoch, every day: leap days, century years, negatives.
        for days in -292_194..292_194 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn civil_dates_round_trip_over_centuries() {
        // Walk day by day from 1969 to 2401 and check the calendar by counting.
        let mut expected = (1969i64, 1u32, 1u32);
        let days_in = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        for days in -365..(432 * 365 + 105) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            expected = if d < days_in(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamps_are_rfc3339_with_nine_digits() {
        assert_eq!(
            rfc3339(at(1_795_810_577, 955_162_112)),
            "2026-11-27T20:16:17.955162112Z"
        );
        assert_eq!(
            rfc3339(at(951_782_400, 0)),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339(at(0, 5)), "1970-01-01T00:00:00.000000005Z");
        assert_eq!(rfc3339_parts(-5, 0), "1970-01-01T00:00:00.000000000Z");
        // The last second of a year and the first of the next.
        assert_eq!(
            rfc3339(at(1_798_761_599, 0)),
            "2026-12-31T23:59:59.000000000Z"
        );
        assert_eq!(
            rfc3339(at(1_798_761_600, 0)),
            "2027-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn lines_are_logrus_text() {
        let t = at(1_796_518_923, 123_456_789); // 2026-12-06T01:02:03.123456789Z
        assert_eq!(
            line(t, Level::Info, "serving on /run/corral/corral.sock", &[]),
            "time=\"2026-12-06T01:02:03.123456789Z\" level=info \
             msg=\"serving on /run/corral/corral.sock\"\n"
        );
        // Bare values where logrus writes them bare; fields sorted by key.
        assert_eq!(
            line(
                t,
                Level::Warn,
                "oops",
                &[("namespace", "k8s.io"), ("id", "c 1"), ("runtime", "")]
            ),
            "time=\"2026-12-06T01:02:03.123456789Z\" level=warning msg=oops id=\"c 1\" \
             namespace=k8s.io runtime=\n"
        );
        assert!(line(t, Level::Error, "", &[]).ends_with(" level=error msg=\n"));
    }

    #[test]
    fn quoting_is_gos() {
        let q = |s: &str| {
            let mut out = String::new();
            push_quoted(&mut out, s);
            out
        };
        assert_eq!(q(r#"say "hi" \ bye"#), r#""say \"hi\" \\ bye""#);
        assert_eq!(
            q("a\nb\tc\r\u{7}\u{0}\u{1b}\u{7f}"),
            r#""a\nb\tc\r\a\x00\x1b\x7f""#
        );
        assert_eq!(q("héllo ✓"), "\"héllo ✓\"");
        assert_eq!(q("\u{85}\u{2028}"), r#""\u0085\u2028""#);
        for bare in ["abc", "a-b.c_d/e@f^g+h", "0123"] {
            assert!(!needs_quoting(bare), "{bare}");
        }
        for quoted in ["a b", "a=b", "x:y", "é", "\"", ""] {
            assert_eq!(needs_quoting(quoted), !quoted.is_empty(), "{quoted:?}");
        }
    }

    #[test]
    fn levels_parse_as_the_configs_name_them() {
        assert_eq!(parse_level("warn"), LevelFilter::Warn);
        assert_eq!(parse_level("warning"), LevelFilter::Warn);
        assert_eq!(parse_level("debug"), LevelFilter::Debug);
        assert_eq!(parse_level("info"), LevelFilter::Info);
        assert_eq!(parse_level("nonsense"), LevelFilter::Info);
        assert_eq!(level_name(Level::Warn), "warning");
    }

    #[test]
    fn own_crates_log_at_every_level_others_from_warn() {
        let l = Logger::new(&["supervisor"]);
        assert!(l.own("supervisor::runtime::shim"));
        assert!(l.own("supervisor"));
        assert!(!l.own("supervisor_x"));
        assert!(!l.own("h2::proto"));
        assert!(Logger::new(&[]).own("anything"));
    }
}
