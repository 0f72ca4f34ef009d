//! The CRI socket: start-up (view recovered from corrald before anything is served), the
//! RuntimeService, ImageService and gRPC health services on a unix socket (mode 0660), and a
//! clean stop on SIGTERM/SIGINT that leaves every pod running.

mod image;
mod runtime;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use protocol::grpc::runtime::v1::image_service_server::ImageServiceServer;
use protocol::grpc::runtime::v1::runtime_service_server::RuntimeServiceServer;
use protocol::grpc::tonic::transport::Server;
use tokio::net::UnixListener;

use crate::config::Config;
use crate::core::Cri;

/// kubelet's (and ctr's) message limit.
const MAX_MESSAGE: usize = 16 << 20;

pub async fn serve(cfg: Config) -> Result<(), String> {
    for dir in [
        cfg.root.clone(),
        cfg.root.join("netns"),
        cfg.root.join("sandboxes"),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::set_permissions(&cfg.root, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("chmod {}: {e}", cfg.root.display()))?;
    let listen = cfg.listen.clone();
    let cri = Arc::new(Cri::new(cfg));

    // An empty view would tell kubelet its pods are gone: wait for corrald instead.
    let mut backoff = Duration::from_millis(100);
    loop {
        match cri.recover().await {
            Ok(()) => break,
            Err(e) if e.code == protocol::Code::Unavailable => {
                log::warn!("waiting for corrald: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("recover from corrald: {e}")),
        }
    }
    tokio::spawn(crate::monitor::run(cri.clone()));

    let listener = bind(&listen)?;
    let (health, serving) = protocol::grpc::health::Health::new(&[
        "runtime.v1.RuntimeService",
        "runtime.v1.ImageService",
    ]);
    let shutdown = async move {
        wait_for_signal().await;
        log::info!("shutting down; pods and containers keep running");
        serving.send_replace(false);
    };
    log::info!("serving CRI on {}", listen.display());
    let served = Server::builder()
        .add_service(
            RuntimeServiceServer::new(runtime::Runtime(cri.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(image::Images(cri.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(health.server())
        .serve_with_incoming_shutdown(protocol::grpc::unix::incoming(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&listen);
    served.map_err(|e| format!("serve: {e}"))
}

/// Binds the socket (mode 0660). A socket file left by a killed instance is replaced; one that
/// answers belongs to a running instance, which is an error.
fn bind(path: &std::path::Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is in use: another corral-cri is serving there",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| format!("listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(listener)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Logs to stderr, logrus-style, at `level`.
pub fn init_logging(level: &str) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) && r.target().starts_with("cri")
                || r.level() <= log::Level::Warn
            {
                let now = crate::corrald::now_nanos();
                eprintln!(
                    "time={}.{:09} level={} msg={:?}",
                    now / 1_000_000_000,
                    now % 1_000_000_000,
                    r.level().as_str().to_lowercase(),
                    r.args().to_string()
                );
            }
        }
        fn flush(&self) {}
    }
    let filter = match level {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "warn" | "warning" => log::LevelFilter::Warn,
        "error" | "fatal" | "panic" => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    };
    if log::set_boxed_logger(Box::new(Stderr)).is_ok() {
        log::set_max_level(filter);
    }
}

/// The client's deadline for this call (its `grpc-timeout`: up to 8 digits and a unit).
fn client_deadline(metadata: &protocol::grpc::tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs a long call (a pull) so that a client's deadline ends it with DeadlineExceeded, which
/// clients test for: tonic's own timer, which otherwise fires first, answers Cancelled. Ours
/// fires 20 ms before the client's deadline (it started a little later than tonic's); a pull
/// that would finish in those 20 ms loses nothing worth having.
async fn within_deadline<T>(
    deadline: Option<Duration>,
    what: &str,
    call: impl std::future::Future<Output = crate::error::Result<T>>,
) -> crate::error::Result<T> {
    let Some(d) = deadline else {
        return call.await;
    };
    match tokio::time::timeout(d.saturating_sub(Duration::from_millis(20)), call).await {
        Ok(r) => r,
        Err(_) => Err(crate::error::Error::new(
            protocol::Code::DeadlineExceeded,
            format!("{what}: the client's deadline of {d:?} passed"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = protocol::grpc::tonic::metadata::MetadataMap::new();
        assert_eq!(client_deadline(&m), None);
        for (v, want) in [
            ("1m", Some(Duration::from_millis(1))),
            ("30S", Some(Duration::from_secs(30))),
            ("2H", Some(Duration::from_secs(7200))),
            ("500u", Some(Duration::from_micros(500))),
            ("123456789m", None),
            ("m", None),
            ("5x", None),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(client_deadline(&m), want, "{v}");
        }
    }
}
