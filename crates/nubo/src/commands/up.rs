//! `nubo up`: the server in the foreground.

use crate::connect;
use anyhow::Context as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Address to listen on; port 0 picks a free one
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Where the store, artifacts and admin token live [default: $NUBO_DATA_DIR or ~/.nubo/data]
    #[arg(long, env = "NUBO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// wasm instances that may exist at once on this node (pooling-allocator slots)
    #[arg(long, default_value_t = 1000)]
    max_wasm_instances: u32,
    /// Largest request body a function accepts, in bytes (413 beyond)
    #[arg(long, default_value_t = 6 * 1024 * 1024)]
    body_limit: usize,
    /// Region Lambda runtimes are told (AWS_REGION) and ARNs carry
    #[arg(long, env = "NUBO_AWS_REGION", default_value = "us-east-1")]
    aws_region: String,
    /// Check SigV4 signatures on the Lambda Invoke API against these keys: AKID:SECRET[,...]
    /// (without it, any signature or none is accepted)
    #[arg(long, env = "NUBO_AWS_ACCESS_KEYS", hide_env_values = true)]
    aws_access_keys: Option<String>,
    /// Unfinished async invocations one function may have queued; beyond, 429 queue_full
    #[arg(long, default_value_t = 100_000)]
    max_queued_invocations: u32,
    /// Export a span per invocation (queue, cold start, execution) to this OpenTelemetry
    /// collector, OTLP/HTTP JSON: http://HOST:4318 (off by default)
    #[arg(long, env = "NUBO_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = args.data_dir.unwrap_or_else(connect::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let mut opts = nubo_server::ServerOptions::new(args.listen, data_dir.clone());
    opts.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    opts.max_wasm_instances = args.max_wasm_instances;
    opts.body_limit = args.body_limit;
    opts.aws_region = args.aws_region;
    opts.max_queued = args.max_queued_invocations.max(1) as i64;
    opts.otlp_endpoint = args.otlp_endpoint;
    if let Some(spec) = &args.aws_access_keys {
        opts.aws_keys = parse_access_keys(spec)?;
    }
    let shutdown = nubo_server::CancellationToken::new();
    let mut registry = None;
    let result = nubo_server::run(opts, shutdown, |addr, token| {
        // Register first: whoever reads the line below may run the CLI at once.
        match connect::register_server(addr, &data_dir) {
            Ok(p) => registry = Some(p),
            Err(e) => eprintln!("warning: the CLI will need --token: {e:#}"),
        }
        eprintln!(
            "admin token: {}",
            data_dir.join(nubo_server::ADMIN_TOKEN_FILE).display()
        );
        // Like a notebook server's link: opening it logs the dashboard in.
        let mut shown = addr;
        if shown.ip().is_unspecified() {
            shown.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        eprintln!("dashboard: http://{shown}/_nubo/ui/?token={token}");
        // One line on stdout that scripts and tests parse; the rest goes to stderr.
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })
    .await;
    if let Some(p) = registry {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// The access keys of `--aws-access-keys`.
fn parse_access_keys(spec: &str) -> anyhow::Result<nubo_server::AwsKeys> {
    nubo_server::AwsKeys::parse(spec).map_err(|e| {
        anyhow::anyhow!("--aws-access-keys: {e} (expected AKID:SECRET[,AKID:SECRET...])")
    })
}
