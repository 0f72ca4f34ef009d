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
        let now = crate::util::now();
        let msg = format!("{}", r.args()).replace('"', "\\\"");
        let line = format!(
            "time=\"{}.{:09}\" level={level} msg=\"{msg}\" namespace={} id={} runtime=io.containerd.corral.v1\n",
            now.seconds, now.nanos, self.namespace, self.id
        );
        // One write per line keeps lines whole in the FIFO (writes under PIPE_BUF are atomic).
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
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
