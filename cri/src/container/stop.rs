//! StopContainer: the stop signal (the config's, else the image's, else SIGTERM), up to
//! `timeout` seconds for the container to exit, then SIGKILL. The exit is recorded before the
//! call returns, so the next ContainerStatus already says EXITED. Unknown, created and exited
//! containers are success (kubelet retries stops and stops what it is unsure of).

use std::str::FromStr;
use std::time::Duration;

use protocol::grpc::runtime::v1::{Signal, StopContainerRequest, StopContainerResponse};

use crate::core::Cri;
use crate::error::{Error, Result};
use crate::store::State;

const SIGKILL: u32 = 9;
const SIGTERM: u32 = 15;
/// How long a SIGKILLed container may take to be reported gone before we give up on it.
const KILL_GRACE: Duration = Duration::from_secs(60);

impl Cri {
    pub async fn stop_container(&self, r: StopContainerRequest) -> Result<StopContainerResponse> {
        let c = match self.store.find_container(&r.container_id) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(StopContainerResponse {}),
            Err(e) => return Err(e),
        };
        self.stop_container_with_timeout(&c.id, r.timeout.max(0))
            .await
            .map_err(|e| e.context(format!("stop container {}", c.id)))?;
        Ok(StopContainerResponse {})
    }

    /// Stops container `id` (which must exist in the view) within `timeout` seconds.
    pub async fn stop_container_with_timeout(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(c) = self.store.container(id) else {
            return Ok(());
        };
        if c.state() != State::Running {
            return Ok(());
        }
        if timeout > 0 {
            let signal = stop_signal(&c);
            if self.corrald.kill(id, "", signal, false).await? {
                let wait = self
                    .corrald
                    .wait(id, "", Duration::from_secs(timeout as u64));
                if let Some(exit) = wait.await.or_else(gone)? {
                    self.record_exit(id, exit).await?;
                    return Ok(());
                }
            }
        }
        // `all`: with the host's PID namespace, runc's kill reaches only the init, and its
        // children would outlive a stopped container.
        self.corrald.kill(id, "", SIGKILL, true).await?;
        match self.corrald.wait(id, "", KILL_GRACE).await.or_else(gone)? {
            Some(exit) => {
                self.record_exit(id, exit).await?;
                Ok(())
            }
            None => Err(Error::new(
                protocol::Code::DeadlineExceeded,
                format!("container {id} did not exit within {KILL_GRACE:?} of SIGKILL"),
            )),
        }
    }
}

/// A task that is gone by the time we wait has exited; its exit is in corrald's task record
/// if anywhere, which record_exit's caller (the event monitor) handles. Report a SIGKILL.
fn gone(e: Error) -> Result<Option<crate::corrald::Exit>> {
    if e.is_not_found() {
        Ok(Some(crate::corrald::Exit {
            status: 128 + SIGKILL,
            at: 0,
        }))
    } else {
        Err(e)
    }
}

/// The signal that asks this container to stop.
fn stop_signal(c: &crate::store::Container) -> u32 {
    let configured = c
        .record
        .config
        .as_ref()
        .map(|cfg| cfg.stop_signal)
        .and_then(|s| Signal::try_from(s).ok())
        .filter(|s| *s != Signal::RuntimeDefault)
        .map(|s| s.as_str_name().to_string());
    let name = configured.unwrap_or_else(|| c.record.stop_signal.clone());
    parse_signal(&name).unwrap_or(SIGTERM)
}

/// `SIGQUIT`, `QUIT` or `3`.
pub fn parse_signal(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    nix::sys::signal::Signal::from_str(&name.to_uppercase())
        .ok()
        .map(|sig| sig as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
