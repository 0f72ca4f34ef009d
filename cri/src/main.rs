//! `corral-cri`: the CRI adapter; see the `cri` library for the layout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cri::config::{self, Config};

#[derive(Parser)]
#[command(
    name = "corral-cri",
    version,
    about = "Kubernetes CRI (runtime.v1) for corrald"
)]
struct Cli {
    /// corrald's socket.
    #[arg(long)]
    address: Option<PathBuf>,
    /// The CRI socket to serve.
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Directory for network namespaces and per-pod files.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[arg(long = "log-level")]
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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration.
    Default,
}

fn main() -> ExitCode {
    // SAFETY: the first thing in main; no other thread exists yet.
    let notifier = unsafe { protocol::sd_notify::Notifier::from_env() };
    let cli = Cli::parse();
    if let Some(Command::Config {
        what: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", Config::default().to_toml());
        return ExitCode::SUCCESS;
    }
    let (path, must_exist) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let mut cfg = match Config::load(&path, must_exist) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral-cri: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(a) = cli.address {
        cfg.address = a;
    }
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(r) = cli.root {
        cfg.root = r;
    }
    if let Some(l) = cli.log_level {
        cfg.debug.level = l;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("corral-cri: {e}");
        return ExitCode::FAILURE;
    }
    cri::server::init_logging(&cfg.debug.level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-cri: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cri::server::serve(cfg, notifier)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("corral-cri: {e}");
            ExitCode::FAILURE
        }
    }
}
