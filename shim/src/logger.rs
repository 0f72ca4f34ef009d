//! The shim's log: logrus-style lines on stderr, which is the bundle's `log` FIFO in serve mode.
//!
//! containerd copies that FIFO into its own log. The FIFO is non-blocking on our side: when
//! nobody reads it (the daemon is down) a line is dropped instead of stalling the shim.

use std::io::Write;

use log::{Level, LevelFilter, Metadata, Record};

struct Logger {
    namespace: String,
    id: String,
}

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let msg = format!("{}", r.args()).replace('"', "\\\"");
        let line = format!(
            "time=\"{}\" level={level} msg=\"{msg}\" namespace={} id={} runtime=io.containerd.corral.v1\n",
            rfc3339(crate::util::now()),
            self.namespace,
            self.id
        );
        // One write per line keeps lines whole in the FIFO (writes under PIPE_BUF are atomic).
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// `2006-01-02T15:04:05.000000000Z`, as logrus prints it (UTC).
fn rfc3339(t: protobuf::well_known_types::timestamp::Timestamp) -> String {
    let secs = t.seconds.max(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.nanos
    )
}

pub fn init(namespace: &str, id: &str, debug: bool) {
    let logger = Logger {
        namespace: namespace.to_string(),
        id: id.to_string(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(if debug {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let mut t = protobuf::well_known_types::timestamp::Timestamp::new();
        t.seconds = 1_795_810_577;
        t.nanos = 955_162_112;
        assert_eq!(rfc3339(t.clone()), "2026-11-27T20:16:17.955162112Z");
        t.seconds = 951_782_400; // a leap day
        t.nanos = 0;
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }
}
