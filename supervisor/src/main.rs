//! `corrald`: the corral supervisor daemon; see the `supervisor` library for the layout.

use std::path::PathBuf;
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
    #[arg(short = 'a', long)]
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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration.
    Default,
}

const DEFAULT_CONFIG: &str = "/etc/corral/config.toml";

fn main() -> ExitCode {
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
    server::init_logging(&cfg.debug.level);
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
    match rt.block_on(server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("corrald: {e}");
            ExitCode::FAILURE
        }
    }
}
