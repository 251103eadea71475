//! The `fork` start mode: a seed process that imported a Python app once forks instances.
//!
//! The seed runs `seed.py` in a sandbox like any `new` instance, with one end of a
//! `SOCK_SEQPACKET` socket pair as fd 3. For each instance the server sends
//! `fork <port> <id>` with the write ends of two fresh pipes attached (`SCM_RIGHTS`): they
//! become the child's stdout and stderr, so its lines reach the log under its own id. The seed
//! answers `forked <id> <pid>` and later `exit <pid> <status>`. The server moves the child
//! into its own cgroup (limits, freezer, figures) as soon as it knows the pid.
//!
//! Forked instances share the seed's mount, PID, IPC and UTS namespaces (creating new ones
//! needs privileges the seed has dropped); they are isolated from every other revision and
//! function, not from their siblings. See ARCHITECTURE.md.

use super::logs::{Serving, StderrTail, pump};
use super::{AppSpec, Exit, ProcessInstance, Ready, StartError, StartMode, free_port};
use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

const SEED_PY: &str = include_str!("seed.py");

/// `python: { wsgi | asgi: "module:attr" }` of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonApp {
    /// `wsgi` or `asgi`.
    pub kind: &'static str,
    pub target: String,
}

impl PythonApp {
    /// The command of a plain (`new`) instance of this app.
    pub fn serve_command(&self) -> Vec<String> {
        self.command("serve")
    }

    fn command(&self, mode: &str) -> Vec<String> {
        ["python3", "-c", SEED_PY, mode, self.kind, &self.target]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

type ExitSender = Arc<watch::Sender<Option<Exit>>>;

/// A child being forked: where its pid goes, and how its end will be reported.
struct Pending {
    pid: oneshot::Sender<Result<u32, String>>,
    exit: ExitSender,
    cgroup: Arc<super::Cgroup>,
}

struct Children {
    /// Instance id -> the fork under way.
    pending: HashMap<String, Pending>,
    /// Pid (in the seed's namespace) -> how its end is reported.
    running: HashMap<u32, (ExitSender, Arc<super::Cgroup>)>,
}

/// A forked child in its own cgroup, waiting to import the app and serve. Dropped, its `go`
/// pipe closes and the child exits by itself.
pub struct Parked {
    id: Arc<str>,
    revision: i64,
    port: u16,
    cgroup: Arc<super::Cgroup>,
    exit: ExitSender,
    tail: StderrTail,
    serving: Serving,
    go: OwnedFd,
    nspid: u32,
}

impl Parked {
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }
}

pub struct Seed {
    /// The seed's own sandbox.
    pub instance: ProcessInstance,
    control: OwnedFd,
    children: Arc<Mutex<Children>>,
}

impl Seed {
    /// Starts the seed and waits until it has imported the app.
    pub async fn start(spec: &AppSpec, app: &PythonApp, id: &str) -> Result<Seed, StartError> {
        let (ours, theirs) = seqpacket_pair()
            .map_err(|e| StartError(format!("creating the seed's control socket: {e}")))?;
        let instance = spec
            .start_sandboxed(
                id,
                &app.command("seed"),
                Some(theirs.as_raw_fd()),
                Ready::Probe(None),
                None,
                &[],
            )
            .await?;
        drop(theirs);
        let children = Arc::new(Mutex::new(Children {
            pending: HashMap::new(),
            running: HashMap::new(),
        }));
        let reader = ours
            .try_clone()
            .map_err(|e| StartError(format!("cloning the seed's control socket: {e}")))?;
        let c = children.clone();
        std::thread::Builder::new()
            .name(format!("seed-{id}"))
            .spawn(move || read_control(reader, c))
            .map_err(|e| StartError(format!("starting the seed reader: {e}")))?;
        Ok(Seed {
            instance,
            control: ours,
            children,
        })
    }

    pub fn alive(&self) -> bool {
        self.instance.exited().is_none()
    }

    /// Forks a new instance from the seed and waits until it is ready.
    pub async fn fork(&self, spec: &AppSpec, id: &str) -> Result<ProcessInstance, StartError> {
        let parked = self.park(spec, id).await?;
        self.go(spec, parked).await
    }

    /// Forks a child and moves it into its own cgroup, where it waits (before it imports
    /// anything) for [`Seed::go`]. Moving is most of a fork's cost on cgroup v1, so a parked
    /// spare takes it off the path of the request that needs the instance.
    pub async fn park(&self, spec: &AppSpec, id: &str) -> Result<Parked, StartError> {
        let started = Instant::now();
        let fail = |what: &str, e: &dyn std::fmt::Display| StartError(format!("{what}: {e}"));
        let port = free_port().map_err(|e| fail("finding a free port", &e))?;
        let cgroup = Arc::new(
            spec.cgroups
                .create(id, &spec.limits)
                .map_err(|e| fail("creating the instance's cgroup", &e))?,
        );
        let (out_r, out_w) = pipe().map_err(|e| fail("creating a pipe", &e))?;
        let (err_r, err_w) = pipe().map_err(|e| fail("creating a pipe", &e))?;
        let (go_r, go_w) = pipe().map_err(|e| fail("creating a pipe", &e))?;
        let (tx, rx) = oneshot::channel();
        let (exit_tx, _) = watch::channel(None);
        let exit = Arc::new(exit_tx);
        self.lock().pending.insert(
            id.to_string(),
            Pending {
                pid: tx,
                exit: exit.clone(),
                cgroup: cgroup.clone(),
            },
        );
        let msg = format!("fork {port} {id}");
        let fds = [out_w.as_raw_fd(), err_w.as_raw_fd(), go_r.as_raw_fd()];
        if let Err(e) = send_waiting(&self.control, msg.as_bytes(), &fds, spec.start_timeout).await
        {
            self.lock().pending.remove(id);
            return Err(fail("asking the seed to fork", &e));
        }
        drop((out_w, err_w, go_r));
        let iid: Arc<str> = id.into();
        let tail = StderrTail::default();
        let serving = Serving::default();
        for (fd, stream, tail) in [
            (out_r, "stdout", None),
            (err_r, "stderr", Some(tail.clone())),
        ] {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| fail("reading the instance's output", &e))?;
            let s = serving.clone();
            tokio::spawn(pump(rx, stream, iid.clone(), s, spec.log.clone(), tail));
        }
        let nspid = match tokio::time::timeout(spec.start_timeout, rx).await {
            Ok(Ok(Ok(pid))) => pid,
            Ok(Ok(Err(why))) => return Err(StartError(format!("the seed could not fork: {why}"))),
            _ => {
                // A fork that arrives later is killed by the reader (no pending entry).
                self.lock().pending.remove(id);
                return Err(StartError("the seed did not fork in time".into()));
            }
        };
        let forked_at = started.elapsed();
        let Some(host_pid) = self.host_pid(nspid) else {
            return Err(StartError(format!(
                "the forked instance ended at once{}",
                tail.render()
            )));
        };
        // The child waits on the `go` pipe until it is in its own cgroup, so its memory and
        // processes count against its own limits from its first page on. (On cgroup v1 a
        // move waits for RCU grace periods, ~2 ms per controller: most of a fork's time.)
        let cg = cgroup.clone();
        let moved: Result<(), String> = tokio::task::spawn_blocking(move || cg.add(host_pid))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(why) = moved {
            self.kill(nspid);
            return Err(StartError(format!(
                "the forked instance could not be moved into its cgroup: {why}{}",
                tail.render()
            )));
        }
        tracing::debug!(
            "parked {id}: pid known after {forked_at:?}, in its cgroup after {:?}",
            started.elapsed()
        );
        Ok(Parked {
            id: iid,
            revision: spec.revision,
            port,
            cgroup,
            exit,
            tail,
            serving,
            go: go_w,
            nspid,
        })
    }

    /// Lets a parked child go on: it imports the app and serves; returns once it is ready.
    pub async fn go(&self, spec: &AppSpec, parked: Parked) -> Result<ProcessInstance, StartError> {
        let started = Instant::now();
        let Parked {
            id,
            revision,
            port,
            cgroup,
            exit,
            tail,
            serving,
            go,
            nspid,
        } = parked;
        // SAFETY: writing one byte from a live buffer to a pipe we own.
        let n = unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        let went = if n == 1 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        drop(go);
        let instance = ProcessInstance {
            id,
            revision,
            port,
            mode: AtomicU8::new(StartMode::Fork as u8),
            created: started,
            start_took: Mutex::new(Duration::ZERO),
            cgroup,
            stopping: Default::default(),
            exit,
            pid: None,
            charged_cpu_us: Default::default(),
            serving,
        };
        let ready = match went {
            Ok(()) => {
                spec.wait_ready(&instance, &tail, Ready::Probe(spec.ready.as_deref()))
                    .await
            }
            Err(e) => Err(StartError(format!(
                "the parked instance is gone: {e}{}",
                tail.render()
            ))),
        };
        if let Err(e) = ready {
            self.kill(nspid);
            instance.stop(Duration::ZERO).await;
            return Err(e);
        }
        instance.set_start_took(started.elapsed());
        Ok(instance)
    }

    /// Asks the seed to kill one of its children.
    fn kill(&self, nspid: u32) {
        send_kill(&self.control, nspid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Children> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host pid of a process the seed knows as `nspid`: the one in the seed's cgroup whose
    /// innermost `NSpid` matches.
    fn host_pid(&self, nspid: u32) -> Option<u32> {
        self.instance.cgroup.pids().into_iter().find_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            let inner: u32 = line.split_whitespace().last()?.parse().ok()?;
            (inner == nspid).then_some(pid as u32)
        })
    }
}

/// Reads the seed's messages until it closes the socket (it ended).
fn read_control(fd: OwnedFd, children: Arc<Mutex<Children>>) {
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let line = String::from_utf8_lossy(&buf[..n as usize]).to_string();
        let mut parts = line.trim().splitn(3, ' ');
        let mut c = children.lock().unwrap_or_else(|p| p.into_inner());
        match (parts.next(), parts.next(), parts.next()) {
            (Some("forked"), Some(id), Some(pid)) => {
                match (c.pending.remove(id), pid.parse::<u32>()) {
                    (Some(p), Ok(n)) => {
                        // Registered before anyone hears of the pid: no exit can be missed.
                        c.running.insert(n, (p.exit, p.cgroup));
                        if p.pid.send(Ok(n)).is_err() {
                            send_kill(&fd, n);
                        }
                    }
                    // Nobody waits for it any more (timed out): it must not live on.
                    (None, Ok(n)) => send_kill(&fd, n),
                    (_, Err(_)) => tracing::warn!("a seed reported a bad pid: {line:?}"),
                }
            }
            (Some("failed"), Some(id), Some(why)) => {
                if let Some(p) = c.pending.remove(id) {
                    let _ = p.pid.send(Err(why.to_string()));
                }
            }
            (Some("exit"), Some(pid), Some(status)) => {
                if let Some((exit, cgroup)) = pid.parse().ok().and_then(|p| c.running.remove(&p)) {
                    exit.send_replace(Some(Exit {
                        status: status.to_string(),
                        oom: cgroup.oom_kills() > 0,
                    }));
                }
            }
            _ => tracing::warn!("unexpected message from a seed: {line:?}"),
        }
    }
    // The seed is gone, and with it every child (they lived in its PID namespace).
    let mut c = children.lock().unwrap_or_else(|p| p.into_inner());
    for (_, (exit, _)) in c.running.drain() {
        exit.send_replace(Some(Exit {
            status: "ended with its seed".into(),
            oom: false,
        }));
    }
    c.pending.clear();
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair fills the two fds on success; we own them afterwards.
    unsafe {
        if libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two fds on success; we own them afterwards.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Asks the seed to kill child `nspid`, retrying for up to a second while its queue is full
/// (an orphaned child must not live on). Blocks: called from the reader thread and on errors.
fn send_kill(sock: &OwnedFd, nspid: u32) {
    let msg = format!("kill {nspid}");
    for _ in 0..1000 {
        match send_with_fds(sock, msg.as_bytes(), &[]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            _ => return,
        }
    }
}

/// Sends like [`send_with_fds`], waiting (up to `limit`) while the seed's queue is full.
async fn send_waiting(
    sock: &OwnedFd,
    bytes: &[u8],
    fds: &[RawFd],
    limit: Duration,
) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match send_with_fds(sock, bytes, fds) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            other => return other,
        }
    }
}

/// One message with file descriptors attached (`SCM_RIGHTS`). Never blocks: a seed that stopped
/// reading fails the fork instead of stalling the caller.
fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = if fds.is_empty() {
        0
    } else {
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr points at live buffers sized by CMSG_SPACE; the cmsg header is written
    // inside `control` through the CMSG_* helpers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(fds),
            );
        }
        if libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
