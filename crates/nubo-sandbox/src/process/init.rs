//! The sandbox's first process: `nubo __sandbox-init [options] -- COMMAND...`.
//!
//! The server starts this (its own binary) for every `new` instance. It joins the instance's
//! cgroup, enters new mount, PID, IPC and UTS namespaces, makes the whole file tree read-only
//! except a private `/tmp` (and `/dev/shm`), then forks the namespace's PID 1, which mounts a
//! `/proc` that shows only the instance's processes and forks the app without any capability.
//!
//! The app is never PID 1 itself: PID 1 ignores signals it has no handler for, so a plain
//! `python3 app.py` would ignore SIGTERM. Our PID 1 forwards SIGTERM/SIGINT/SIGHUP to every
//! process of the namespace, reaps orphans, and exits with the app's status; the outer process
//! forwards signals to it and exits with the same status, so the server sees the app's exit.
//!
//! Runs single-threaded, before any other code of the binary, so `fork` is safe here.

use std::ffi::{CString, c_char};
use std::path::PathBuf;

/// The first argument that selects this entry point.
pub const INIT_ARG: &str = "__sandbox-init";

#[derive(Debug, Default)]
pub(crate) struct InitArgs {
    pub app: PathBuf,
    pub hostname: String,
    pub tmp_size: u64,
    pub cgroup_procs: Vec<PathBuf>,
    /// Directories covered by an empty read-only tmpfs (the server's data dir: tokens, store).
    pub hide: Vec<PathBuf>,
    pub ksm: bool,
    pub command: Vec<String>,
}

impl InitArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            INIT_ARG.to_string(),
            "--app".into(),
            self.app.display().to_string(),
            "--hostname".into(),
            self.hostname.clone(),
            "--tmp-size".into(),
            self.tmp_size.to_string(),
        ];
        for c in &self.cgroup_procs {
            a.push("--cgroup".into());
            a.push(c.display().to_string());
        }
        for h in &self.hide {
            a.push("--hide".into());
            a.push(h.display().to_string());
        }
        if self.ksm {
            a.push("--ksm".into());
        }
        a.push("--".into());
        a.extend(self.command.iter().cloned());
        a
    }

    fn parse(args: &[String]) -> Result<InitArgs, String> {
        let mut out = InitArgs::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--app" => out.app = value()?.into(),
                "--hostname" => out.hostname = value()?,
                "--tmp-size" => out.tmp_size = value()?.parse().map_err(|_| "bad --tmp-size")?,
                "--cgroup" => out.cgroup_procs.push(value()?.into()),
                "--hide" => out.hide.push(value()?.into()),
                "--ksm" => out.ksm = true,
                "--" => {
                    out.command = it.cloned().collect();
                    break;
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if out.command.is_empty() {
            return Err("no command given".into());
        }
        Ok(out)
    }
}

/// Runs the sandbox init; never returns. `args` are those after [`INIT_ARG`].
pub fn main(args: &[String]) -> ! {
    // SAFETY: prctl with plain integers. The sandbox does not outlive the server.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let a = match InitArgs::parse(args) {
        Ok(a) => a,
        Err(e) => fail(&format!("nubo sandbox: {e}")),
    };
    if let Err(e) = setup(&a) {
        fail(&format!("nubo sandbox: {e}"));
    }
    // SAFETY: single-threaded process (see the module comment).
    let pid1 = unsafe { libc::fork() };
    match pid1 {
        -1 => fail(&format!("nubo sandbox: fork: {}", errno())),
        0 => namespace_init(&a),
        child => supervise(child, false),
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(126)
}

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: {}", errno()))
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| fail("nubo sandbox: a path or argument contains a NUL byte"))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn setup(a: &InitArgs) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for f in &a.cgroup_procs {
        std::fs::write(f, &pid).map_err(|e| format!("joining cgroup {}: {e}", f.display()))?;
    }
    // SAFETY: plain syscalls on valid, NUL-terminated strings.
    unsafe {
        check(
            libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
            ),
            "unshare",
        )?;
        let host = a.hostname.as_bytes();
        check(
            libc::sethostname(host.as_ptr() as *const c_char, host.len()),
            "sethostname",
        )?;
        // Nothing mounted here propagates back to the host.
        mount(
            None,
            "/",
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
            "making mounts private",
        )?;
        // Every mount read-only, recursively (the app directory included).
        read_only("/", true)?;
        // The app directory may live under /tmp or the hidden data dir: keep a handle on it and
        // bind it back at the same path on top, read-only.
        let app = cstr(&a.app.display().to_string());
        let app_fd = libc::open(
            app.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        check(app_fd, &format!("opening {}", a.app.display()))?;
        mount_tmpfs("/tmp", a.tmp_size, "1777")?;
        let hidden: Vec<&PathBuf> = a.hide.iter().filter(|h| h.is_dir()).collect();
        for h in &hidden {
            mount_tmpfs(&h.display().to_string(), 1 << 20, "755")?;
        }
        let covered = a.app.starts_with("/tmp") || hidden.iter().any(|h| a.app.starts_with(h));
        if covered {
            std::fs::create_dir_all(&a.app)
                .map_err(|e| format!("creating {}: {e}", a.app.display()))?;
            mount(
                Some(&format!("/proc/self/fd/{app_fd}")),
                &a.app.display().to_string(),
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
                "binding the app directory",
            )?;
            read_only(&a.app.display().to_string(), true)?;
        }
        for h in &hidden {
            read_only(&h.display().to_string(), false)?;
        }
        libc::close(app_fd);
        private_dev(a.tmp_size / 4)?;
    }
    Ok(())
}

/// mount(2) with Rust strings; `what` names the step in the error.
fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    what: &str,
) -> Result<(), String> {
    let (source, target) = (source.map(cstr), cstr(target));
    let (fstype, data) = (fstype.map(cstr), data.map(cstr));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: plain syscall on valid, NUL-terminated strings (or NULL).
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data) as *const libc::c_void,
        )
    };
    check(r, what)
}

/// Makes the mount at `path` (and, `recursive`, those below it) read-only.
fn read_only(path: &str, recursive: bool) -> Result<(), String> {
    let attr = MountAttr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let p = cstr(path);
    let flags = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: plain syscall with a valid string and a properly laid out struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r as libc::c_int, &format!("making {path} read-only"))
}

fn mount_tmpfs(dir: &str, size: u64, mode: &str) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!("size={size},mode={mode}")),
        &format!("mounting a private {dir}"),
    )
}

/// A `/dev` with only the harmless devices (the host's disks stay out of reach) and a private
/// `/dev/shm`. Built in a staging mount under the private `/tmp`, then moved over `/dev`.
fn private_dev(shm_size: u64) -> Result<(), String> {
    let stage = "/tmp/.nubo-dev";
    std::fs::create_dir(stage).map_err(|e| format!("creating {stage}: {e}"))?;
    mount_tmpfs(stage, 1 << 20, "755")?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = format!("/dev/{d}");
        if !std::path::Path::new(&host).exists() {
            continue;
        }
        let target = format!("{stage}/{d}");
        std::fs::File::create(&target).map_err(|e| format!("creating {target}: {e}"))?;
        mount(
            Some(&host),
            &target,
            None,
            libc::MS_BIND,
            None,
            &format!("binding {host}"),
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, format!("{stage}/{link}"))
            .map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    std::fs::create_dir(format!("{stage}/shm")).map_err(|e| format!("creating /dev/shm: {e}"))?;
    mount_tmpfs(&format!("{stage}/shm"), shm_size, "1777")?;
    mount(
        Some(stage),
        "/dev",
        None,
        libc::MS_MOVE,
        None,
        "moving the private /dev into place",
    )?;
    let _ = std::fs::remove_dir(stage);
    Ok(())
}

/// Drops every capability for good: the app keeps uid 0 (so it can read what the server's
/// user can, such as a Python under /root) but cannot remount, change cgroups, or regain
/// capabilities through a set-uid program.
fn drop_capabilities() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: prctl/capset with plain integers and properly laid out structs.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        let r = libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr());
        check(r as libc::c_int, "dropping capabilities")
    }
}

/// PID 1 of the instance's namespace.
fn namespace_init(a: &InitArgs) -> ! {
    // SAFETY: prctl with plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        flags,
        None,
        "mounting /proc",
    ) {
        fail(&format!("nubo sandbox: {e}"));
    }
    // SAFETY: still single-threaded.
    let app = unsafe { libc::fork() };
    match app {
        -1 => fail(&format!("nubo sandbox: fork: {}", errno())),
        0 => exec_app(a),
        child => supervise(child, true),
    }
}

fn exec_app(a: &InitArgs) -> ! {
    let dir = cstr(&a.app.display().to_string());
    let argv: Vec<CString> = a.command.iter().map(|s| cstr(s)).collect();
    let mut ptrs: Vec<*const c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: plain syscalls; `ptrs` is a NULL-terminated array of valid strings.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if a.ksm {
            // Identical pages of instances of one revision may be merged (kept across exec).
            let on: libc::c_ulong = 1;
            let zero: libc::c_ulong = 0;
            if libc::prctl(67 /* PR_SET_MEMORY_MERGE */, on, zero, zero, zero) < 0 {
                eprintln!("nubo sandbox: KSM merging unavailable: {}", errno());
            }
        }
        if libc::chdir(dir.as_ptr()) < 0 {
            fail(&format!(
                "nubo sandbox: entering {}: {}",
                a.app.display(),
                errno()
            ));
        }
        if let Err(e) = drop_capabilities() {
            fail(&format!("nubo sandbox: {e}"));
        }
        libc::execvp(ptrs[0], ptrs.as_ptr());
    }
    let e = errno();
    eprintln!(
        "nubo sandbox: cannot run {:?} in {}: {e}",
        a.command[0],
        a.app.display()
    );
    std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// Waits for `child`, forwarding termination signals, and exits with its status. As the
/// namespace's PID 1 it also reaps orphans and signals every process of the namespace.
fn supervise(child: libc::pid_t, pid1: bool) -> ! {
    // SAFETY: signal masks and waits on our own children.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            // The child may have exited before the mask was set: check before each wait.
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid == child {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    libc::_exit(code);
                }
                if pid <= 0 {
                    break;
                }
            }
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if sig > 0 && sig != libc::SIGCHLD {
                if pid1 {
                    libc::kill(-1, sig);
                } else {
                    libc::kill(child, sig);
                }
            }
        }
    }
}
