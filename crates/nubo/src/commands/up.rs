//! `nubo up`: the server in the foreground.

use crate::connect;
use anyhow::Context as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub async fn run(
    listen: std::net::SocketAddr,
    data_dir: Option<PathBuf>,
    grace: u64,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = data_dir.unwrap_or_else(connect::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let mut opts = nubo_server::ServerOptions::new(listen, data_dir.clone());
    opts.shutdown_grace = Duration::from_secs(grace);
    let shutdown = nubo_server::CancellationToken::new();
    let mut registry = None;
    let result = nubo_server::run(opts, shutdown, |addr, _token| {
        // One line on stdout that scripts and tests parse; the rest goes to stderr.
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
        eprintln!(
            "admin token: {}",
            data_dir.join(nubo_server::ADMIN_TOKEN_FILE).display()
        );
        match connect::register_server(addr, &data_dir) {
            Ok(p) => registry = Some(p),
            Err(e) => eprintln!("warning: the CLI will need --token: {e:#}"),
        }
    })
    .await;
    if let Some(p) = registry {
        let _ = std::fs::remove_file(p);
    }
    result
}
