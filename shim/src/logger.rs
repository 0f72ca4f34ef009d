//! The shim's log: containerd's log lines ([`protocol::logfmt`]) on stderr, which is the
//! bundle's `log` FIFO in serve mode, each with the shim's namespace, container id and runtime.
//!
//! containerd copies that FIFO into its own log. The FIFO is non-blocking on our side: when
//! nobody reads it (the daemon is down) a line is dropped instead of stalling the shim.

use log::LevelFilter;
use protocol::logfmt::Logger;

pub fn init(namespace: &str, id: &str, debug: bool) {
    Logger::new(&[])
        .with_field("namespace", namespace)
        .with_field("id", id)
        .with_field("runtime", "io.containerd.corral.v1")
        .install(if debug {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
}
