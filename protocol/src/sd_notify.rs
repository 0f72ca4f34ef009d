//! systemd's readiness protocol (`sd_notify(3)`), for corrald and corral-cri under
//! `Type=notify` units: `READY=1` once serving, `STOPPING=1` when shutting down.
//!
//! systemd passes a datagram socket in `NOTIFY_SOCKET` (a path, or an abstract name written
//! `@name`). [`Notifier::from_env`] takes it out of the environment: everything a daemon starts
//! inherits its environment, and runc, given `NOTIFY_SOCKET`, hands it to the container and
//! makes `runc start` wait until the container itself reports ready (go-runc, under containerd,
//! filters it out for the same reason). Outside systemd there is no socket and nothing is sent.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where to send notifications, taken from the environment at start-up.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: OsString,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` out of the environment; None when it was not set.
    ///
    /// # Safety
    ///
    /// Changes the process environment: call it before any other thread exists (first thing
    /// in `main`), as `std::env::remove_var` requires.
    pub unsafe fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os(NOTIFY_SOCKET)?;
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::remove_var(NOTIFY_SOCKET) };
        (!socket.is_empty()).then_some(Notifier { socket })
    }

    /// A notifier for `socket` (a path, or `@name` for an abstract socket).
    pub fn new(socket: impl Into<OsString>) -> Notifier {
        Notifier {
            socket: socket.into(),
        }
    }

    /// Sends `state` (e.g. `READY=1`, or several `KEY=value` lines) in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = self.socket.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(&self.socket))?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    }

    /// [`Notifier::notify`], logging instead of failing: a daemon keeps serving whether or not
    /// systemd heard it.
    pub fn tell(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            log::warn!(
                "sd_notify {state:?} to {}: {e}",
                self.socket.to_string_lossy()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::new(&path).notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("corral-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        Notifier::new(format!("@{name}"))
            .notify("STOPPING=1")
            .unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = Notifier::new(dir.path().join("none"))
            .notify("READY=1")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
