//! `corrald`: the corral supervisor daemon; see the `supervisor` library for the layout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use supervisor::{config, server};

#[derive(Parser)]
#[command(
    name = "corrald",
    version,
    about = "corral supervisor daemon (containerd gRPC API)"
)]
struct Cli {
    /// Persistent state directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state directory.
    #[arg(long)]
    state: Option<PathBuf>,
    /// gRPC socket.
    #[arg(short = 'a', long, global = true)]
    address: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[arg(short = 'l', long = "log-level")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Publish an event (a marshaled google.protobuf.Any read from stdin) to a running daemon,
    /// as `containerd publish` does for shims given `-publish-binary`.
    Publish {
        /// Event topic, e.g. /tasks/oom.
        #[arg(long)]
        topic: String,
        /// Namespace the event belongs to.
        #[arg(long)]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration.
    Default,
}

const DEFAULT_CONFIG: &str = "/etc/corral/config.toml";

fn main() -> ExitCode {
    // SAFETY: the first thing in main; no other thread exists yet.
    let notifier = unsafe { protocol::sd_notify::Notifier::from_env() };
    let cli = Cli::parse();
    if let Some(Command::Config {
        what: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", config::Config::default().to_toml());
        return ExitCode::SUCCESS;
    }
    let (path, must_exist) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut cfg = match config::Config::load(&path, must_exist) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corrald: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(r) = cli.root {
        cfg.root = r;
    }
    if let Some(s) = cli.state {
        cfg.state = s;
    }
    if let Some(a) = cli.address {
        cfg.grpc.address = a;
    }
    if let Some(l) = cli.log_level {
        cfg.debug.level = l;
    }
    // Before anything is created or bound: a bad value leaves nothing behind.
    if let Err(e) = cfg.validate() {
        eprintln!("corrald: invalid configuration: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(Command::Publish { topic, namespace }) = &cli.command {
        return match publish(&cfg.grpc.address, namespace, topic) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corrald publish: {e}");
                ExitCode::FAILURE
            }
        };
    }
    server::init_logging(&cfg.debug.level);
    // glibc gives every thread that allocates its own malloc arena; with tokio's blocking pool
    // that is dozens of mostly idle arenas after a burst of container starts. One is enough
    // for a daemon whose work is I/O on two workers and four store threads: a second arena
    // kept 1.3 MB of an idle corrald's 12.9 MB resident.
    // SAFETY: mallopt before any other thread exists; it only tunes the allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corrald: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::run(cfg, notifier)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("corrald: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `corrald publish`: the event `Any` (protobuf) on stdin goes to Events.Publish on the daemon
/// at `address`, in `namespace`. What the daemon refuses is reported with its reason.
fn publish(address: &Path, namespace: &str, topic: &str) -> Result<(), String> {
    use protocol::grpc::containerd::services::events::v1::PublishRequest;
    use protocol::grpc::containerd::services::events::v1::events_client::EventsClient;
    use protocol::grpc::prost::Message;
    use std::io::Read;

    let mut data = Vec::new();
    std::io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| format!("read event from stdin: {e}"))?;
    if data.is_empty() {
        return Err("no event on stdin (expected a marshaled google.protobuf.Any)".into());
    }
    let event = prost_types::Any::decode(data.as_slice()).map_err(|e| {
        format!(
            "stdin is not a marshaled google.protobuf.Any ({} bytes): {e}",
            data.len()
        )
    })?;
    let namespace_value = namespace
        .parse()
        .map_err(|_| format!("namespace {namespace:?}: not a valid header value"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let channel = tokio::time::timeout(PUBLISH_TIMEOUT, protocol::grpc::unix::connect(address))
            .await
            .map_err(|_| format!("connect to {}: timed out", address.display()))?
            .map_err(|e| format!("connect to {}: {e}", address.display()))?;
        let mut req = tonic::Request::new(PublishRequest {
            topic: topic.to_string(),
            event: Some(event),
        });
        req.metadata_mut()
            .insert(supervisor::services::NAMESPACE_HEADER, namespace_value);
        req.set_timeout(PUBLISH_TIMEOUT);
        EventsClient::new(channel)
            .publish(req)
            .await
            .map(drop)
            .map_err(|s| {
                format!(
                    "publish {topic} in namespace {namespace} to {}: {} ({})",
                    address.display(),
                    s.message(),
                    protocol::Code::of_grpc(&s)
                )
            })
    })
}

/// How long `corrald publish` waits for the daemon.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
