//! Starting servers, running the CLI, building guest components once per test run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn nubo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nubo")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Builds the guest components once (cargo makes this a no-op when they are up to date) and
/// returns the directory holding `hello.wasm` and `testkit.wasm`.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root().join("guests");
        let out = Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .output()
            .expect("running cargo to build the guests");
        assert!(
            out.status.success(),
            "building guests failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("target/wasm32-wasip2/release")
    })
}

/// A binary built next to `nubo` (same cargo target dir and profile), e.g. the Rust Lambda
/// example's `bootstrap` (`cargo build -p rust-lambda-example`; `scripts/test.sh` does it).
pub fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(nubo_bin()).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p rust-lambda-example`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// Fails the test with a clear message when a Python module the test needs is missing.
pub fn require_python_module(module: &str, pip: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import {module}: `pip install {pip}` (.ci/run does)"
    );
}

pub fn guest(name: &str) -> PathBuf {
    guests().join(format!("{name}.wasm"))
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub home: PathBuf,
    /// Extra `nubo up` arguments, kept for restarts.
    extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// With extra `nubo up` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// With the data dir outside /tmp (which sandboxes cover anyway), under target/tmp.
    pub fn start_outside_tmp() -> Server {
        Server::start_in(
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
            &[],
        )
    }

    fn start_in(tmp: tempfile::TempDir, extra: &[&str]) -> Server {
        let data_dir = tmp.path().join("data");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir,
            home,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    /// Starts (again) on the same data directory.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._tmp.path().join("server.log"))
            .unwrap();
        let mut child = Command::new(nubo_bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--shutdown-grace",
                "5",
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("HOME", &self.home)
            .env_remove("NUBO_TOKEN")
            .env_remove("NUBO_SERVER")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting nubo up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        self.url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("nubo up did not print its address; log:\n{}", self.log()));
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("server.log")).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI against this server (token found through HOME, as a user would).
    pub fn nubo(&self, args: &[&str]) -> Output {
        self.nubo_in(Path::new("."), args)
    }

    pub fn nubo_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(nubo_bin())
            .args(args)
            .args(["--server", &self.url])
            .current_dir(dir)
            .env("HOME", &self.home)
            .env_remove("NUBO_TOKEN")
            .env_remove("NUBO_SERVER")
            .output()
            .expect("running the nubo CLI")
    }

    /// `nubo deploy` of `yaml` with the given guests copied next to it; panics on failure.
    pub fn deploy(&self, yaml: &str, components: &[&str]) -> Project {
        self.deploy_project(Project::new(yaml, components))
    }

    /// `nubo deploy` of a project; panics on failure.
    pub fn deploy_project(&self, p: Project) -> Project {
        let out = self.nubo_in(p.dir(), &["deploy"]);
        assert!(
            out.status.success(),
            "deploy failed: {}\n{}",
            text(&out.stderr),
            self.log()
        );
        p
    }

    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http()
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap()
    }

    pub fn admin_get(&self, path: &str) -> serde_json::Value {
        let r = self
            .http()
            .get(format!("{}/_nubo/api/v1{path}", self.url))
            .bearer_auth(self.token())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A project directory: `nubo.yaml` and copies of guest components.
pub struct Project {
    tmp: tempfile::TempDir,
}

impl Project {
    pub fn new(yaml: &str, components: &[&str]) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("nubo.yaml"), yaml).unwrap();
        for c in components {
            std::fs::copy(guest(c), tmp.path().join(format!("{c}.wasm"))).unwrap();
        }
        Project { tmp }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `nubo.yaml` next to a copy of the test app `tests/apps/<app>`.
    pub fn app(yaml: &str, app: &str) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("nubo.yaml"), yaml).unwrap();
        let from = repo_root().join("crates/nubo/tests/apps").join(app);
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        Project { tmp }
    }
}

/// Why process-app tests cannot run here, if they cannot (not root, no cgroups).
pub fn process_sandbox_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts.contains("cgroup") {
        return Some("no cgroup hierarchy is mounted".into());
    }
    None
}

/// Skips the calling test (with a message) where process apps cannot run.
#[macro_export]
macro_rules! require_process_sandbox {
    () => {
        if let Some(why) = $crate::harness::process_sandbox_missing() {
            eprintln!("SKIPPED: process sandbox unavailable: {why}");
            return;
        }
    };
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` until it returns true or the deadline passes.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}
