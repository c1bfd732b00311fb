//! `lanyard __agent-exec`: the short-lived, single-threaded helper that turns
//! into the agent. Running it as a separate exec (rather than code between
//! fork and exec in the multi-threaded supervisor) keeps every step an
//! ordinary, error-checked call:
//!
//! join the agent's network namespace → new mount namespace with the hidden
//! directories covered by empty read-only tmpfs → own process group → close
//! inherited descriptors → drop supplementary groups, gid, uid →
//! `no_new_privs` → exec.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Gid, Pid, Uid};

/// What the helper does; passed as arguments by the supervisor.
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// Network namespace to join.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Directories to hide.
    #[arg(long)]
    pub hide: Vec<PathBuf>,
    /// uid to become.
    #[arg(long)]
    pub uid: u32,
    /// gid to become.
    #[arg(long)]
    pub gid: u32,
    /// Working directory.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The agent command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// Exit status when setup fails before exec (like a shell's "cannot execute").
pub const EXIT_SETUP: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Never returns on success (the process becomes the agent).
pub fn exec(a: &LaunchArgs) -> i32 {
    match setup_and_exec(a) {
        Ok(never) => match never {},
        Err((code, why)) => {
            #[allow(
                clippy::print_stderr,
                reason = "the helper has no logger; this is its only report"
            )]
            {
                eprintln!("lanyard: cannot start the agent: {why}");
            }
            code
        }
    }
}

enum Never {}

fn setup_and_exec(a: &LaunchArgs) -> Result<Never, (i32, String)> {
    let fail = |what: &str, e: nix::Error| (EXIT_SETUP, format!("{what}: {e}"));
    if let Some(ns) = &a.netns {
        let f = std::fs::File::open(ns)
            .map_err(|e| (EXIT_SETUP, format!("open {}: {e}", ns.display())))?;
        setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail("join the agent network namespace", e))?;
    }
    if !a.hide.is_empty() {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail("create a mount namespace", e))?;
        // Nothing mounted here may leak back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| fail("make mounts private", e))?;
        for dir in &a.hide {
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                flags,
                Some("size=4k,mode=0555"),
            )
            .map_err(|e| fail(&format!("hide {}", dir.display()), e))?;
        }
    }
    // Its own process group, so signals reach the agent and everything it starts.
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| fail("setpgid", e))?;
    close_inherited_fds();
    if Uid::effective().is_root() {
        nix::unistd::setgroups(&[]).map_err(|e| fail("drop supplementary groups", e))?;
        nix::unistd::setgid(Gid::from_raw(a.gid)).map_err(|e| fail("setgid", e))?;
        nix::unistd::setuid(Uid::from_raw(a.uid)).map_err(|e| fail("setuid", e))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("no_new_privs", e))?;
    let dir = a
        .workdir
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    if std::env::set_current_dir(&dir).is_err() {
        // The agent may not be allowed into Lanyard's directory; "/" always works.
        std::env::set_current_dir("/").map_err(|e| (EXIT_SETUP, format!("chdir /: {e}")))?;
    }
    let argv: Vec<CString> = a
        .command
        .iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| (EXIT_SETUP, "command contains a NUL byte".to_owned()))?;
    let Some(prog) = argv.first() else {
        return Err((EXIT_SETUP, "no command given".into()));
    };
    let e = nix::unistd::execvp(prog, &argv).err();
    let code = if e == Some(nix::Error::ENOENT) {
        EXIT_NOT_FOUND
    } else {
        EXIT_SETUP
    };
    Err((
        code,
        format!(
            "exec {}: {}",
            prog.to_string_lossy(),
            e.map_or_else(|| "failed".into(), |e| e.to_string())
        ),
    ))
}

/// Closes every descriptor above stderr that Lanyard's own parent may have
/// left open without close-on-exec: the agent starts with a clean table.
fn close_inherited_fds() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        // SAFETY: single-threaded helper about to exec; nothing else owns these
        // descriptors any more, and closing a stale one (the read_dir handle,
        // already closed) just returns EBADF, which is ignored.
        #[allow(unsafe_code, reason = "no safe API closes a descriptor by number")]
        unsafe {
            nix::libc::close(fd);
        }
    }
}
