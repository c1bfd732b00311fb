//! `lanyard run -- CMD ...`: identity, grants and the proxy, then the agent
//! in a sandbox whose only way out is the proxy. See ARCHITECTURE.md, "The
//! `lanyard run` sandbox", for the threat model.
//!
//! Lanyard marks itself non-dumpable, leases the agent a uid of its own,
//! creates the network and PID namespaces, and starts the launcher (init of
//! the PID namespace) from a thread that lives as long as Lanyard, so the
//! launcher's parent-death signal fires only when Lanyard is gone. Stop
//! signals (TERM, INT, HUP, QUIT), USR1/USR2 and WINCH are forwarded (or
//! WINCH resizes the pty); every other
//! signal whose default would kill Lanyard instead kills the sandbox and then
//! exits cleanly. Lanyard exits with the agent's status (128+signal when it
//! was killed) after draining in-flight requests.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::Error;
use crate::config::{Config, ConfigFileError, Filesystem, Isolation};

pub mod confine;
pub mod env;
pub mod isolate;
pub mod launch;
pub mod plan;
pub mod rootfs;
pub mod spec;
pub mod tty;
pub mod uid;

/// Lanyard's host state for `lanyard run`: uid leases and the launcher's
/// scratch mount point, root-only.
pub const STATE_DIR: &str = "/run/lanyard";

/// Forwarded signals after which the agent gets `agent.kill_after` to exit.
const STOPPING: &[Signal] = &[Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM];
/// Signals whose default action would end Lanyard and orphan the sandbox:
/// handled, they end the sandbox first.
const FATAL: &[Signal] = &[
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGSTKFLT,
];

/// Runs the agent under Lanyard; returns the exit status to exit with.
pub async fn run(file: &Path, command: Vec<OsString>) -> Result<i32, Error> {
    // Before anything sensitive is in memory.
    let _ = nix::sys::prctl::set_dumpable(false);
    let config = Config::load(file)?;
    let v = config.validate(file)?;
    let cfg_err = |field: &str, reason: String| {
        Error::Config(ConfigFileError {
            file: file.display().to_string(),
            field: field.to_owned(),
            reason,
        })
    };
    let plan = plan::plan(&v, file)?;
    if v.settings.config.transparent.is_some() {
        tracing::warn!(
            "transparent: is for a pod sidecar behind `lanyard init`; lanyard run ignores it (its agent has no route but the proxy)"
        );
    }
    let full = v.isolation == Isolation::Full;
    let root = nix::unistd::Uid::effective().is_root();
    if full {
        isolation_possible().map_err(|why| cfg_err("isolation", why))?;
    } else {
        tracing::warn!(
            "isolation: none: the agent shares Lanyard's network and filesystem; it can bypass the proxy and may reach the Workload API socket"
        );
    }
    let state = Path::new(STATE_DIR);
    let mut _lease = None;
    let ids = match (root, plan.ids) {
        (false, plan::Ids::Fixed(..)) => {
            return Err(cfg_err(
                "agent.user",
                "switching the agent's user needs root".into(),
            ));
        }
        (false, _) => None,
        (true, plan::Ids::Fixed(u, g)) => Some((u, g)),
        (true, plan::Ids::Leased(first, last)) => {
            let lease = uid::lease(first, last, &state.join("uids")).map_err(Error::Start)?;
            let id = lease.uid;
            _lease = Some(lease);
            Some((id, id))
        }
    };
    for d in &plan.create {
        // Created now and covered, so that what appears in it later (a SPIRE
        // agent starting after Lanyard) is hidden too.
        create_hidden_dir(d).map_err(Error::Start)?;
        tracing::info!(dir = %d.display(), "created a missing directory so that it stays hidden from the agent");
    }
    let (agent_uid, agent_gid) = ids.unwrap_or((
        nix::unistd::Uid::effective().as_raw(),
        nix::unistd::Gid::effective().as_raw(),
    ));
    warn_if_reachable(&plan.hide_dirs, agent_uid, agent_gid, full);
    let scratch = state.join("scratch");
    let mounts = if full {
        uid::private_dir(&scratch).map_err(Error::Start)?;
        match confine::landlock_probe() {
            landlock::RulesetStatus::FullyEnforced => tracing::debug!("landlock enforced"),
            landlock::RulesetStatus::PartiallyEnforced => tracing::info!(
                "landlock partially enforced: this kernel knows only some of the rights asked for"
            ),
            landlock::RulesetStatus::NotEnforced => tracing::warn!(
                "landlock unavailable on this kernel: the agent's writes are confined by the mount namespace and its uid only"
            ),
        }
        Some(spec::Mounts {
            root: match plan.filesystem {
                Filesystem::Minimal => spec::Root::Minimal {
                    read_only: plan.read_only.clone(),
                    writable: plan.writable.clone(),
                },
                Filesystem::Host => spec::Root::Host,
            },
            hide_dirs: plan.hide_dirs.clone(),
            hide_files: plan.hide_files.clone(),
            scratch,
        })
    } else {
        None
    };

    let port = v.settings.config.listen.port();
    let sandbox = isolate::Sandbox::create(isolate::Namespaces {
        net: full.then_some(port),
        pid: full,
    })
    .map_err(|why| cfg_err("isolation", why))?;
    let listener = match sandbox.listener.as_ref() {
        Some(l) => l
            .try_clone()
            .map_err(|e| Error::Start(format!("listener: {e}")))?,
        None => {
            let addr = v.settings.config.listen;
            std::net::TcpListener::bind(addr)
                .map_err(|e| Error::Start(format!("cannot listen on {addr}: {e}")))?
        }
    };
    let isolation = v.isolation;
    let agent_cfg = v.agent.clone();
    let started = crate::ops::start(
        v,
        file,
        crate::ops::StartOptions {
            listener: Some(listener),
            // SIGHUP belongs to the agent (its terminal hung up): reload on file change only.
            sighup: false,
        },
    )
    .await?;
    let proxy = started.proxy;
    let bound = proxy
        .local_addr()
        .map_err(|e| Error::Start(e.to_string()))?;
    let trust = proxy.trust_files().clone();
    let agent_env = env::build(std::env::vars(), &agent_cfg.env, bound.port(), &trust);
    let mut agent_env = agent_env;
    if full && plan.filesystem == Filesystem::Minimal && !agent_cfg.env.set.contains_key("HOME") {
        // Lanyard's own HOME does not exist in a minimal root.
        agent_env.insert("HOME".into(), plan.workdir.display().to_string());
    }
    let mut pty = tty::Pty::open_if_interactive().map_err(Error::Start)?;
    let spec = spec::Spec {
        ids,
        mounts,
        pid_namespace: full,
        workdir: plan.workdir.clone(),
        tty: pty.is_some(),
        confine: full,
        writable: plan.writable.clone(),
        command,
        env: agent_env.into_iter().collect(),
    };

    let mut signals = Signals::new().map_err(Error::Start)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(proxy.serve(async move {
        let _ = stop_rx.await;
    }));

    let exe = std::env::current_exe()
        .map_err(|e| Error::Start(format!("cannot find own executable: {e}")))?;
    let mut launcher = std::process::Command::new(exe);
    launcher
        .args(["__agent-exec", "--stage", "init"])
        .env_clear()
        .env("PATH", spec::LAUNCHER_PATH)
        .env(spec::VAR, spec.encode().map_err(Error::Start)?);
    if let Some(slave) = pty.as_mut().and_then(tty::Pty::take_slave) {
        let dup = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .map_err(|e| Error::Start(format!("pty: {e}")))
        };
        launcher
            .stdin(dup(&slave)?)
            .stdout(dup(&slave)?)
            .stderr(Stdio::from(slave));
    }
    let child = sandbox
        .spawn(launcher)
        .map_err(|e| Error::Start(format!("cannot start the agent launcher: {e}")))?;
    // The launcher (and the Command, dropped on the sandbox thread) held the
    // pty's slave; only the sandbox has it now.
    let init = Pid::from_raw(
        i32::try_from(child.id()).map_err(|_| Error::Start("pid out of range".into()))?,
    );
    // The reaper below collects it; std's handle must never wait.
    drop(child);
    if let Some(p) = pty.as_mut() {
        p.relay().map_err(Error::Start)?;
    }
    tracing::info!(pid = init.as_raw(), proxy = %bound, uid = ?ids.map(|i| i.0), isolation = ?isolation, filesystem = ?plan.filesystem, tty = pty.is_some(), "agent started");

    let kill_after = agent_cfg
        .kill_after
        .unwrap_or(std::time::Duration::from_secs(30));
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut fatal: Option<i32> = None;
    let status = loop {
        if let Some(s) = reap(init) {
            break s;
        }
        let deadline = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            sig = signals.recv() => match sig {
                None | Some(Signal::SIGCHLD) => {}
                Some(Signal::SIGWINCH) => {
                    if let Some(p) = &pty {
                        p.resize();
                    } else {
                        forward(init, Signal::SIGWINCH);
                    }
                }
                Some(sig) if FATAL.contains(&sig) => {
                    tracing::warn!(signal = %sig, "fatal signal: ending the sandbox, then exiting");
                    fatal.get_or_insert(128 + sig as i32);
                    forward(init, Signal::SIGKILL);
                }
                Some(sig) => {
                    forward(init, sig);
                    if STOPPING.contains(&sig) {
                        kill_at.get_or_insert_with(|| tokio::time::Instant::now() + kill_after);
                    }
                }
            },
            () = deadline => {
                tracing::warn!(after_ms = kill_after.as_millis(), "agent ignored the stop signal; killing the sandbox");
                forward(init, Signal::SIGKILL);
                kill_at = None;
            }
        }
    };
    if let Some(p) = pty.as_mut() {
        p.drain(std::time::Duration::from_secs(2));
    }
    drop(pty);
    tracing::info!(status, "agent exited; draining");
    let _ = stop_tx.send(());
    let _ = serve.await;
    Ok(fatal.unwrap_or(status))
}

/// Every signal `run` handles, as one stream. Handlers are installed before
/// the agent exists, so no SIGCHLD is missed.
struct Signals {
    rx: tokio::sync::mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    fn new() -> Result<Self, String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // What init forwards (SIGWINCH included: it resizes the pty when there is one).
        let mut all: Vec<i32> = [Signal::SIGCHLD]
            .iter()
            .chain(launch::FORWARDED)
            .chain(FATAL)
            .map(|s| *s as i32)
            .collect();
        // Real-time signals also end a process by default.
        all.extend(nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX());
        for n in all {
            let mut stream = signal(SignalKind::from_raw(n))
                .map_err(|e| format!("cannot handle signal {n}: {e}"))?;
            // A real-time signal has no `Signal` value: it is fatal, like SIGALRM.
            let sig = Signal::try_from(n).unwrap_or(Signal::SIGALRM);
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { rx })
    }

    async fn recv(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }
}

fn create_hidden_dir(d: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(d)
        .map_err(|e| {
            format!(
                "cannot create {} (to hide it from the agent): {e}",
                d.display()
            )
        })
}

/// Reaps every exited child (orphans included); the agent's status once it is gone.
fn reap(agent: Pid) -> Option<i32> {
    let mut status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return status,
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                status = Some(128 + sig as i32)
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return status;
            }
        }
    }
}

/// Signals the launcher (init), which passes stop signals on to the agent's
/// process group; SIGKILL ends init and with it the whole PID namespace.
fn forward(init: Pid, sig: Signal) {
    tracing::info!(signal = %sig, "forwarding to the agent");
    let _ = nix::sys::signal::kill(init, sig);
}

/// The tmpfs cover is the second lock; the first is that the agent's uid
/// cannot enter these directories at all. Lanyard does not own them (SPIRE
/// does), so it reports rather than changes their modes.
/// Warns about the directories holding Lanyard's secrets (Workload API
/// socket, token files, CA key) that the agent's uid could enter. File modes
/// are the second line of defence behind the hiding mounts (`hidden`), and
/// the only one under `isolation: none`; for root, and for Lanyard's own
/// uid, they are no defence at all, which gets one warning of its own.
fn warn_if_reachable(dirs: &[PathBuf], uid: u32, gid: u32, hidden: bool) {
    use std::os::unix::fs::MetadataExt;
    if dirs.is_empty() {
        return;
    }
    let list = || {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let guard = if hidden {
        "only the mounts that hide them keep it out"
    } else {
        "nothing keeps it out (isolation: none)"
    };
    if uid == 0 {
        tracing::warn!(
            dirs = %list(),
            "the agent runs as root, which file modes do not stop: {guard}; set agent.user to an unprivileged user"
        );
        return;
    }
    if uid == nix::unistd::Uid::effective().as_raw() {
        tracing::warn!(
            dirs = %list(),
            "the agent runs as Lanyard's own uid {uid} and can open whatever Lanyard can: {guard}; set agent.user to another user"
        );
        return;
    }
    for d in dirs {
        let Ok(m) = std::fs::metadata(d) else {
            continue;
        };
        let mode = m.mode();
        let traversable = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if traversable {
            let what = if hidden {
                "the agent's uid could enter this directory if it were not hidden"
            } else {
                "the agent's uid can enter this directory (isolation: none hides nothing)"
            };
            tracing::warn!(
                dir = %d.display(),
                mode = format!("{:o}", mode & 0o7777),
                uid,
                "{what}; make it 0700 for an owner other than the agent"
            );
        }
    }
}

/// What full isolation needs, checked before anything is started.
fn isolation_possible() -> Result<(), String> {
    let euid = nix::unistd::Uid::effective();
    if !euid.is_root() {
        return Err(format!(
            "isolation: full needs root (running as uid {euid}) to create network and mount namespaces and switch the agent to an unprivileged user; run as root or set isolation: none"
        ));
    }
    if ["net", "mnt", "pid"]
        .iter()
        .any(|ns| !Path::new("/proc/self/ns").join(ns).exists())
    {
        return Err("isolation: full needs network, mount and PID namespaces, which this kernel does not offer; set isolation: none".into());
    }
    Ok(())
}
