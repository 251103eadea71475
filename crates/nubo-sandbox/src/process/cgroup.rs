//! One cgroup per process instance: limits, freezing, killing, and the figures `nubo top` shows.
//!
//! Both layouts are supported: the unified v2 hierarchy (most hosts), and v1 with one mount per
//! controller (this project's CI machines). Instance cgroups live under `nubo/<server pid>/` so
//! several servers on one host never collide.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Layout {
    V2 {
        root: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
    },
}

/// The cgroup hierarchy of this host, as far as Nubo uses it.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    /// `nubo/<server pid>`, relative to each hierarchy's root.
    base: PathBuf,
}

/// Limits of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory: u64,
    /// Cores; `None` is no quota.
    pub cpu: Option<f64>,
    pub pids: u64,
}

impl Cgroups {
    /// Finds the hierarchy from `/proc/self/mountinfo`; an error says what is missing.
    pub fn detect() -> Result<Cgroups, String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let base = PathBuf::from(format!("nubo/{}", std::process::id()));
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in info.lines() {
            // `id parent major:minor root mountpoint options [optional...] - fstype source superopts`
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = left.split(' ').nth(4).unwrap_or_default();
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or_default();
            let superopts = r.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" => {
                    let controllers =
                        std::fs::read_to_string(Path::new(mount).join("cgroup.controllers"))
                            .unwrap_or_default();
                    let has = |c| controllers.split_whitespace().any(|x| x == c);
                    if has("memory") && has("pids") && v2.is_none() {
                        v2 = Some(PathBuf::from(mount));
                    }
                }
                "cgroup" => {
                    for opt in superopts.split(',') {
                        v1.push((opt.to_string(), PathBuf::from(mount)));
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2 {
            return Ok(Cgroups {
                layout: Layout::V2 { root },
                base,
            });
        }
        let find = |c: &str| {
            v1.iter()
                .find(|(o, _)| o == c)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| format!("no cgroup v2 hierarchy with the memory and pids controllers, and no v1 `{c}` controller is mounted"))
        };
        Ok(Cgroups {
            layout: Layout::V1 {
                memory: find("memory")?,
                cpu: find("cpu")?,
                cpuacct: find("cpuacct")?,
                pids: find("pids")?,
                freezer: find("freezer")?,
            },
            base,
        })
    }

    pub fn version(&self) -> u8 {
        match self.layout {
            Layout::V2 { .. } => 2,
            Layout::V1 { .. } => 1,
        }
    }

    /// Creates the cgroup of one instance with its limits.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<Cgroup> {
        let rel = self.base.join(name);
        match &self.layout {
            Layout::V2 { root } => {
                // Controllers must be enabled on every level above the instance.
                let mut dir = root.clone();
                for part in self.base.components() {
                    enable_v2_controllers(&dir)?;
                    dir.push(part);
                    mkdir(&dir)?;
                }
                enable_v2_controllers(&dir)?;
                let d = root.join(&rel);
                mkdir(&d)?;
                write(&d.join("memory.max"), limits.memory)?;
                let swap = d.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, 0)?;
                }
                write(&d.join("pids.max"), limits.pids)?;
                if let Some(cores) = limits.cpu {
                    write(&d.join("cpu.max"), format!("{} 100000", quota(cores)))?;
                }
                Ok(Cgroup {
                    layout: CgroupDirs::V2(d),
                })
            }
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => {
                let m = memory.join(&rel);
                let c = cpu.join(&rel);
                let a = cpuacct.join(&rel);
                let p = pids.join(&rel);
                let f = freezer.join(&rel);
                for d in [&m, &a, &p, &f] {
                    std::fs::create_dir_all(d)?;
                }
                if limits.cpu.is_some() {
                    std::fs::create_dir_all(&c)?;
                }
                write(&m.join("memory.limit_in_bytes"), limits.memory)?;
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, limits.memory)?;
                }
                write(&p.join("pids.max"), limits.pids)?;
                if let Some(cores) = limits.cpu {
                    write(&c.join("cpu.cfs_period_us"), 100000)?;
                    write(&c.join("cpu.cfs_quota_us"), quota(cores))?;
                }
                // Every controller joined costs a migration (RCU waits) per forked instance:
                // `cpu` only when there is a quota to enforce.
                let mut dirs = vec![m.clone(), p, f.clone(), a.clone()];
                if limits.cpu.is_some() && a != c {
                    dirs.push(c.clone());
                }
                Ok(Cgroup {
                    layout: CgroupDirs::V1 {
                        memory: m,
                        cpuacct: a,
                        freezer: f,
                        all: dirs,
                    },
                })
            }
        }
    }

    /// The hierarchy roots (one for v2; one per controller for v1).
    fn roots(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { root } => vec![root.clone()],
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => vec![
                memory.clone(),
                cpu.clone(),
                cpuacct.clone(),
                pids.clone(),
                freezer.clone(),
            ],
        }
    }

    /// An existing cgroup at `rel` (relative to every hierarchy root), without touching it.
    fn open(&self, rel: &Path) -> Cgroup {
        match &self.layout {
            Layout::V2 { root } => Cgroup {
                layout: CgroupDirs::V2(root.join(rel)),
            },
            Layout::V1 {
                memory,
                cpuacct,
                freezer,
                ..
            } => {
                let mut all: Vec<PathBuf> = self.roots().iter().map(|r| r.join(rel)).collect();
                all.dedup();
                Cgroup {
                    layout: CgroupDirs::V1 {
                        memory: memory.join(rel),
                        cpuacct: cpuacct.join(rel),
                        freezer: freezer.join(rel),
                        all,
                    },
                }
            }
        }
    }

    /// Removes what earlier servers (now gone, perhaps killed) left behind under `nubo/`:
    /// instances are thawed and killed first (a frozen v1 task ignores SIGKILL until thawed).
    pub fn clean_stale(&self) {
        let mut stale: Vec<(String, String)> = Vec::new();
        for root in self.roots() {
            let Ok(servers) = std::fs::read_dir(root.join("nubo")) else {
                continue;
            };
            for server in servers.flatten().filter(|e| e.path().is_dir()) {
                let name = server.file_name().to_string_lossy().to_string();
                let alive = name
                    .parse::<i32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    continue;
                }
                let Ok(instances) = std::fs::read_dir(server.path()) else {
                    continue;
                };
                for i in instances.flatten().filter(|e| e.path().is_dir()) {
                    let pair = (name.clone(), i.file_name().to_string_lossy().to_string());
                    if !stale.contains(&pair) {
                        stale.push(pair);
                    }
                }
                stale.push((name, String::new()));
            }
        }
        for (server, instance) in &stale {
            if instance.is_empty() {
                continue;
            }
            let cg = self.open(&Path::new("nubo").join(server).join(instance));
            let _ = cg.thaw();
            cg.kill(); // waits until empty; dropping it removes the directories
        }
        for (server, _) in stale {
            for root in self.roots() {
                let _ = std::fs::remove_dir(root.join("nubo").join(&server));
            }
        }
    }

    /// Removes this server's (empty) base directories, at shutdown; false while instance
    /// cgroups are still there.
    pub fn remove_base(&self) -> bool {
        let mut all = true;
        for root in self.roots() {
            let dir = root.join(&self.base);
            all &= !dir.exists() || std::fs::remove_dir(&dir).is_ok();
        }
        all
    }
}

fn quota(cores: f64) -> u64 {
    ((cores * 100000.0) as u64).max(1000)
}

fn mkdir(d: &Path) -> io::Result<()> {
    match std::fs::create_dir(d) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn enable_v2_controllers(dir: &Path) -> io::Result<()> {
    let want = ["memory", "pids", "cpu"];
    let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let line: Vec<String> = want
        .iter()
        .filter(|c| have.split_whitespace().any(|h| h == **c))
        .map(|c| format!("+{c}"))
        .collect();
    write(&dir.join("cgroup.subtree_control"), line.join(" "))
}

fn write(path: &Path, value: impl ToString) -> io::Result<()> {
    std::fs::write(path, value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.events, memory.oom_control).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[derive(Debug)]
enum CgroupDirs {
    V2(PathBuf),
    V1 {
        memory: PathBuf,
        cpuacct: PathBuf,
        freezer: PathBuf,
        all: Vec<PathBuf>,
    },
}

/// The cgroup of one instance.
#[derive(Debug)]
pub struct Cgroup {
    layout: CgroupDirs,
}

impl Cgroup {
    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.layout {
            CgroupDirs::V2(d) => vec![d.join("cgroup.procs")],
            CgroupDirs::V1 { all, .. } => all.iter().map(|d| d.join("cgroup.procs")).collect(),
        }
    }

    /// Moves a process in.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for f in self.procs_files() {
            write(&f, pid)?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<i32> {
        let f = match &self.layout {
            CgroupDirs::V2(d) => d.join("cgroup.procs"),
            CgroupDirs::V1 { freezer, .. } => freezer.join("cgroup.procs"),
        };
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Stops every process of the instance (no CPU) until [`Cgroup::thaw`].
    pub fn freeze(&self) -> io::Result<()> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> io::Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, &str) = match &self.layout {
            CgroupDirs::V2(d) => (
                d.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                d.join("cgroup.events"),
                if frozen { "frozen 1" } else { "frozen 0" },
            ),
            CgroupDirs::V1 { freezer, .. } => (
                freezer.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
                freezer.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        };
        write(&file, value)?;
        // The write starts the change; wait until every task has reached it.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_micros(20);
        loop {
            let state = std::fs::read_to_string(&state_file)?;
            if state.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} did not reach {done:?} within 2 s",
                    state_file.display()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to every process of the instance.
    pub fn signal(&self, signal: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Kills every process, including ones forked while this runs, and waits until none is left.
    pub fn kill(&self) {
        if let CgroupDirs::V2(d) = &self.layout {
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            // Frozen, nothing can fork between reading the list and the signals.
            let _ = self.set_frozen(true);
            self.signal(libc::SIGKILL);
            let _ = self.set_frozen(false);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Bytes of memory charged to the instance (including its page cache and tmpfs).
    pub fn memory_bytes(&self) -> u64 {
        match &self.layout {
            CgroupDirs::V2(d) => read_u64(&d.join("memory.current")),
            CgroupDirs::V1 { memory, .. } => read_u64(&memory.join("memory.usage_in_bytes")),
        }
        .unwrap_or(0)
    }

    /// CPU time used by the instance, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        match &self.layout {
            CgroupDirs::V2(d) => {
                read_key(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) as f64 / 1e6
            }
            CgroupDirs::V1 { cpuacct, .. } => {
                read_u64(&cpuacct.join("cpuacct.usage")).unwrap_or(0) as f64 / 1e9
            }
        }
    }

    /// Processes killed by the kernel for want of memory so far.
    pub fn oom_kills(&self) -> u64 {
        match &self.layout {
            CgroupDirs::V2(d) => read_key(&d.join("memory.events"), "oom_kill"),
            CgroupDirs::V1 { memory, .. } => {
                read_key(&memory.join("memory.oom_control"), "oom_kill")
            }
        }
        .unwrap_or(0)
    }

    /// Removes the (empty) cgroup; also done when the last handle is dropped.
    pub fn remove(&self) {
        let dirs: Vec<&PathBuf> = match &self.layout {
            CgroupDirs::V2(d) => vec![d],
            CgroupDirs::V1 { all, .. } => all.iter().collect(),
        };
        for d in dirs {
            // A cgroup whose last process is still exiting is busy for a moment.
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}
