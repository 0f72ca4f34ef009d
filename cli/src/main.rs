//! `corral`: the command-line client of corrald.
//!
//! It speaks containerd's gRPC API (plus corral's own Transfer service for pulls) over
//! corrald's unix socket, with the namespace in every request's metadata. It holds no state of
//! its own: images, containers and tasks live in the daemon, container output in log files the
//! shim writes (`--log-dir`). What it is not: server logic — the unpack it does for `images
//! import` is the same client-side sequence `ctr images import` performs.
//!
//! ```text
//! corral run --rm busybox echo hi
//!   Images.Get ─► (Transfer.Pull if missing) ─► Snapshots.Prepare(id, chainID)
//!   ─► Containers.Create(spec) ─► Tasks.Create(FIFOs) ─► Tasks.Start ─► Tasks.Wait
//!   ─► Tasks.Delete ─► Snapshots.Remove ─► Containers.Delete        exit code = the container's
//! ```
//!
//! Errors are one line on stderr, `corral: <what failed>: <why>`, and a non-zero exit code
//! (`run` and `exec` exit with the process's code).

mod client;
mod commands;
mod export;
mod image;
mod import;
mod output;
mod progress;
mod spec;
mod stdio;
mod store;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Client;

#[derive(Parser, Debug)]
#[command(name = "corral", version, about = "Run containers with corrald")]
pub struct Cli {
    /// corrald's socket.
    #[arg(
        long,
        global = true,
        env = "CORRAL_ADDRESS",
        default_value = "/run/corral/corral.sock"
    )]
    pub address: PathBuf,
    /// The namespace to work in.
    #[arg(
        short,
        long,
        global = true,
        env = "CORRAL_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Output format of listings.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Where containers' log files are (`<dir>/<namespace>/<id>.log`).
    #[arg(
        long,
        global = true,
        env = "CORRAL_LOG_DIR",
        default_value = "/var/log/corral"
    )]
    pub log_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull an image into corrald (the daemon fetches and unpacks it).
    Pull(PullArgs),
    /// Manage images.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Create and start a container from an image.
    Run(RunArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// List containers.
    Ps,
    /// Print a container's output (from its log file).
    Logs(LogsArgs),
    /// Send a signal to a container's process.
    Kill(KillArgs),
    /// Stop a container: SIGTERM, then SIGKILL after a timeout.
    Stop(StopArgs),
    /// Remove a container.
    Rm(RmArgs),
    /// Freeze a container's processes.
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Print daemon events as they happen.
    Events,
    /// Snapshots of the snapshotter.
    #[command(subcommand)]
    Snapshots(SnapshotsCmd),
    /// Daemon version, runtimes and counts.
    Info,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    pub plain_http: bool,
    /// os/arch[/variant] to pick from an index.
    #[arg(long)]
    pub platform: Option<String>,
    /// Registry credentials `USER[:PASSWORD]`; without a password it is read from stdin.
    /// Without this flag corrald uses its docker-style config.json.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    pub reference: String,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCmd {
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Remove images.
    #[command(alias = "remove")]
    Rm { names: Vec<String> },
    /// Show an image's record, manifest and config.
    Inspect { name: String },
    /// Import an OCI layout or docker save archive.
    Import { file: PathBuf },
    /// Export an image as an OCI layout archive.
    Export { file: PathBuf, name: String },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCmd {
    /// List snapshots.
    #[command(alias = "list")]
    Ls,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Start and return; output goes to the log file.
    #[arg(short, long, conflicts_with = "rm")]
    pub detach: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Forward our stdin to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Container id (generated if absent).
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE added to the environment (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// type=bind,src=PATH,dst=PATH[,options=a:b] (repeatable).
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<spec::MountFlag>,
    /// uid[:gid] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory in the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Runtime (shim) name.
    #[arg(long, default_value = "io.containerd.corral.v1")]
    pub runtime: String,
    /// Cap of the log file of a detached container (bytes); one rotated file is kept.
    #[arg(long, default_value_t = 10 << 20)]
    pub log_max_size: u64,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long)]
    pub interactive: bool,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal name or number.
    #[arg(short, long, default_value = "SIGTERM")]
    pub signal: String,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct IdArg {
    pub id: String,
}

/// An error that carries the exit code to use (a container's, for run and exec).
#[derive(Debug)]
pub struct ExitCode(pub i32);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for ExitCode {}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                if let Some(ExitCode(c)) = e.downcast_ref::<ExitCode>() {
                    return *c;
                }
                eprintln!("corral: {}", one_line(&e));
                1
            }
        }
    });
    // Reading stdin may have left a blocking thread behind; do not wait for it.
    rt.shutdown_background();
    std::process::exit(code);
}

/// `what failed: why`, on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let client = Client::connect(cli.address.clone(), cli.namespace.clone()).await?;
    let out = cli.output;
    use commands::*;
    match cli.command {
        Command::Pull(a) => pull::pull(&client, &a).await.map(|_| 0),
        Command::Images(c) => images::run(&client, c, out).await.map(|_| 0),
        Command::Run(a) => containers::run(&client, a, &cli.log_dir).await,
        Command::Exec(a) => containers::exec(&client, a).await,
        Command::Ps => containers::ps(&client, out).await.map(|_| 0),
        Command::Logs(a) => containers::logs(&client, a, &cli.log_dir).await.map(|_| 0),
        Command::Kill(a) => containers::kill(&client, a).await.map(|_| 0),
        Command::Stop(a) => containers::stop(&client, a).await.map(|_| 0),
        Command::Rm(a) => containers::rm(&client, a, &cli.log_dir).await.map(|_| 0),
        Command::Pause(a) => containers::pause(&client, &a.id, true).await.map(|_| 0),
        Command::Resume(a) => containers::pause(&client, &a.id, false).await.map(|_| 0),
        Command::Events => system::events(&client, out).await.map(|_| 0),
        Command::Snapshots(SnapshotsCmd::Ls) => system::snapshots(&client, out).await.map(|_| 0),
        Command::Info => system::info(&client, out).await.map(|_| 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_and_trailing_command() {
        let c = parse(&[
            "corral",
            "-n",
            "ns1",
            "run",
            "--rm",
            "-i",
            "--name",
            "c1",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "--mount",
            "type=bind,src=/a,dst=/b",
            "--user",
            "1:2",
            "--workdir",
            "/w",
            "busybox",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        assert_eq!(c.namespace, "ns1");
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert!(r.rm && r.interactive && !r.detach && !r.tty);
        assert_eq!(r.name.as_deref(), Some("c1"));
        assert_eq!(r.env, ["A=1", "B=2"]);
        assert_eq!(r.mounts[0].destination, "/b");
        assert_eq!(r.user.as_deref(), Some("1:2"));
        assert_eq!(r.image, "busybox");
        assert_eq!(r.command, ["sh", "-c", "echo -n hi"]);
        assert_eq!(r.runtime, "io.containerd.corral.v1");
    }

    #[test]
    fn globals_anywhere_and_defaults() {
        let c = parse(&["corral", "ps", "--output", "json"]);
        assert_eq!(c.output, Output::Json);
        assert!(matches!(c.command, Command::Ps));
        let c = parse(&["corral", "images", "ls"]);
        assert_eq!(c.output, Output::Table);
        assert!(matches!(c.command, Command::Images(ImagesCmd::Ls)));
        let c = parse(&["corral", "stop", "-t", "1", "x"]);
        let Command::Stop(s) = c.command else {
            panic!()
        };
        assert_eq!((s.time, s.id.as_str()), (1, "x"));
        let c = parse(&["corral", "exec", "-t", "c", "ls", "-l"]);
        let Command::Exec(e) = c.command else {
            panic!()
        };
        assert!(e.tty);
        assert_eq!(e.command, ["ls", "-l"]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Cli::try_parse_from(["corral", "run"]).is_err());
        assert!(Cli::try_parse_from(["corral", "exec", "c"]).is_err());
        assert!(Cli::try_parse_from(["corral", "run", "--mount", "src=/a", "img"]).is_err());
        assert!(Cli::try_parse_from(["corral", "ps", "--output", "yaml"]).is_err());
        // Nobody would be there to remove a detached container when it exits.
        assert!(Cli::try_parse_from(["corral", "run", "-d", "--rm", "img"]).is_err());
    }
}
