//! `lanyard __agent-exec`: the launcher, in two stages, each a fresh exec of
//! the `lanyard` binary so that every step is an ordinary, error-checked call
//! in a single-threaded process (nothing runs between fork and exec).
//!
//! **init** (PID 1 of the agent's PID namespace, started as root with a fixed
//! environment): mount namespace (allowlist root or covered host root, fresh
//! `/proc`) → capability bounding set cleared → groups, gid, uid dropped →
//! parent-death signal (re-armed after the uid change, which clears it) →
//! non-dumpable, `no_new_privs` → starts the agent stage → forwards signals,
//! reaps orphans, resumes a stopped agent, exits with the agent's status. When
//! it exits the kernel kills everything left in the namespace.
//!
//! **agent** (PID 2, already unprivileged): new session (and the relayed pty
//! as controlling terminal) → Landlock → seccomp → `execve` with the agent's
//! environment, which no earlier stage ever ran under.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use super::spec::{self, Spec};
use super::{confine, rootfs};

/// Which stage to run; passed by the supervisor (init) or by init (agent).
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// `init` or `agent`.
    #[arg(long, value_enum)]
    pub stage: Stage,
}

/// The launcher's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// PID 1 of the sandbox.
    Init,
    /// Becomes the agent.
    Agent,
}

/// Exit status when setup fails before exec (like a shell's "cannot execute").
pub const EXIT_SETUP: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Signals init passes on to the agent's process group.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Runs a stage; returns only on failure (agent) or with the agent's status (init).
pub fn exec(a: &LaunchArgs) -> i32 {
    let result = Spec::from_env()
        .map_err(|e| (EXIT_SETUP, e))
        .and_then(|s| match a.stage {
            Stage::Init => init(&s),
            Stage::Agent => agent(&s).map(|never| match never {}),
        });
    match result {
        Ok(status) => status,
        Err((code, why)) => {
            #[allow(
                clippy::print_stderr,
                reason = "the launcher has no logger; this is its only report"
            )]
            {
                eprintln!("lanyard: cannot start the agent: {why}");
            }
            code
        }
    }
}

enum Never {}

type Failed = (i32, String);

fn fail(what: &str) -> impl FnOnce(nix::Error) -> Failed + '_ {
    move |e| (EXIT_SETUP, format!("{what}: {e}"))
}

fn fail_io(what: &str) -> impl FnOnce(std::io::Error) -> Failed + '_ {
    move |e| (EXIT_SETUP, format!("{what}: {e}"))
}

fn death_signal() -> Result<(), Failed> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| (EXIT_SETUP, format!("PR_SET_PDEATHSIG: {e}")))
}

fn init(s: &Spec) -> Result<i32, Failed> {
    // Lanyard gone (even SIGKILLed) → init gone → the whole namespace gone.
    death_signal()?;
    if let Some(m) = &s.mounts {
        rootfs::setup(m, s.pid_namespace).map_err(|e| (EXIT_SETUP, e))?;
    }
    if std::env::set_current_dir(&s.workdir).is_err() {
        std::env::set_current_dir("/").map_err(fail_io("chdir /"))?;
    }
    close_inherited_fds();
    if let Some((uid, gid)) = s.ids {
        confine::clear_bounding_set().map_err(|e| (EXIT_SETUP, e))?;
        nix::unistd::setgroups(&[]).map_err(fail("drop supplementary groups"))?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(fail("setgid"))?;
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(fail("setuid"))?;
        // A credential change clears the parent-death signal: arm it again.
        death_signal()?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(fail("PR_SET_DUMPABLE"))?;
    nix::sys::prctl::set_no_new_privs().map_err(fail("no_new_privs"))?;
    if !s.pid_namespace {
        // Without a PID namespace the agent's orphans are still ours to reap.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }

    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        waited.add(*sig);
    }
    // Blocked signals queue for sigwait, even for a namespace's init, which
    // would otherwise drop every signal it has no handler for.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None)
        .map_err(fail("block signals"))?;

    // std resets the signal mask and dispositions of the child.
    let child = std::process::Command::new("/proc/self/exe")
        .args(["__agent-exec", "--stage", "agent"])
        .env_clear()
        .env("PATH", spec::LAUNCHER_PATH)
        .env(spec::VAR, s.encode().map_err(|e| (EXIT_SETUP, e))?)
        .spawn()
        .map_err(fail_io("start the agent stage"))?;
    let agent = Pid::from_raw(
        i32::try_from(child.id()).map_err(|_| (EXIT_SETUP, "pid out of range".to_owned()))?,
    );
    drop(child);

    loop {
        let sig = waited.wait().map_err(fail("sigwait"))?;
        if sig != Signal::SIGCHLD {
            // The agent stage calls setsid, so its pid is its group; before
            // that, the group does not exist yet and the pid alone is signalled.
            if nix::sys::signal::killpg(agent, sig).is_err() {
                let _ = nix::sys::signal::kill(agent, sig);
            }
            continue;
        }
        if let Some(status) = reap(agent) {
            if !s.pid_namespace {
                // Nothing kills the agent's group for us here.
                let _ = nix::sys::signal::killpg(agent, Signal::SIGKILL);
            }
            return Ok(status);
        }
    }
}

/// Reaps every exited child (orphans included); the agent's status once it is
/// gone. A stopped agent (SIGTSTP, SIGTTIN, SIGTTOU, SIGSTOP) is resumed: a
/// sandbox nobody can foreground again would hang `lanyard run` for ever.
fn reap(agent: Pid) -> Option<i32> {
    let mut status = None;
    loop {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED),
        ) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return status,
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                status = Some(128 + sig as i32);
            }
            Ok(WaitStatus::Stopped(pid, sig)) => {
                #[allow(clippy::print_stderr, reason = "the launcher has no logger")]
                {
                    eprintln!("lanyard: sandbox process {pid} stopped by {sig}; resuming it");
                }
                let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return status,
        }
    }
}

fn agent(s: &Spec) -> Result<Never, Failed> {
    // A new session without a controlling terminal: TIOCSTI and friends on
    // whatever terminal Lanyard was started from are refused by the kernel.
    nix::unistd::setsid().map_err(fail("setsid"))?;
    if s.tty {
        rustix::process::ioctl_tiocsctty(std::io::stdin())
            .map_err(|e| (EXIT_SETUP, format!("TIOCSCTTY on the sandbox pty: {e}")))?;
    }
    death_signal()?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(fail("unblock signals"))?;
    let argv: Vec<CString> = s
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| (EXIT_SETUP, "command contains a NUL byte".to_owned()))?;
    let envp: Vec<CString> = s
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| (EXIT_SETUP, "environment contains a NUL byte".to_owned()))?;
    let Some(prog) = s.command.first() else {
        return Err((EXIT_SETUP, "no command given".into()));
    };
    let path = s
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    let candidates = candidates(prog, path);
    if s.confine {
        confine::landlock(&s.writable).map_err(|e| (EXIT_SETUP, e))?;
        confine::seccomp().map_err(|e| (EXIT_SETUP, e))?;
    }
    let mut last = nix::Error::ENOENT;
    for c in &candidates {
        let Ok(file) = CString::new(c.as_os_str().as_bytes()) else {
            continue;
        };
        let Err(e) = nix::unistd::execve(&file, &argv, &envp);
        // Like execvp: keep looking past missing files, remember a permission
        // problem, stop at anything else.
        match e {
            nix::Error::ENOENT | nix::Error::ENOTDIR => {}
            nix::Error::EACCES => last = e,
            other => {
                last = other;
                break;
            }
        }
    }
    let code = if last == nix::Error::ENOENT {
        EXIT_NOT_FOUND
    } else {
        EXIT_SETUP
    };
    Err((code, format!("exec {}: {last}", prog.to_string_lossy())))
}

/// Where `execvp` would look for `prog`, searching the agent's `PATH`.
fn candidates(prog: &OsStr, path: &str) -> Vec<PathBuf> {
    if prog.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(prog)];
    }
    path.split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| Path::new(d).join(prog))
        .collect()
}

/// Closes every descriptor above stderr that Lanyard's own parent may have
/// left open without close-on-exec: the sandbox starts with a clean table.
fn close_inherited_fds() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        // SAFETY: single-threaded launcher; nothing else owns these
        // descriptors any more, and closing a stale one (the read_dir handle,
        // already closed) just returns EBADF, which is ignored.
        #[allow(unsafe_code, reason = "no safe API closes a descriptor by number")]
        unsafe {
            nix::libc::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_search_follows_execvp() {
        assert_eq!(
            candidates(OsStr::new("sh"), "/a::/b"),
            vec![
                PathBuf::from("/a/sh"),
                PathBuf::from("./sh"),
                PathBuf::from("/b/sh")
            ]
        );
        assert_eq!(
            candidates(OsStr::new("./x"), "/a"),
            vec![PathBuf::from("./x")]
        );
    }
}
