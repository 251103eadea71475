//! The server behind `nubo up`: the gateway, the admin API, metrics and logs, on one address.
//!
//! It wires the other crates together: [`nubo_manifest`] validates what users send,
//! [`nubo_store`] keeps it, [`nubo_sandbox`] runs it, and [`nubo_scheduler`] decides which
//! instance serves what. The request path reads only in-memory state (the route table and
//! pools); SQL and compilation happen on the admin path, off the async threads.

mod admin;
mod api_error;
mod app;
mod app_files;
mod cron;
mod deploy;
mod gateway;
mod invocations;
mod lambda;
mod live;
mod logs;
mod metrics;
mod otel;
mod pinned;
mod proxy;
mod queue;
mod routes;
mod series;
mod token;
mod ui;

pub use anyhow::Context as _;
pub use nubo_aws::sigv4::Keys as AwsKeys;
use routes::RouteTable;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
pub use token::{ADMIN_TOKEN_FILE, read_or_create_token};
pub use tokio_util::sync::CancellationToken;

/// Settings of `nubo up`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Largest request body a function accepts (413 beyond).
    pub body_limit: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// wasm instances that may exist at once on this node.
    pub max_wasm_instances: u32,
    /// How long a process instance may take to stop after SIGTERM.
    pub stop_grace: Duration,
    /// The binary that runs as the process sandbox's init (`nubo __sandbox-init`); the
    /// running executable when not set.
    pub sandbox_init: Option<PathBuf>,
    /// The region Lambda runtimes are told (`AWS_REGION`) and ARNs name.
    pub aws_region: String,
    /// Access keys the Lambda Invoke API checks SigV4 signatures against (none: not checked).
    pub aws_keys: nubo_aws::sigv4::Keys,
    /// Unfinished async invocations one function may have; beyond, 429 `queue_full`.
    pub max_queued: i64,
    /// Where spans go (an OTLP/HTTP collector); none: no spans are made.
    pub otlp_endpoint: Option<String>,
}

impl ServerOptions {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ServerOptions {
            listen,
            data_dir,
            body_limit: 6 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            max_wasm_instances: 1000,
            stop_grace: Duration::from_secs(5),
            sandbox_init: None,
            aws_region: "us-east-1".into(),
            aws_keys: nubo_aws::sigv4::Keys::default(),
            max_queued: 100_000,
            otlp_endpoint: None,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub store: Arc<nubo_store::Store>,
    pub runtime: Arc<nubo_sandbox::WasmRuntime>,
    /// The route table: swapped whole on every deploy, read (cloned) by every request.
    pub table: RwLock<Arc<RouteTable>>,
    /// Deploys and removals run one at a time, so table rebuilds never interleave.
    pub deploy_lock: tokio::sync::Mutex<()>,
    pub metrics: Arc<metrics::Metrics>,
    pub logs: logs::LogWriter,
    /// Why process functions cannot run here, when they cannot.
    pub process_host: Result<app::ProcessHost, String>,
    /// Unpacked apps, one directory per archive digest.
    pub apps_dir: PathBuf,
    /// Replaced process revisions still finishing requests.
    pub draining: app::Draining,
    pub stop_grace: Duration,
    /// Pooled connections to process instances.
    pub proxy: proxy::Client,
    pub token: String,
    pub base_url: String,
    pub body_limit: usize,
    /// Async invocations (and cron ticks) waiting for a worker.
    pub queue: Arc<dyn queue::InvocationQueue>,
    /// Notified when the route table changes (cron schedules come and go with deploys).
    pub deployed: tokio::sync::Notify,
    pub aws_region: String,
    pub aws_keys: nubo_aws::sigv4::Keys,
    /// Older revisions invoked by `Qualifier`.
    pub pinned: pinned::Pinned,
    /// Unfinished async invocations per function, and the limit on them.
    pub backlog: invocations::Backlog,
    pub max_queued: i64,
    /// The span exporter, with `--otlp-endpoint`.
    pub otel: Option<otel::Exporter>,
    /// Each function's last 15 minutes, across its revisions.
    pub series: std::sync::Mutex<std::collections::HashMap<String, Arc<series::Series>>>,
}

impl AppState {
    /// Drops a removed function's recent past (a function deployed again under the same name
    /// starts from nothing).
    pub fn forget_series(&self, name: &str) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Revision `revision` of a deployed function (the current one, or an older one made live
    /// on demand); `Ok(None)` when either does not exist.
    pub async fn function_at(
        self: &Arc<Self>,
        name: &str,
        revision: Option<i64>,
    ) -> Result<Option<Arc<live::LiveFunction>>, String> {
        let Some(current) = self.table().function(name).cloned() else {
            return Ok(None);
        };
        match revision {
            Some(n) if n != current.revision => self.pinned.get(self, name, n).await,
            _ => Ok(Some(current)),
        }
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_table(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.deployed.notify_one();
    }
}

/// Runs the server until SIGINT or SIGTERM (or `shutdown` is cancelled). `on_listening` is
/// called with the bound address once requests can be served.
pub async fn run(
    opts: ServerOptions,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr, &str),
) -> anyhow::Result<()> {
    let data_dir = opts.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || nubo_store::Store::open(&data_dir))
        .await?
        .with_context(|| format!("opening the store in {}", opts.data_dir.display()))?;
    let store = Arc::new(store);
    let queue_store = store.clone();
    let queue =
        tokio::task::spawn_blocking(move || queue::SqliteQueue::open(queue_store)).await??;
    let token = read_or_create_token(&opts.data_dir)?;
    let otel = match &opts.otlp_endpoint {
        Some(e) => {
            Some(otel::Exporter::start(e).map_err(|why| anyhow::anyhow!("--otlp-endpoint {why}"))?)
        }
        None => None,
    };
    let runtime = Arc::new(nubo_sandbox::WasmRuntime::new(
        nubo_sandbox::RuntimeOptions {
            cache_dir: opts.data_dir.join("compiled"),
            max_instances: opts.max_wasm_instances,
            max_memory: 4 << 30,
        },
    )?);

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(metrics::Metrics::new());
    // The store is open, so the data dir exists: one canonical path for the apps under it and
    // for the sandbox, which hides it and binds the apps back at the same path.
    let data_dir = std::fs::canonicalize(&opts.data_dir)
        .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
    let process_host = process_host(&opts, &data_dir);
    if let Err(why) = &process_host {
        tracing::warn!("process functions are not available: {why}");
    }
    let state = Arc::new(AppState {
        process_host,
        apps_dir: data_dir.join("apps"),
        draining: app::Draining::default(),
        stop_grace: opts.stop_grace,
        proxy: proxy::client(),
        logs: logs::LogWriter::start(store.clone()),
        store,
        runtime,
        table: RwLock::new(Arc::new(RouteTable::default())),
        deploy_lock: tokio::sync::Mutex::new(()),
        metrics,
        token,
        base_url: format!("http://{addr}"),
        body_limit: opts.body_limit,
        queue: Arc::new(queue),
        deployed: tokio::sync::Notify::new(),
        aws_region: opts.aws_region.clone(),
        aws_keys: opts.aws_keys.clone(),
        pinned: pinned::Pinned::default(),
        backlog: invocations::Backlog::default(),
        max_queued: opts.max_queued,
        series: Default::default(),
        otel,
    });
    deploy::load_deployed(&state).await?;
    let reaper = tokio::spawn(live::reap_idle_instances(state.clone()));
    let workers = tokio::spawn(invocations::dispatch(state.clone()));
    let cron = tokio::spawn(cron::run(state.clone()));

    let app = admin::router(state.clone()).with_state(state.clone());
    on_listening(addr, &state.token);

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    serve(listener, state.clone(), app, &shutdown, opts.shutdown_grace).await;
    reaper.abort();
    // Attempts under way end with the instances below; they stay `running` in the store and
    // run again at the next start (at least once).
    workers.abort();
    cron.abort();
    // Drop idle instances first: their last partial output lines reach the log on drop.
    let table = state.table();
    state.set_table(RouteTable::default());
    let mut apps = Vec::new();
    for f in table.functions() {
        match &f.runner {
            live::Runner::Wasm(w) => drop(w.pool.drain_idle()),
            live::Runner::Process(a) => apps.push(a.clone()),
        }
    }
    apps.extend(state.draining.all());
    futures::future::join_all(apps.iter().map(|a| a.stop_all())).await;
    drop(apps);
    if let Ok(host) = &state.process_host {
        // Instances' exit watchers drop the last handles (and cgroups) a moment after they end.
        for _ in 0..50 {
            if host.cgroups.remove_base() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(table);
    state.logs.flush().await;
    Ok(())
}

/// Process functions need root, cgroups and the sandbox init binary.
fn process_host(
    opts: &ServerOptions,
    data_dir: &std::path::Path,
) -> Result<app::ProcessHost, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the server does not run as root (namespaces and cgroups need it)".into());
    }
    let cgroups = nubo_sandbox::process::Cgroups::detect()?;
    cgroups.clean_stale();
    let init_exe = match &opts.sandbox_init {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| format!("finding the nubo binary: {e}"))?,
    };
    Ok(app::ProcessHost {
        cgroups: Arc::new(cgroups),
        init_exe,
        data_dir: data_dir.to_path_buf(),
    })
}

/// Accepts HTTP/1.1 connections until `shutdown`, then lets open ones finish up to `grace`.
///
/// A plain hyper HTTP/1 loop rather than `axum::serve`: it skips the HTTP/2 preface sniffing of
/// the auto builder on every connection, and sets TCP_NODELAY (a response's head and the end of
/// its streamed body can leave in separate writes; holding the second for the client's delayed
/// ACK would add ~40 ms).
async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    app: axum::Router,
    shutdown: &CancellationToken,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let admin = hyper_util::service::TowerToHyperService::new(app);
    // Invocations go straight to the gateway; only platform paths take the router.
    let service = move |peer: SocketAddr| {
        let (state, admin) = (state.clone(), admin.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let (state, admin) = (state.clone(), admin.clone());
            async move {
                let path = req.uri().path();
                if path.starts_with("/_nubo") {
                    hyper::service::Service::call(&admin, req).await
                } else if path.starts_with(lambda::invoke_api::PREFIX) {
                    let req = req.map(axum::body::Body::new);
                    let handled = lambda::invoke_api::handle(state, req);
                    Ok(gateway::TRIGGER.scope("lambda-api", handled).await)
                } else {
                    req.extensions_mut().insert(lambda::ClientAddr(peer));
                    let req = req.map(axum::body::Body::new);
                    Ok(gateway::handle(axum::extract::State(state), req).await)
                }
            }
        })
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service(peer));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; stopping anyway");
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
