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

/// ctr sends and accepts messages up to 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

pub async fn run(cfg: Config) -> Result<(), String> {
    let _lock = crate::daemon::lock_root(&cfg.root)?;
    std::fs::create_dir_all(&cfg.state)
        .map_err(|e| format!("create state {}: {e}", cfg.state.display()))?;
    // The four stores open side by side: each open syncs its redb file a few times (more after
    // a crash, when redb repairs it), which in a row made up most of a restart.
    let overlay_root = cfg.root.join("io.containerd.snapshotter.v1.overlayfs");
    let (db, content, overlay, native) = std::thread::scope(|s| {
        let content = s.spawn(|| {
            content::LocalStore::open(cfg.root.join("io.containerd.content.v1.content"))
                .map_err(|e| format!("content store: {e}"))
        });
        let overlay = s.spawn(|| snapshotter::OverlaySnapshotter::open(&overlay_root));
        let native = s.spawn(|| {
            snapshotter::NativeSnapshotter::open(
                cfg.root.join("io.containerd.snapshotter.v1.native"),
            )
            .map_err(|e| format!("native snapshotter: {e}"))
        });
        let db = Db::open(&cfg.root.join("meta.redb")).map_err(|e| e.to_string());
        let joined = |what: &str| format!("opening the {what} panicked");
        (
            db,
            content.join().map_err(|_| joined("content store")),
            overlay.join().map_err(|_| joined("overlayfs snapshotter")),
            native.join().map_err(|_| joined("native snapshotter")),
        )
    });
    let (db, content, native) = (db?, content??, native??);
    let mut snapshotters: BTreeMap<String, Arc<dyn snapshotter::Snapshotter>> = BTreeMap::new();
    match overlay? {
        Ok(s) => {
            snapshotters.insert("overlayfs".into(), Arc::new(s));
        }
        // A host without overlay still gets the native snapshotter.
        Err(e) => log::warn!("overlayfs snapshotter unavailable: {e}"),
    }
    snapshotters.insert("native".into(), Arc::new(native));
    let daemon = Arc::new(Daemon {
        db,
        events: Exchange::default(),
        root: cfg.root.clone(),
        content: Arc::new(content),
        snapshotters,
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
    daemon
        .events
        .hold_unclaimed_task_events(crate::events::HOLD_WINDOW);
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
    // Before serving: every task is found again by asking its shim (shims forward events to
    // the ttrpc socket above, which is up by now).
    if runtime.load(&daemon.db).await == 0 {
        // A fresh start: no client was subscribed to a task of ours, nothing to hold.
        daemon.events.stop_holding();
    }

    // SERVING from here until shutdown begins: dockerd and containerd's Go client poll it
    // before they subscribe to events again after a daemon restart.
    let (router, serving) = router(&daemon, &runtime, &cfg);

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let events = daemon.events.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
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
    let served = router
        .serve_with_incoming_shutdown(protocol::grpc::unix::incoming(listener), shutdown)
        .await;
    ttrpc.shutdown().await;
    let _ = std::fs::remove_file(&cfg.grpc.address);
    served.map_err(|e| format!("serve: {e}"))
}

/// Every gRPC service corrald serves, on `daemon` and `runtime`, with its message limits; and
/// the health service's switch (SERVING until it is set to false). The hostile-input harness
/// serves the same router.
pub fn router(
    daemon: &Shared,
    runtime: &Arc<crate::runtime::Manager>,
    cfg: &Config,
) -> (
    tonic::transport::server::Router,
    tokio::sync::watch::Sender<bool>,
) {
    let (health, serving) = protocol::grpc::health::Health::new(&[]);
    let router = tonic::transport::Server::builder()
        .add_service(health.server())
        .add_service(VersionServer::new(version::VersionService))
        .add_service(
            crate::services::content::server(daemon.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            crate::services::leases::server(daemon.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            SnapshotsServer::new(snapshots::SnapshotsService::new(daemon.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            DiffServer::new(diff::DiffService {
                daemon: daemon.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            crate::services::tasks::server(daemon.clone(), runtime.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            crate::services::containers::server(daemon.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImagesServer::new(images::ImagesService {
                daemon: daemon.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(crate::services::transfer::server(
            daemon.clone(),
            cfg.registry.settings(),
        ))
        .add_service(IntrospectionServer::new(
            introspection::IntrospectionService {
                daemon: daemon.clone(),
                default_runtime: cfg.runtime.default.clone(),
            },
        ))
        .add_service(
            NamespacesServer::new(namespaces::NamespacesService {
                daemon: daemon.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            EventsServer::new(crate::services::events::EventsService {
                daemon: daemon.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        );
    (router, serving)
}

/// Logs to stderr, logrus-style, at `level`.
pub fn init_logging(level: &str) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) && r.target().starts_with("supervisor")
                || r.level() <= log::Level::Warn
            {
                let t = crate::metadata::Time::now();
                eprintln!(
                    "time={}.{:09} level={} msg={:?}",
                    t.seconds,
                    t.nanos,
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
