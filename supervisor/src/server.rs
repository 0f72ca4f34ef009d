//! Wiring: open the state, bind the socket, serve every service until SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::grpc::containerd::services::diff::v1::diff_server::DiffServer;
use protocol::grpc::containerd::services::events::v1::events_server::EventsServer;
use protocol::grpc::containerd::services::images::v1::images_server::ImagesServer;
use protocol::grpc::containerd::services::introspection::v1::introspection_server::IntrospectionServer;
use protocol::grpc::containerd::services::namespaces::v1::namespaces_server::NamespacesServer;
use protocol::grpc::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use protocol::grpc::containerd::services::version::v1::version_server::VersionServer;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::events::Exchange;
use crate::metadata::Db;
use crate::services::{
    Daemon, Shared, diff, images, introspection, namespaces, snapshots, version,
};

/// Serves until SIGTERM or SIGINT. `notifier`: systemd's, told READY=1 once the socket serves
/// and STOPPING=1 at shutdown (units ordered after corrald start on READY=1).
pub async fn run(
    cfg: Config,
    notifier: Option<protocol::sd_notify::Notifier>,
) -> Result<(), String> {
    let _lock = crate::daemon::lock_root(&cfg.root)?;
    std::fs::create_dir_all(&cfg.state)
        .map_err(|e| format!("create state {}: {e}", cfg.state.display()))?;
    // The stores open side by side: each open syncs its redb file a few times (more after a
    // crash, when redb repairs it), which in a row made up most of a restart. The native
    // snapshotter opens when first used (see `lazy_snapshotter`).
    let overlay_root = cfg.root.join("io.containerd.snapshotter.v1.overlayfs");
    let meta_path = cfg.root.join("meta.redb");
    let (db, content, overlay) = std::thread::scope(|s| {
        let content = s.spawn(|| {
            content::LocalStore::open(cfg.root.join("io.containerd.content.v1.content"))
                .map_err(|e| format!("content store: {e}"))
        });
        let overlay = s.spawn(|| snapshotter::OverlaySnapshotter::open(&overlay_root));
        let db = Db::open(&meta_path).map_err(|e| match e {
            crate::metadata::Error::Open(durable::OpenError::Damaged { .. }) => format!(
                "{e}. corrald does not start on a damaged metadata database: it would forget \
                 the images and containers whose data is still under {root}. Restore {path} \
                 from a backup, or move it aside (mv {path} {path}.damaged) to start over with \
                 no images and no containers (running containers are then stopped, and \
                 content and snapshots nothing refers to are garbage-collected).",
                root = cfg.root.display(),
                path = meta_path.display(),
            ),
            e => e.to_string(),
        });
        let joined = |what: &str| format!("opening the {what} panicked");
        (
            db,
            content.join().map_err(|_| joined("content store")),
            overlay.join().map_err(|_| joined("overlayfs snapshotter")),
        )
    });
    let (db, content) = (db?, content??);
    let mut snapshotters: BTreeMap<String, Arc<dyn snapshotter::Snapshotter>> = BTreeMap::new();
    match overlay? {
        Ok(s) => {
            snapshotters.insert("overlayfs".into(), Arc::new(s));
        }
        // Damaged or unreadable state is not "overlay is unsupported here": starting without
        // the snapshotter would hide every image unpacked with it.
        Err(e @ (snapshotter::Error::Open(_) | snapshotter::Error::Locked { .. })) => {
            return Err(snapshotter_refused("overlayfs", &overlay_root, e));
        }
        // A host without overlay still gets the native snapshotter.
        Err(e) => log::warn!("overlayfs snapshotter unavailable: {e}"),
    }
    snapshotters.insert(
        "native".into(),
        Arc::new(crate::lazy_snapshotter::LazySnapshotter::new(
            cfg.root.join("io.containerd.snapshotter.v1.native"),
            "metadata.redb",
            |root| Ok(Box::new(snapshotter::NativeSnapshotter::open(root)?)),
        )),
    );
    let daemon = Arc::new(Daemon {
        db,
        events: Exchange::default(),
        root: cfg.root.clone(),
        content: Arc::new(content),
        snapshotters,
        gc: Default::default(),
    });
    let runtime = Arc::new(crate::runtime::Manager::new(
        &cfg.root,
        &cfg.state,
        crate::runtime::binary::ShimEnv {
            address: cfg.grpc.address.clone(),
            ttrpc_address: cfg.ttrpc_address(),
            publish_binary: std::env::current_exe()
                .unwrap_or_else(|_| std::path::PathBuf::from("corrald")),
            debug: matches!(cfg.debug.level.as_str(), "debug" | "trace"),
        },
        cfg.runtime.clone(),
        daemon.events.clone(),
    ));
    tokio::spawn(crate::trim::run());
    // Damaged content is found and reported before anything is served (and before GC runs).
    {
        let d = daemon.clone();
        let started = std::time::Instant::now();
        if let Ok(r) =
            tokio::task::spawn_blocking(move || crate::integrity::check_at_startup(&d)).await
        {
            log::info!(
                "content check: {} blobs, {} damaged, {} images affected, in {} ms",
                r.checked,
                r.damaged.len(),
                r.images.len(),
                started.elapsed().as_millis()
            );
        }
    }
    crate::gc::spawn_timer(
        daemon.clone(),
        std::time::Duration::from_secs(cfg.gc.interval_secs),
    );
    let listener = crate::daemon::bind_socket(&cfg.grpc.address, cfg.grpc.gid)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
    daemon
        .events
        .set_tasks_dir(cfg.state.join(crate::runtime::PLUGIN_DIR));
    // Until start-up has found out whether there are tasks, hold their events for clients that
    // will subscribe again (shims deliver what they saw during an outage as soon as they can).
    daemon.events.hold_outage_events(crate::events::HOLD_WINDOW);
    // Shims forward their events here (TTRPC_ADDRESS); it lives and dies with the gRPC socket.
    let ttrpc =
        match crate::ttrpc_events::TtrpcEvents::start(&cfg.ttrpc_address(), daemon.events.clone())
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&cfg.grpc.address);
                return Err(e);
            }
        };
    // When the previous corrald was last alive, then our own heartbeat from now on.
    let last_alive = crate::daemon::last_alive(&cfg.state);
    {
        let state = cfg.state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::daemon::ALIVE_INTERVAL);
            loop {
                tick.tick().await;
                let s = state.clone();
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || crate::daemon::touch_alive(&s)).await
                {
                    log::warn!("heartbeat {}: {e}", state.display());
                }
            }
        });
    }
    // Before serving: every task is found again by asking its shim (shims forward events to
    // the ttrpc socket above, which is up by now).
    if runtime.load(&daemon.db, last_alive).await == 0 {
        // A fresh start: no client was subscribed to a task of ours, nothing to hold.
        daemon.events.stop_holding();
    }
    daemon.events.serving();
    // Opening the databases and finding the tasks again peaks at several MB that are free by
    // now; an idle daemon should not keep them.
    crate::trim::soon();

    // SERVING from here until shutdown begins: dockerd and containerd's Go client poll it
    // before they subscribe to events again after a daemon restart.
    let (router, serving) = router(&daemon, &runtime, &cfg)?;

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let events = daemon.events.clone();
    let stopping = notifier.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
        if let Some(n) = &stopping {
            n.tell("STOPPING=1");
        }
        serving.send_replace(false);
        events.close();
    };
    log::info!(
        "serving on {} (root {}, state {})",
        cfg.grpc.address.display(),
        cfg.root.display(),
        cfg.state.display()
    );
    // The socket has been listening since it was bound (connections wait in its backlog),
    // start-up is over: ready.
    if let Some(n) = &notifier {
        n.tell("READY=1");
    }
    let served = router
        .serve_with_incoming_shutdown(protocol::grpc::unix::incoming(listener), shutdown)
        .await;
    ttrpc.shutdown().await;
    let _ = std::fs::remove_file(&cfg.grpc.address);
    served.map_err(|e| format!("serve: {e}"))
}

/// Every gRPC service corrald serves, on `daemon` and `runtime`, with the configured message
/// limits; and the health service's switch (SERVING until it is set to false). The
/// hostile-input harness serves the same router.
pub fn router(
    daemon: &Shared,
    runtime: &Arc<crate::runtime::Manager>,
    cfg: &Config,
) -> Result<
    (
        tonic::transport::server::Router<protocol::grpc::limits::SizeErrorLayers>,
        tokio::sync::watch::Sender<bool>,
    ),
    String,
> {
    let (health, serving) = protocol::grpc::health::Health::new(&[]);
    let limits = cfg.message_limits()?;
    // Every service with the configured message limits (containerd's `[grpc]` keys).
    macro_rules! limited {
        ($server:expr) => {
            $server
                .max_decoding_message_size(limits.recv)
                .max_encoding_message_size(limits.send)
        };
    }
    let router = tonic::transport::Server::builder()
        // Past a limit: ResourceExhausted with grpc-go's message, as containerd answers.
        .layer(protocol::grpc::limits::SizeErrorLayer)
        .add_service(health.server())
        .add_service(limited!(VersionServer::new(version::VersionService)))
        .add_service(limited!(crate::services::content::server(daemon.clone())))
        .add_service(limited!(crate::services::leases::server(daemon.clone())))
        .add_service(limited!(SnapshotsServer::new(
            snapshots::SnapshotsService::new(daemon.clone())
        )))
        .add_service(limited!(DiffServer::new(diff::DiffService {
            daemon: daemon.clone(),
        })))
        .add_service(limited!(crate::services::tasks::server(
            daemon.clone(),
            runtime.clone()
        )))
        .add_service(limited!(crate::services::containers::server(
            daemon.clone()
        )))
        .add_service(limited!(ImagesServer::new(images::ImagesService {
            daemon: daemon.clone(),
        })))
        .add_service(limited!(crate::services::transfer::server(
            daemon.clone(),
            cfg.registry.settings(),
        )))
        .add_service(limited!(IntrospectionServer::new(
            introspection::IntrospectionService {
                daemon: daemon.clone(),
                default_runtime: cfg.runtime.default.clone(),
            },
        )))
        .add_service(limited!(NamespacesServer::new(
            namespaces::NamespacesService {
                daemon: daemon.clone(),
            }
        )))
        .add_service(limited!(EventsServer::new(
            crate::services::events::EventsService {
                daemon: daemon.clone(),
            }
        )));
    Ok((router, serving))
}

/// The start-up error for a snapshotter whose state cannot be opened; a damaged database
/// says what to do about it.
fn snapshotter_refused(name: &str, root: &std::path::Path, e: snapshotter::Error) -> String {
    match e {
        snapshotter::Error::Open(durable::OpenError::Damaged { .. }) => format!(
            "{name} snapshotter: {e}. corrald does not start on it: it would forget the \
             snapshots still under {root}. Restore the file from a backup, or move the \
             snapshotter's directory aside (mv {root} {root}.damaged) to start without its \
             snapshots (images unpacked with it must then be removed and pulled again).",
            root = root.display(),
        ),
        e => format!("{name} snapshotter: {e}"),
    }
}

/// Logs corrald's lines (and other crates' warnings) to stderr at `level`, in containerd's
/// format ([`protocol::logfmt`]).
pub fn init_logging(level: &str) {
    protocol::logfmt::Logger::new(&["supervisor"]).install(protocol::logfmt::parse_level(level));
}
