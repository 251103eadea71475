//! `nubo`: the server, the CLI and (later) the dashboard in one binary.
//!
//! This crate is glue: argument parsing, output and exit codes. Each subcommand lives in its
//! own module under `commands/`; the work is done by `nubo-server` and `nubo-client`.

mod commands;
mod connect;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nubo",
    version,
    about = "Run code on demand on your own machines"
)]
struct Cli {
    /// Server URL [default: $NUBO_SERVER or http://127.0.0.1:8080]
    #[arg(long, global = true, env = "NUBO_SERVER")]
    server: Option<String>,
    /// Admin token [default: $NUBO_TOKEN, else found from a server started on this machine]
    #[arg(long, global = true, env = "NUBO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format of listing commands
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (gateway, admin API, scheduler) in the foreground
    Up(commands::up::UpArgs),
    /// Build, upload and deploy the project of a manifest
    Deploy {
        /// The manifest
        #[arg(short = 'f', long = "file", default_value = "nubo.yaml")]
        file: PathBuf,
    },
    /// Invoke a function once and print its response body
    Invoke {
        function: String,
        /// Request body: a string, or @FILE to read a file
        #[arg(long)]
        data: Option<String>,
        /// Path under the function (it sees this path)
        #[arg(long, default_value = "/")]
        path: String,
        /// HTTP method [default: POST with --data, else GET]
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// Also print the status and headers (to stderr)
        #[arg(short = 'i', long)]
        include: bool,
        /// Queue it (durably) and print the invocation id instead of waiting
        #[arg(long = "async")]
        asynchronous: bool,
    },
    /// Invocations, GB-seconds, CPU-seconds and errors per function and project
    Usage {
        /// Only invocations from this long ago on (e.g. 1h, 30m) [default: everything kept]
        #[arg(long)]
        since: Option<String>,
    },
    /// Show an async invocation: status, attempts, result or error
    Invocation { id: String },
    /// The dead-letter list of async invocations that ran out of retries
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// List deployed functions
    Ls,
    /// Show a function: revisions, instances, URL
    Get { function: String },
    /// Remove a function
    Rm { function: String },
    /// Show a function's log lines, newest last
    Logs {
        function: String,
        /// Keep printing new lines as they arrive
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many recent lines to show
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: i64,
        /// Only lines from this long ago on (e.g. 30s, 10m, 2h)
        #[arg(long)]
        since: Option<String>,
    },
    /// Live per-instance view: state, start mode, in-flight, CPU, memory, age
    Top {
        /// Only this function
        function: Option<String>,
        /// Print once and exit (always so with -o json)
        #[arg(long)]
        once: bool,
        /// Seconds between redraws
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Create a starter project in DIR
    Init {
        /// rust-wasm, python-app, node-app or python-lambda
        template: String,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List the function's dead letters, newest first
    Ls {
        function: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue dead letters again with fresh attempts (all, or the given ids)
    Replay { function: String, ids: Vec<String> },
}

fn main() -> ExitCode {
    // The process sandbox runs this binary as its init, before anything else starts (it must
    // stay single-threaded until it forks).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(nubo_sandbox::process::init::INIT_ARG) {
        nubo_sandbox::process::init::main(&args[2..]);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use commands::*;
    let target = connect::Target::new(cli.server, cli.token);
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Deploy { file } => deploy::run(&target.client()?, &file).await,
        Command::Invoke {
            function,
            data,
            path,
            method,
            include,
            asynchronous,
        } => {
            invoke::run(
                &target,
                &function,
                data,
                &path,
                method,
                include,
                asynchronous,
            )
            .await
        }
        Command::Invocation { id } => dlq::show(&target.client()?, &id, cli.output).await,
        Command::Usage { since } => {
            inspect::usage(&target.client()?, since.as_deref(), cli.output).await
        }
        Command::Dlq { command } => match command {
            DlqCommand::Ls { function, limit } => {
                dlq::ls(&target.client()?, &function, limit, cli.output).await
            }
            DlqCommand::Replay { function, ids } => {
                dlq::replay(&target.client()?, &function, &ids, cli.output).await
            }
        },
        Command::Ls => inspect::ls(&target.client()?, cli.output).await,
        Command::Get { function } => inspect::get(&target.client()?, &function, cli.output).await,
        Command::Rm { function } => inspect::rm(&target.client()?, &function).await,
        Command::Logs {
            function,
            follow,
            lines,
            since,
        } => {
            inspect::logs(
                &target.client()?,
                &function,
                follow,
                lines,
                since,
                cli.output,
            )
            .await
        }
        Command::Top {
            function,
            once,
            interval,
        } => {
            top::run(
                &target.client()?,
                function.as_deref(),
                once,
                interval,
                cli.output,
            )
            .await
        }
        Command::Init { template, dir } => init::run(&template, &dir),
    }
}
