//! `zeitwork-init`: the small init of an isolated process instance.
//!
//! Started by the process driver (as root) in place of the app. It joins the instance's
//! cgroups, unshares the mount, PID, UTS and IPC namespaces and forks: the child is PID 1
//! of the new PID namespace. PID 1 sets the host name, mounts a private `/proc`,
//! `pivot_root`s into the image's root filesystem when there is one, and starts the app
//! as its child; then it forwards signals to the app and reaps every orphan, and exits
//! with the app's status (which ends the namespace). The parent stays outside as a shim
//! the agent can wait for: it forwards signals to PID 1 and exits with its status.
//!
//! Must run in a single-threaded process (unsharing a mount namespace and forking are only
//! sound single-threaded): the `zeitwork-init` binary calls [`run`] from `main`.

use std::ffi::CString;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

#[derive(Debug, Clone, Default)]
pub struct InitArgs {
    pub hostname: String,
    pub rootfs: Option<PathBuf>,
    pub cgroup_procs: Vec<PathBuf>,
    pub command: Vec<String>,
}

const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

fn fail(what: &str, e: impl std::fmt::Display) -> i32 {
    eprintln!("zeitwork init: {what}: {e}");
    126
}

/// Runs the init; returns the exit code for the process.
pub fn run(a: InitArgs) -> i32 {
    if a.command.is_empty() {
        return fail("no command", "nothing to run");
    }
    let me = std::process::id().to_string();
    for procs in &a.cgroup_procs {
        if let Err(e) = std::fs::write(procs, &me) {
            return fail(&format!("joining {}", procs.display()), e);
        }
    }
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if let Err(e) = unshare(flags) {
        return fail("unsharing namespaces", e);
    }
    // Signals are taken synchronously (sigwait) from here on; the app gets them unblocked.
    if let Err(e) = signals().thread_block() {
        return fail("blocking signals", e);
    }
    // SAFETY: single-threaded (see the module documentation).
    match unsafe { fork() } {
        Err(e) => fail("forking PID 1", e),
        Ok(ForkResult::Parent { child }) => supervise(child),
        Ok(ForkResult::Child) => std::process::exit(pid1(&a)),
    }
}

/// Forwards signals to `child` and reaps every process that ends (orphans re-parented to
/// a PID 1, as well as `child`) until `child` exits; returns its status as an exit code.
/// The shim outside the namespace and PID 1 inside both run this.
fn supervise(child: Pid) -> i32 {
    let set = signals();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        return 128 + sig as i32
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(_) => {}
        }
    }
}

fn pid1(a: &InitArgs) -> i32 {
    if let Err(e) = nix::unistd::sethostname(&a.hostname) {
        return fail("setting the host name", e);
    }
    // Nothing mounted here propagates back to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return fail("making mounts private", e);
    }
    if let Some(root) = &a.rootfs {
        if let Err(e) = enter_root(root) {
            return fail(
                &format!("entering the root filesystem {}", root.display()),
                e,
            );
        }
    } else if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        return fail("mounting /proc", e);
    }
    let argv: Result<Vec<CString>, _> =
        a.command.iter().map(|s| CString::new(s.as_str())).collect();
    let Ok(argv) = argv else {
        return fail("the command", "contains a NUL byte");
    };
    // SAFETY: still single-threaded.
    let app = match unsafe { fork() } {
        Err(e) => return fail("forking the app", e),
        Ok(ForkResult::Child) => {
            let _ = SigSet::all().thread_unblock();
            let e = nix::unistd::execvp(&argv[0], &argv);
            eprintln!("zeitwork init: starting {:?}: {e:?}", a.command[0]);
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    supervise(app)
}

fn enter_root(root: &std::path::Path) -> nix::Result<()> {
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    let proc_dir = root.join("proc");
    let _ = std::fs::create_dir_all(&proc_dir);
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )?;
    let dev = root.join("dev");
    if std::fs::create_dir_all(&dev).is_ok() {
        // The host's device nodes (null, zero, urandom…), read through a bind mount.
        let _ = mount(
            Some("/dev"),
            &dev,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        );
    }
    let old = root.join(".zeitwork-old-root");
    let _ = std::fs::create_dir_all(&old);
    nix::unistd::pivot_root(root, &old)?;
    nix::unistd::chdir("/")?;
    umount2("/.zeitwork-old-root", MntFlags::MNT_DETACH)?;
    let _ = std::fs::remove_dir("/.zeitwork-old-root");
    Ok(())
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "zeitwork-init: {why}\nusage: zeitwork-init --hostname NAME [--rootfs DIR] [--cgroup-procs FILE]... -- COMMAND [ARG]...\n(started by `zeitwork agent` for isolated instances; not meant to be run by hand)"
    );
    ExitCode::from(2)
}

/// `zeitwork-init`'s command line (arguments after the program name), parsed by hand:
/// the init runs beside every isolated instance and should cost as little as it can.
pub fn main(argv: impl Iterator<Item = String>) -> ExitCode {
    let mut args = InitArgs::default();
    let mut it = argv;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                args.command = it.by_ref().collect();
                break;
            }
            "--hostname" | "--rootfs" | "--cgroup-procs" => {
                let Some(v) = it.next() else {
                    return usage(&format!("{a} needs a value"));
                };
                match a.as_str() {
                    "--hostname" => args.hostname = v,
                    "--rootfs" => args.rootfs = Some(PathBuf::from(v)),
                    _ => args.cgroup_procs.push(PathBuf::from(v)),
                }
            }
            other => return usage(&format!("unexpected argument `{other}`")),
        }
    }
    if args.command.is_empty() {
        return usage("no command after `--`");
    }
    if args.hostname.is_empty() {
        return usage("--hostname is required");
    }
    ExitCode::from(run(args).clamp(0, 255) as u8)
}
