//! Serve mode: the long-lived shim process.
//!
//! A child subreaper with one reaper, a ttrpc server on the socket `start` bound (fd 3), an
//! event publisher, and the task service. It keeps serving when the daemon goes away and
//! accepts new connections at any time; it exits after Shutdown once no container is left
//! (or on SIGTERM/SIGINT), removing its socket and flushing its events for up to 5 s.

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::events::Publisher;
use crate::flags::Flags;
use crate::reaper::Reaper;
use crate::service::Service;
use crate::{logger, start};

pub fn serve(flags: &Flags) -> Result<(), String> {
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "become child subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    redirect_stderr_to_log_fifo();
    logger::init(&flags.namespace, &flags.id, flags.debug);
    if !flags.unknown.is_empty() {
        log::warn!("ignoring unknown flags: {:?}", flags.unknown);
    }
    let listener = match &flags.socket {
        Some(addr) => {
            UnixListener::bind(start::socket_path(addr)).map_err(|e| format!("bind {addr}: {e}"))?
        }
        // SAFETY: `start` passes the bound socket as fd 3 and nothing else uses fd 3.
        None => unsafe { UnixListener::from_raw_fd(3) },
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(run(flags, listener))
}

async fn run(flags: &Flags, listener: UnixListener) -> Result<(), String> {
    let (reaper, exits) = Reaper::new();
    tokio::spawn(reaper.clone().run());
    let events = Publisher::new(&flags.namespace);
    tokio::spawn(events.clone().run(flags.ttrpc_address.clone()));
    let shutdown = Arc::new(Notify::new());
    let service = Service::new(&flags.namespace, reaper, events.clone(), shutdown.clone());
    tokio::spawn(service.clone().run_exits(exits));

    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener.into())
        .register_service(protocol::bad_payloads_are_invalid_argument(
            protocol::shim_ttrpc::create_task(service),
        ));
    server
        .start()
        .await
        .map_err(|e| format!("start ttrpc server: {e}"))?;
    log::info!("serving");

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = shutdown.notified() => log::info!("shutdown requested and no container left"),
        _ = term.recv() => log::info!("SIGTERM"),
        _ = int.recv() => log::info!("SIGINT"),
    }
    // Let the Shutdown response reach the daemon before the connections close.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown()).await;
    remove_socket();
    if !events.flush(Duration::from_secs(5)).await {
        log::warn!("{} events not delivered at exit", events.len());
    }
    Ok(())
}

/// Removes our socket, found through the bundle's `address` file (cwd is the bundle).
pub fn remove_socket() {
    if let Ok(address) = std::fs::read_to_string("address") {
        let _ = std::fs::remove_file(start::socket_path(address.trim()));
    }
}

/// In serve mode stderr is the bundle's `log` FIFO, opened non-blocking so a daemon that is
/// down (no reader, full FIFO) never stalls the shim. Without the FIFO, stderr stays null.
fn redirect_stderr_to_log_fifo() {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    else {
        return;
    };
    // SAFETY: dup2 onto fd 2; `f` is closed afterwards, fd 2 keeps the FIFO open.
    unsafe {
        libc::dup2(f.as_raw_fd(), 2);
    }
}
