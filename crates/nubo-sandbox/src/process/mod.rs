//! The `process` kind: an unchanged HTTP server in namespaces and a cgroup of its own.
//!
//! An instance starts in one of three ways, reported as its [`StartMode`]:
//! - `new`: the server runs its own binary as the sandbox init ([`init`]), which starts the
//!   app's command;
//! - `fork`: a seed process that imported a Python WSGI/ASGI app once forks a child serving on
//!   its own port ([`seed`]);
//! - `thaw`: an instance started earlier and frozen with the cgroup freezer is thawed.
//!
//! Whatever the mode, an instance is a port on 127.0.0.1 plus a cgroup; the server proxies
//! requests to the port and reads CPU and memory from the cgroup.

mod cgroup;
pub mod init;
mod logs;
mod seed;

pub use cgroup::{Cgroup, Cgroups, Limits};
pub use seed::{Parked, PythonApp, Seed};

use crate::LogFn;
use futures::future::BoxFuture;
pub use logs::Serving;
use logs::{StderrTail, pump};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

/// How an instance came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    New,
    Fork,
    Thaw,
}

impl StartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StartMode::New => "new",
            StartMode::Fork => "fork",
            StartMode::Thaw => "thaw",
        }
    }
}

/// Everything needed to start instances of one revision.
pub struct AppSpec {
    pub function: String,
    pub revision: i64,
    /// The unpacked, read-only app directory.
    pub dir: PathBuf,
    pub command: Vec<String>,
    /// The function's `env` plus Nubo's variables (`PORT` and `NUBO_INSTANCE` are added per
    /// instance).
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Readiness probe path; `None` is a TCP connect.
    pub ready: Option<String>,
    pub start_timeout: Duration,
    /// Let KSM merge identical pages (instances kept frozen).
    pub ksm: bool,
    pub log: LogFn,
    pub cgroups: Arc<Cgroups>,
    /// The `nubo` binary, run as the sandbox init.
    pub init_exe: PathBuf,
    /// Host directories instances must not see (the server's data dir).
    pub hide: Vec<PathBuf>,
}

/// Size of each instance's private `/tmp` (charged to its memory limit as it fills).
fn tmp_size(limits: &Limits) -> u64 {
    limits.memory / 2
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// `exited with status 1`, `killed by signal 9`, ...
    pub status: String,
    /// The kernel killed a process of the instance for want of memory.
    pub oom: bool,
}

/// When a starting instance counts as ready.
pub enum Ready<'a> {
    /// Probe `$PORT`: a TCP connect, or `GET path` answering 2xx.
    Probe(Option<&'a str>),
    /// The instance tells the server itself (a Lambda runtime's first `next`): ready when the
    /// future resolves, a start failure with its reason when it fails.
    Signal(BoxFuture<'static, Result<(), String>>),
}

/// A start that did not end with a ready instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

pub struct ProcessInstance {
    pub id: Arc<str>,
    pub revision: i64,
    pub port: u16,
    mode: AtomicU8,
    created: Instant,
    /// How long the start took (for thawed ones: the thaw).
    start_took: Mutex<Duration>,
    cgroup: Arc<Cgroup>,
    stopping: AtomicBool,
    exit: Arc<watch::Sender<Option<Exit>>>,
    /// The sandbox init, for `new` instances (forked ones are signalled through the cgroup).
    pid: Option<u32>,
    /// CPU time (µs) already charged to invocations, see [`ProcessInstance::charge_cpu`].
    charged_cpu_us: AtomicU64,
    /// Tags output lines with the invocation being served (one-at-a-time instances).
    pub serving: Serving,
}

impl ProcessInstance {
    pub fn mode(&self) -> StartMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => StartMode::Fork,
            2 => StartMode::Thaw,
            _ => StartMode::New,
        }
    }

    fn set_mode(&self, mode: StartMode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Nubo is stopping it (so its end is expected, not a crash).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    pub fn start_took(&self) -> Duration {
        *self.start_took.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_start_took(&self, took: Duration) {
        *self.start_took.lock().unwrap_or_else(|p| p.into_inner()) = took;
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.cgroup.cpu_seconds()
    }

    /// The CPU time (µs) the instance used since the last call, for the invocation that just
    /// finished: every microsecond of the instance, start-up included, is charged once.
    pub fn charge_cpu(&self) -> i64 {
        let now = (self.cgroup.cpu_seconds() * 1e6) as u64;
        let before = self.charged_cpu_us.fetch_max(now, Ordering::Relaxed);
        now.saturating_sub(before) as i64
    }

    pub fn memory_bytes(&self) -> u64 {
        self.cgroup.memory_bytes()
    }

    /// `Some` once the instance has ended.
    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Waits until the instance ends.
    pub async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return Exit {
                    status: "gone".into(),
                    oom: false,
                };
            }
        }
    }

    /// Freezes every process of the instance (blocking; run off the async threads).
    pub fn freeze(&self) -> std::io::Result<()> {
        self.cgroup.freeze()
    }

    /// Thaws a frozen instance; from now on it reports `thaw` as its start.
    pub fn thaw(&self) -> std::io::Result<()> {
        let t = Instant::now();
        self.cgroup.thaw()?;
        self.set_mode(StartMode::Thaw);
        self.set_start_took(t.elapsed());
        Ok(())
    }

    /// SIGTERM, up to `grace` to finish, then SIGKILL to every process left in the cgroup.
    pub async fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        let cg = self.cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || cg.thaw()).await;
        if self.exited().is_none() {
            match self.pid {
                // SAFETY: kill(2) on our own child.
                Some(pid) => unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                },
                None => self.cgroup.signal(libc::SIGTERM),
            }
            let _ = tokio::time::timeout(grace, self.wait_exit()).await;
        }
        // Killing waits for the cgroup to empty: off the async threads.
        let cg = self.cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || cg.kill()).await;
    }
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        // A safety net: whoever drops an instance without stopping it leaves nothing behind
        // (the cgroup directory goes with the last handle on it).
        if !self.cgroup.pids().is_empty() {
            self.cgroup.kill();
        }
    }
}

/// Turns on the kernel's same-page merging (`/sys/kernel/mm/ksm/run`) if it is off, so the
/// pages of frozen instances (started with `PR_SET_MEMORY_MERGE`) are merged. Returns whether
/// this call turned it on.
pub fn enable_ksm() -> std::io::Result<bool> {
    let run = std::path::Path::new("/sys/kernel/mm/ksm/run");
    if std::fs::read_to_string(run)?.trim() != "0" {
        return Ok(false);
    }
    std::fs::write(run, "1")?;
    Ok(true)
}

/// A free port on 127.0.0.1, for the instance to listen on.
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) if c > 128 => format!("killed by signal {}", c - 128),
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

impl AppSpec {
    fn instance_env(
        &self,
        id: &str,
        port: u16,
        extra: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", "/tmp".to_string()),
            ("LANG", "C.UTF-8".to_string()),
            ("PYTHONUNBUFFERED", "1".to_string()),
            ("PORT", port.to_string()),
            ("NUBO_INSTANCE", id.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.env.iter().cloned());
        env.extend(extra.iter().cloned());
        env
    }

    /// Starts a `new` instance; returns once it is ready.
    pub async fn start_new(&self, id: &str) -> Result<ProcessInstance, StartError> {
        let ready = Ready::Probe(self.ready.as_deref());
        self.start_sandboxed(id, &self.command, None, ready, None, &[])
            .await
    }

    /// Starts a `new` instance that calls the server back on `port` (which the server listens
    /// on, for this instance alone), with `env` added; ready when `ready` resolves.
    pub async fn start_signalled(
        &self,
        id: &str,
        port: u16,
        env: &[(String, String)],
        ready: BoxFuture<'static, Result<(), String>>,
    ) -> Result<ProcessInstance, StartError> {
        let ready = Ready::Signal(ready);
        self.start_sandboxed(id, &self.command, None, ready, Some(port), env)
            .await
    }

    /// Runs `command` under the sandbox init, with `control` (if any) as its fd 3 and `port`
    /// (a free one if `None`) as `$PORT`; returns once `ready`.
    async fn start_sandboxed(
        &self,
        id: &str,
        command: &[String],
        control: Option<std::os::fd::RawFd>,
        ready: Ready<'_>,
        port: Option<u16>,
        extra_env: &[(String, String)],
    ) -> Result<ProcessInstance, StartError> {
        let started = Instant::now();
        let fail = |what: &str, e: &dyn std::fmt::Display| StartError(format!("{what}: {e}"));
        let port = match port {
            Some(p) => p,
            None => free_port().map_err(|e| fail("finding a free port", &e))?,
        };
        let cgroup = self
            .cgroups
            .create(id, &self.limits)
            .map_err(|e| fail("creating the instance's cgroup", &e))?;
        let args = init::InitArgs {
            app: self.dir.clone(),
            hostname: id.chars().take(63).collect(),
            tmp_size: tmp_size(&self.limits),
            cgroup_procs: cgroup.procs_files(),
            hide: self.hide.clone(),
            ksm: self.ksm,
            command: command.to_vec(),
        };
        let mut cmd = tokio::process::Command::new(&self.init_exe);
        cmd.args(args.to_args())
            .env_clear()
            .envs(self.instance_env(id, port, extra_env))
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(fd) = control {
            // SAFETY: dup2 and fcntl are async-signal-safe; fd 3 stays open across exec.
            unsafe {
                cmd.pre_exec(move || {
                    let r = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Err(fail("starting the sandbox", &e)),
        };
        let tail = StderrTail::default();
        let iid: Arc<str> = id.into();
        let serving = Serving::default();
        if let Some(out) = child.stdout.take() {
            let s = serving.clone();
            tokio::spawn(pump(out, "stdout", iid.clone(), s, self.log.clone(), None));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(
                err,
                "stderr",
                iid.clone(),
                serving.clone(),
                self.log.clone(),
                Some(tail.clone()),
            ));
        }
        let (exit_tx, _) = watch::channel(None);
        let exit = Arc::new(exit_tx);
        let instance = ProcessInstance {
            id: iid,
            revision: self.revision,
            port,
            mode: AtomicU8::new(StartMode::New as u8),
            created: started,
            start_took: Mutex::new(Duration::ZERO),
            pid: child.id(),
            cgroup: Arc::new(cgroup),
            stopping: AtomicBool::new(false),
            exit: exit.clone(),
            charged_cpu_us: AtomicU64::new(0),
            serving,
        };
        {
            let exit = exit.clone();
            let cgroup = instance.cgroup.clone();
            tokio::spawn(async move {
                let status = match child.wait().await {
                    Ok(s) => describe(s),
                    Err(e) => format!("could not be waited for: {e}"),
                };
                exit.send_replace(Some(Exit {
                    status,
                    oom: cgroup.oom_kills() > 0,
                }));
            });
        }
        if let Err(e) = self.wait_ready(&instance, &tail, ready).await {
            // Stopped here, not by `Drop`, whose cgroup kill would block an async thread.
            instance.stop(Duration::ZERO).await;
            return Err(e);
        }
        instance.set_start_took(started.elapsed());
        Ok(instance)
    }

    /// Waits until `ready`, the instance exits, or `start_timeout`.
    async fn wait_ready(
        &self,
        i: &ProcessInstance,
        tail: &StderrTail,
        ready: Ready<'_>,
    ) -> Result<(), StartError> {
        let ready = match ready {
            Ready::Probe(path) => path,
            Ready::Signal(signal) => return self.wait_signal(i, tail, signal).await,
        };
        let deadline = Instant::now() + self.start_timeout;
        // Short polls: a forked instance is ready within milliseconds, and a probe is cheap.
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(exit) = i.exited() {
                return Err(StartError(format!(
                    "the app {} before it was ready{}",
                    exit.status,
                    tail.render()
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(left.min(Duration::from_secs(2)), probe(i.port, ready));
            if attempt.await == Ok(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let what = match ready {
                    Some(p) => format!("GET {p} did not answer 2xx"),
                    None => format!("nothing listened on 127.0.0.1:$PORT ({})", i.port),
                };
                return Err(StartError(format!(
                    "the app was not ready within start_timeout ({:?}): {what}{}",
                    self.start_timeout,
                    tail.render()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

impl AppSpec {
    async fn wait_signal(
        &self,
        i: &ProcessInstance,
        tail: &StderrTail,
        signal: BoxFuture<'static, Result<(), String>>,
    ) -> Result<(), StartError> {
        let timeout = tokio::time::sleep(self.start_timeout);
        // The signal first: a runtime reports its init error just before it exits.
        tokio::select! {
            biased;
            r = signal => r.map_err(|why| StartError(format!("{why}{}", tail.render()))),
            exit = i.wait_exit() => Err(StartError(format!(
                "the runtime {} before it asked for its first invocation{}",
                exit.status,
                tail.render()
            ))),
            _ = timeout => Err(StartError(format!(
                "the runtime did not ask for its first invocation within start_timeout ({:?}){}",
                self.start_timeout,
                tail.render()
            ))),
        }
    }
}

/// One readiness check: a TCP connect, or `GET path` answering 2xx.
pub async fn probe(port: u16, path: Option<&str>) -> bool {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let Some(path) = path else { return true };
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match conn.read(&mut head[got..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    // `HTTP/1.x 2..`
    head.starts_with(b"HTTP/1.") && head[9] == b'2'
}
