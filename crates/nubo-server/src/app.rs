//! A deployed revision of a `process` function: its instances, how new ones start (thaw, then
//! fork, then new), the frozen warm set, the seed, and its retirement after an update.

use crate::AppState;
use crate::lambda::RuntimeApi;
use crate::logs::LogWriter;
use crate::metrics::{Metrics, ModeLabels};
use nubo_manifest::FunctionSpec;
use nubo_sandbox::process::{
    AppSpec, Cgroups, Limits, Parked, ProcessInstance, PythonApp, Seed, StartError, StartMode,
};
use nubo_scheduler::{SharedLimits, SharedPool};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub type Pool = SharedPool<ProcessInstance>;

/// Processes (and threads) one instance may have: enough for a threaded server, too few for a
/// fork bomb to hurt the host.
const PIDS_MAX: u64 = 256;

pub struct AppRevision {
    pub function: String,
    pub revision: i64,
    pub spec: AppSpec,
    pub pool: Arc<Pool>,
    python: Option<PythonApp>,
    seed: Mutex<Option<Arc<Seed>>>,
    /// A child forked ahead and parked in its cgroup (see `Seed::park`).
    spare: Mutex<Option<Parked>>,
    sparing: std::sync::atomic::AtomicBool,
    seed_restarting: std::sync::atomic::AtomicBool,
    /// Set once `prepare` has run: upkeep waits for it (no double `min`/`warm` starts).
    prepared: std::sync::atomic::AtomicBool,
    /// Set by `retire`: nothing new is started or frozen.
    retired: std::sync::atomic::AtomicBool,
    /// Started, ready, then frozen: thawed on scale-out.
    frozen: Mutex<Vec<Arc<ProcessInstance>>>,
    warm: usize,
    /// Warm instances being started.
    warming: AtomicUsize,
    /// Instances being started: id -> (mode, since).
    starting: Mutex<HashMap<Arc<str>, (StartMode, Instant)>>,
    stop_grace: Duration,
    logs: LogWriter,
    metrics: Arc<Metrics>,
    /// `kind: lambda`: the Runtime API of each instance.
    lambda: Option<LambdaHost>,
}

/// What lambda instances of a revision share.
struct LambdaHost {
    arn: String,
    body_limit: usize,
    runtimes: Mutex<HashMap<Arc<str>, Arc<RuntimeApi>>>,
}

/// One row of the per-instance view.
pub struct InstanceRow {
    pub id: String,
    /// 0 while starting.
    pub port: u16,
    pub revision: i64,
    pub state: &'static str,
    pub mode: &'static str,
    pub inflight: usize,
    pub served: u64,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub age: Duration,
    pub start_ms: f64,
}

/// What the server needs to run process instances on this host.
pub struct ProcessHost {
    pub cgroups: Arc<Cgroups>,
    /// The `nubo` binary (the sandbox init).
    pub init_exe: PathBuf,
    /// The server's data dir (admin token, store): hidden from instances.
    pub data_dir: PathBuf,
}

impl AppRevision {
    /// The live state of one revision; nothing starts before [`AppRevision::prepare`].
    pub fn new(
        state: &AppState,
        host: &ProcessHost,
        function: &str,
        revision: i64,
        spec: &FunctionSpec,
        dir: PathBuf,
    ) -> Arc<AppRevision> {
        let log = state.logs.sink(function);
        let python = spec.python.as_ref().map(|p| match p {
            nubo_manifest::PythonApp::Wsgi(t) => PythonApp {
                kind: "wsgi",
                target: t.clone(),
            },
            nubo_manifest::PythonApp::Asgi(t) => PythonApp {
                kind: "asgi",
                target: t.clone(),
            },
        });
        let command = match (&python, spec.command.is_empty()) {
            (Some(py), true) => py.serve_command(),
            _ => spec.command.clone(),
        };
        let is_lambda = spec.kind == nubo_manifest::Kind::Lambda;
        let mut env: Vec<(String, String)> = [
            ("NUBO_FUNCTION".to_string(), function.to_string()),
            ("NUBO_REVISION".to_string(), revision.to_string()),
        ]
        .into_iter()
        .collect();
        if is_lambda {
            env.extend(crate::lambda::runtime_env(
                function,
                revision,
                spec,
                &dir,
                &state.aws_region,
            ));
        }
        // The function's own `env` comes last: it may override what Nubo sets.
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let app_spec = AppSpec {
            function: function.to_string(),
            revision,
            dir,
            command,
            env,
            limits: Limits {
                memory: spec.memory.bytes(),
                cpu: spec.cpu,
                pids: PIDS_MAX,
            },
            ready: spec.ready.clone(),
            start_timeout: spec.start_timeout.to_std(),
            ksm: spec.warm > 0,
            log,
            cgroups: host.cgroups.clone(),
            init_exe: host.init_exe.clone(),
            hide: vec![host.data_dir.clone()],
        };
        let limits = SharedLimits {
            max: spec.scale.max as usize,
            concurrency: spec.concurrency.max(1) as usize,
            queue: spec.scale.queue as usize,
            queue_wait: spec.scale.queue_wait.to_std(),
            idle: spec.scale.idle.to_std(),
            min: spec.scale.min as usize,
        };
        let (warm, stop_grace) = (spec.warm as usize, state.stop_grace);
        let (logs, metrics) = (state.logs.clone(), state.metrics.clone());
        let spec = app_spec;
        let pool = SharedPool::new(limits);
        let app = Arc::new(AppRevision {
            function: function.to_string(),
            revision,
            spec,
            pool: pool.clone(),
            python,
            seed: Mutex::new(None),
            spare: Mutex::new(None),
            sparing: Default::default(),
            seed_restarting: Default::default(),
            prepared: Default::default(),
            retired: Default::default(),
            frozen: Mutex::new(Vec::new()),
            warm,
            warming: AtomicUsize::new(0),
            starting: Mutex::new(HashMap::new()),
            stop_grace,
            logs,
            metrics,
            lambda: is_lambda.then(|| LambdaHost {
                arn: crate::lambda::function_arn(&state.aws_region, function),
                body_limit: state.body_limit,
                runtimes: Mutex::new(HashMap::new()),
            }),
        });
        let weak = Arc::downgrade(&app);
        pool.set_starter(Box::new(move |pool| {
            let (weak, pool) = (weak.clone(), pool.clone());
            tokio::spawn(async move {
                let Some(app) = weak.upgrade() else {
                    pool.start_failed("the revision was replaced");
                    return;
                };
                match app.start_instance().await {
                    Ok(i) => pool.add(i),
                    Err(e) => pool.start_failed(&e.0),
                }
            });
        }));
        app
    }

    fn log(&self, instance: Option<&str>, text: &str) {
        for line in text.lines() {
            self.logs
                .line(&self.function, "nubo", instance, None, line.to_string());
        }
    }

    fn next_id(&self) -> Arc<str> {
        crate::live::instance_id(&self.function, self.revision).into()
    }

    fn seed(&self) -> Option<Arc<Seed>> {
        lock(&self.seed).clone().filter(|s| s.alive())
    }

    /// Starts the Python seed (again, after it died).
    async fn start_seed(&self) -> Result<(), StartError> {
        let Some(py) = &self.python else {
            return Ok(());
        };
        if self.retired.load(Ordering::SeqCst) {
            return Ok(());
        }
        let id = format!("{}-seed", self.next_id());
        let seed = Seed::start(&self.spec, py, &id).await.map_err(|e| {
            StartError(format!(
                "the Python seed (importing {}) failed: {e}",
                py.target
            ))
        })?;
        if self.retired.load(Ordering::SeqCst) {
            seed.instance.stop(Duration::ZERO).await;
            return Ok(());
        }
        *lock(&self.seed) = Some(Arc::new(seed));
        Ok(())
    }

    /// Before traffic moves here: the seed, `scale.min` started instances and `warm` frozen
    /// ones. An error (the app does not start) fails the deploy.
    pub async fn prepare(self: &Arc<Self>) -> Result<(), StartError> {
        let result = self.prepare_inner().await;
        // Upkeep (reaping, `min`, seed restarts) may run from now on, whatever happened.
        self.prepared.store(true, Ordering::SeqCst);
        result
    }

    async fn prepare_inner(self: &Arc<Self>) -> Result<(), StartError> {
        self.start_seed().await?;
        self.refill_spare();
        let min = self.pool.limits().min.min(self.pool.limits().max);
        let mut started = Vec::new();
        for _ in 0..min {
            started.push(self.start_instance());
        }
        let mut failed = None;
        for r in futures::future::join_all(started).await {
            // Every instance that did start joins the pool, so a retire stops it.
            match r {
                // Retired meanwhile (a newer deploy, or shutdown): nobody will stop it later.
                Ok(i) if self.retired.load(Ordering::SeqCst) => i.stop(Duration::ZERO).await,
                Ok(i) => self.pool.insert(i),
                Err(e) => failed = Some(e),
            }
        }
        let mut warm = Vec::new();
        for _ in 0..self.warm {
            warm.push(self.start_frozen());
        }
        for r in futures::future::join_all(warm).await {
            if let Err(e) = r {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Starts one instance that will serve: thaw a frozen one, else fork, else new.
    pub async fn start_instance(self: &Arc<Self>) -> Result<Arc<ProcessInstance>, StartError> {
        if let Some(i) = self.thaw_one() {
            self.refill_warm();
            return Ok(i);
        }
        self.start_fresh().await
    }

    /// A fork or a new start, counted and watched.
    async fn start_fresh(self: &Arc<Self>) -> Result<Arc<ProcessInstance>, StartError> {
        let id = self.next_id();
        let seed = self.seed();
        let mode = if seed.is_some() {
            StartMode::Fork
        } else {
            StartMode::New
        };
        // A parked spare (forked and in its cgroup already) is the fast way to fork.
        let spare = seed.as_ref().and_then(|_| lock(&self.spare).take());
        let id = spare.as_ref().map_or(id, |p| p.id().clone());
        lock(&self.starting).insert(id.clone(), (mode, Instant::now()));
        let result = match (&seed, spare) {
            (Some(s), Some(parked)) => match s.go(&self.spec, parked).await {
                Ok(i) => Ok(i),
                // The spare died while parked: fork afresh.
                Err(e) => {
                    self.log(Some(&id), &format!("the parked spare failed: {e}"));
                    s.fork(&self.spec, &self.next_id()).await
                }
            },
            (Some(s), None) => s.fork(&self.spec, &id).await,
            (None, _) if self.lambda.is_some() => self.start_lambda(&id).await,
            (None, _) => self.spec.start_new(&id).await,
        };
        lock(&self.starting).remove(&id);
        if seed.is_some() {
            self.refill_spare();
        }
        match result {
            Ok(i) => {
                let i = Arc::new(i);
                self.count_start(&i);
                self.watch_exit(&i);
                Ok(i)
            }
            Err(e) => {
                self.log(
                    Some(&id),
                    &format!("instance failed to start ({}): {e}", mode.as_str()),
                );
                Err(e)
            }
        }
    }

    /// A lambda instance: its own Runtime API, then the runtime, ready at its first `next`.
    async fn start_lambda(&self, id: &Arc<str>) -> Result<ProcessInstance, StartError> {
        let Some(host) = &self.lambda else {
            return Err(StartError("not a lambda function".into()));
        };
        let api = RuntimeApi::start(host.arn.clone(), host.body_limit)
            .await
            .map_err(|e| StartError(format!("serving the Runtime API failed: {e}")))?;
        let env = [
            (
                "AWS_LAMBDA_RUNTIME_API".to_string(),
                format!("127.0.0.1:{}", api.port),
            ),
            ("AWS_LAMBDA_LOG_STREAM_NAME".to_string(), id.to_string()),
        ];
        let api = Arc::new(api);
        lock(&host.runtimes).insert(id.clone(), api.clone());
        let result = self
            .spec
            .start_signalled(id, api.port, &env, api.ready())
            .await;
        if result.is_err() {
            lock(&host.runtimes).remove(id);
        }
        result
    }

    /// The Runtime API of a lambda instance.
    pub fn runtime(&self, instance: &str) -> Option<Arc<RuntimeApi>> {
        let host = self.lambda.as_ref()?;
        lock(&host.runtimes).get(instance).cloned()
    }

    pub fn is_lambda(&self) -> bool {
        self.lambda.is_some()
    }

    /// Parks one forked child for the next fork, in the background.
    fn refill_spare(self: &Arc<Self>) {
        if self.retired.load(Ordering::SeqCst)
            || lock(&self.spare).is_some()
            || self.sparing.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let app = self.clone();
        tokio::spawn(async move {
            if let Some(seed) = app.seed() {
                match seed.park(&app.spec, &app.next_id()).await {
                    // Retired meanwhile: dropping it lets the child exit.
                    Ok(p) if !app.retired.load(Ordering::SeqCst) => *lock(&app.spare) = Some(p),
                    Ok(_) => {}
                    Err(e) => app.log(None, &format!("parking a spare fork failed: {e}")),
                }
            }
            app.sparing.store(false, Ordering::SeqCst);
        });
    }

    fn count_start(&self, i: &ProcessInstance) {
        let labels = ModeLabels {
            function: self.function.clone(),
            mode: i.mode().as_str().into(),
        };
        let took = i.start_took();
        self.metrics.cold_starts.get_or_create(&labels).inc();
        self.metrics
            .cold_start_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// When an instance ends on its own, it leaves the pool and the log says why.
    fn watch_exit(self: &Arc<Self>, i: &Arc<ProcessInstance>) {
        let (weak, i) = (Arc::downgrade(self), i.clone());
        tokio::spawn(async move {
            let exit = i.wait_exit().await;
            let Some(app) = weak.upgrade() else { return };
            app.pool.remove(&i);
            if let Some(host) = &app.lambda {
                lock(&host.runtimes).remove(&i.id);
            }
            lock(&app.frozen).retain(|f| !Arc::ptr_eq(f, &i));
            if !i.stopping() {
                let why = if exit.oom {
                    format!(
                        "instance ended: {} (out of memory: limit {} bytes)",
                        exit.status, app.spec.limits.memory
                    )
                } else {
                    format!("instance ended: {}", exit.status)
                };
                app.log(Some(&i.id), &why);
            }
            // The cgroup may still hold stray processes; nothing of it outlives the instance.
            i.stop(Duration::ZERO).await;
        });
    }

    fn thaw_one(&self) -> Option<Arc<ProcessInstance>> {
        loop {
            let i = lock(&self.frozen).pop()?;
            if i.exited().is_some() {
                continue;
            }
            match i.thaw() {
                Ok(()) => {
                    self.count_start(&i);
                    return Some(i);
                }
                Err(e) => {
                    self.log(Some(&i.id), &format!("thawing failed: {e}"));
                    let i2 = i.clone();
                    tokio::spawn(async move { i2.stop(Duration::ZERO).await });
                }
            }
        }
    }

    /// Starts, then freezes, one instance for the warm set.
    async fn start_frozen(self: &Arc<Self>) -> Result<(), StartError> {
        self.warming.fetch_add(1, Ordering::SeqCst);
        let result = self.start_fresh().await;
        let result = match result {
            Ok(i) => {
                let i2 = i.clone();
                match tokio::task::spawn_blocking(move || i2.freeze()).await {
                    Ok(Ok(())) if !self.retired.load(Ordering::SeqCst) => {
                        lock(&self.frozen).push(i);
                        ensure_ksm();
                        Ok(())
                    }
                    Ok(Ok(())) => {
                        i.stop(Duration::ZERO).await;
                        Ok(())
                    }
                    Ok(Err(e)) => {
                        i.stop(Duration::ZERO).await;
                        Err(StartError(format!("freezing the instance failed: {e}")))
                    }
                    Err(e) => Err(StartError(format!("freezing the instance failed: {e}"))),
                }
            }
            Err(e) => Err(e),
        };
        self.warming.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Tops the warm set up in the background.
    fn refill_warm(self: &Arc<Self>) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        let short = self
            .warm
            .saturating_sub(lock(&self.frozen).len() + self.warming.load(Ordering::SeqCst));
        for _ in 0..short {
            let app = self.clone();
            tokio::spawn(async move {
                let _ = app.start_frozen().await;
            });
        }
    }

    /// Periodic upkeep: reclaim idle instances, keep `min` started and `warm` frozen.
    pub fn maintain(self: &Arc<Self>, now: Instant) {
        if !self.prepared.load(Ordering::SeqCst) || self.retired.load(Ordering::SeqCst) {
            return;
        }
        for i in self.pool.reap(now) {
            let grace = self.stop_grace;
            tokio::spawn(async move { i.stop(grace).await });
        }
        self.pool.top_up();
        self.refill_warm();
        // A seed that died (the app crashed it, or out of memory) is started again; meanwhile
        // new instances start plainly.
        let dead = lock(&self.seed).as_ref().is_some_and(|s| !s.alive());
        if dead && !self.seed_restarting.swap(true, Ordering::SeqCst) {
            let app = self.clone();
            tokio::spawn(async move {
                *lock(&app.seed) = None;
                drop(lock(&app.spare).take()); // it died with its seed
                app.log(None, "the seed ended; starting it again");
                match app.start_seed().await {
                    Ok(()) => app.refill_spare(),
                    Err(e) => app.log(None, &e.0),
                }
                app.seed_restarting.store(false, Ordering::SeqCst);
            });
        }
    }

    /// A newer revision took over: serve what is queued, then stop everything once quiet.
    pub fn retire(self: &Arc<Self>) {
        self.retired.store(true, Ordering::SeqCst);
        self.pool.close();
        let app = self.clone();
        tokio::spawn(async move {
            let instances = loop {
                // Starts under way (warm, `prepare`, a seed restart) finish, and stop
                // themselves, before the last sweep.
                if app.warming.load(Ordering::SeqCst) == 0
                    && app.prepared.load(Ordering::SeqCst)
                    && !app.seed_restarting.load(Ordering::SeqCst)
                    && !app.sparing.load(Ordering::SeqCst)
                    && let Some(all) = app.pool.drain_if_quiet()
                {
                    break all;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            for i in std::mem::take(&mut *lock(&app.frozen)) {
                tokio::spawn(async move { i.stop(Duration::ZERO).await });
            }
            drop(lock(&app.spare).take());
            let grace = app.stop_grace;
            futures::future::join_all(instances.iter().map(|i| i.stop(grace))).await;
            let seed = lock(&app.seed).take();
            if let Some(s) = seed {
                s.instance.stop(grace).await;
            }
        });
    }

    /// At shutdown: stop every instance now (requests have finished or timed out).
    pub async fn stop_all(&self) {
        self.retired.store(true, Ordering::SeqCst);
        let mut all: Vec<Arc<ProcessInstance>> = std::mem::take(&mut *lock(&self.frozen));
        drop(lock(&self.spare).take());
        all.extend(self.pool.drain_all());
        futures::future::join_all(all.iter().map(|i| i.stop(Duration::from_secs(1)))).await;
        let seed = lock(&self.seed).take();
        if let Some(s) = seed {
            s.instance.stop(Duration::from_secs(1)).await;
        }
    }

    /// Every instance of this revision, for `instances` and `nubo top`.
    pub fn rows(&self, draining: bool) -> Vec<InstanceRow> {
        let mut rows = Vec::new();
        let row = |i: &ProcessInstance, state, inflight, served| InstanceRow {
            id: i.id.to_string(),
            port: i.port,
            revision: self.revision,
            state,
            mode: i.mode().as_str(),
            inflight,
            served,
            cpu_seconds: i.cpu_seconds(),
            memory_bytes: i.memory_bytes(),
            age: i.age(),
            start_ms: i.start_took().as_secs_f64() * 1000.0,
        };
        for m in self.pool.members() {
            let state = if draining {
                "draining"
            } else if m.inflight > 0 {
                "busy"
            } else {
                "ready"
            };
            rows.push(row(&m.instance, state, m.inflight, m.served));
        }
        for i in lock(&self.frozen).iter() {
            rows.push(row(i, "frozen", 0, 0));
        }
        for (id, (mode, since)) in lock(&self.starting).iter() {
            rows.push(InstanceRow {
                id: id.to_string(),
                port: 0,
                revision: self.revision,
                state: "starting",
                mode: mode.as_str(),
                inflight: 0,
                served: 0,
                cpu_seconds: 0.0,
                memory_bytes: 0,
                age: since.elapsed(),
                start_ms: 0.0,
            });
        }
        rows
    }

    pub fn frozen_count(&self) -> usize {
        lock(&self.frozen).len()
    }
}

/// Frozen instances share identical pages only while KSM runs; turn it on once, and say so.
fn ensure_ksm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match nubo_sandbox::process::enable_ksm() {
        Ok(true) => tracing::info!(
            "enabled KSM (/sys/kernel/mm/ksm/run = 1) to merge the pages of frozen instances"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!("KSM is not available, frozen instances will not share pages: {e}")
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Revisions replaced by a deploy, still finishing their requests.
#[derive(Default)]
pub struct Draining(Mutex<Vec<Weak<AppRevision>>>);

impl Draining {
    pub fn add(&self, app: &Arc<AppRevision>) {
        let mut v = lock(&self.0);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(app));
    }

    pub fn all(&self) -> Vec<Arc<AppRevision>> {
        lock(&self.0).iter().filter_map(|w| w.upgrade()).collect()
    }

    pub fn of(&self, function: &str) -> Vec<Arc<AppRevision>> {
        lock(&self.0)
            .iter()
            .filter_map(|w| w.upgrade())
            .filter(|a| a.function == function)
            .collect()
    }
}
