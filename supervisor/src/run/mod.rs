//! `lanyard run -- CMD ...`: identity, grants and the proxy, then the agent,
//! launched so that its only way out is the proxy and it cannot reach the
//! Workload API socket, the SVIDs, the tokens or Lanyard's memory.
//!
//! Lanyard marks itself non-dumpable (no ptrace, no `/proc/<pid>/mem` or
//! `environ` for anyone but root), becomes a child subreaper (orphans of the
//! agent are reaped here, PID 1 or not), forwards SIGTERM/SIGINT/SIGHUP to the
//! agent's process group, and exits with the agent's status (128+signal when
//! it was killed) after draining in-flight requests.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigFileError, Isolation, Validated};
use crate::{Error, start_providers};

pub mod env;
pub mod isolate;
pub mod launch;

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
    env::check(&v.agent.env).map_err(|(f, r)| cfg_err(&f, r))?;
    let (uid, gid) = agent_ids(&v).map_err(|(f, r)| cfg_err(&f, r))?;
    let hidden = hidden_dirs(&v).map_err(|(f, r)| cfg_err(&f, r))?;
    warn_if_reachable(&hidden, uid, gid);
    let port = v.settings.config.listen.port();

    let (listener, netns) = match v.isolation {
        Isolation::Full => {
            isolation_possible().map_err(|why| cfg_err("isolation", why))?;
            let net = isolate::create(port).map_err(|why| cfg_err("isolation", why))?;
            (net.listener, Some(net.netns))
        }
        Isolation::None => {
            tracing::warn!(
                "isolation: none: the agent shares Lanyard's network and filesystem; it can bypass the proxy and may reach the Workload API socket"
            );
            let addr = v.settings.config.listen;
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| Error::Start(format!("cannot listen on {addr}: {e}")))?;
            (l, None)
        }
    };
    let providers = start_providers(&v, file)?;
    let proxy = lanyard_proxy::Proxy::with_std_listener(v.settings, providers.sources, listener)
        .map_err(|e| crate::start_error(file, e))?;
    let bound = proxy
        .local_addr()
        .map_err(|e| Error::Start(e.to_string()))?;
    let trust = proxy.trust_files().clone();
    let agent_env = env::build(
        std::env::vars(),
        &v.agent.env,
        bound.port(),
        &trust.ca_pem,
        &trust.bundle_pem,
    );

    let _ = nix::sys::prctl::set_child_subreaper(true);
    // Signal streams exist before the agent does, so no SIGCHLD is missed.
    let mut sigchld =
        signal(SignalKind::child()).map_err(|e| Error::Start(format!("SIGCHLD handler: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Start(e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Start(e.to_string()))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::Start(e.to_string()))?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(proxy.serve(async move {
        let _ = stop_rx.await;
    }));

    let exe = std::env::current_exe()
        .map_err(|e| Error::Start(format!("cannot find own executable: {e}")))?;
    let mut helper = std::process::Command::new(exe);
    helper
        .arg("__agent-exec")
        .arg("--uid")
        .arg(uid.to_string())
        .arg("--gid")
        .arg(gid.to_string());
    if let Some(ns) = &netns {
        helper.arg("--netns").arg(ns);
        for d in &hidden {
            helper.arg("--hide").arg(d);
        }
    }
    if let Some(w) = &v.agent.workdir {
        helper.arg("--workdir").arg(w);
    }
    helper.arg("--").args(&command).env_clear().envs(&agent_env);
    let child = helper
        .spawn()
        .map_err(|e| Error::Start(format!("cannot start the agent launcher: {e}")))?;
    let agent = Pid::from_raw(
        i32::try_from(child.id()).map_err(|_| Error::Start("pid out of range".into()))?,
    );
    // The reaper below collects it; std's handle must never wait.
    drop(child);
    tracing::info!(pid = agent.as_raw(), proxy = %bound, uid, gid, isolation = ?v.isolation, "agent started");

    let kill_after = v
        .agent
        .kill_after
        .unwrap_or(std::time::Duration::from_secs(30));
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        if let Some(s) = reap(agent) {
            break s;
        }
        let deadline = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = sigterm.recv() => {
                forward(agent, Signal::SIGTERM);
                kill_at.get_or_insert_with(|| tokio::time::Instant::now() + kill_after);
            }
            _ = sigint.recv() => {
                forward(agent, Signal::SIGINT);
                kill_at.get_or_insert_with(|| tokio::time::Instant::now() + kill_after);
            }
            _ = sighup.recv() => forward(agent, Signal::SIGHUP),
            () = deadline => {
                tracing::warn!(after_ms = kill_after.as_millis(), "agent ignored the stop signal; killing its process group");
                forward(agent, Signal::SIGKILL);
                kill_at = None;
            }
        }
    };
    tracing::info!(status, "agent exited; draining");
    let _ = stop_tx.send(());
    let _ = serve.await;
    Ok(status)
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

fn forward(agent: Pid, sig: Signal) {
    tracing::info!(signal = %sig, "forwarding to the agent's process group");
    if nix::sys::signal::killpg(agent, sig).is_err() {
        // Not yet in its own group (still in the launcher): signal it directly.
        let _ = nix::sys::signal::kill(agent, sig);
    }
}

/// The tmpfs cover is the second lock; the first is that the agent's uid
/// cannot enter these directories at all. Lanyard does not own them (SPIRE
/// does), so it reports rather than changes their modes.
fn warn_if_reachable(dirs: &[PathBuf], uid: u32, gid: u32) {
    use std::os::unix::fs::MetadataExt;
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
            tracing::warn!(
                dir = %d.display(),
                mode = format!("{:o}", mode & 0o7777),
                "the agent's uid could enter this directory if it were not hidden; make it 0700 for its owner"
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
    if !Path::new("/proc/self/ns/net").exists() || !Path::new("/proc/self/ns/mnt").exists() {
        return Err("isolation: full needs network and mount namespaces, which this kernel does not offer; set isolation: none".into());
    }
    Ok(())
}

/// The agent's uid and gid from `agent.user` / `agent.group`.
fn agent_ids(v: &Validated) -> Result<(u32, u32), (String, String)> {
    use nix::unistd::{Group, User};
    let (uid, primary) = match v.agent.user.as_deref() {
        None => (65534, None),
        Some(u) => match u.parse::<u32>() {
            Ok(n) => (
                n,
                User::from_uid(n.into())
                    .ok()
                    .flatten()
                    .map(|u| u.gid.as_raw()),
            ),
            Err(_) => {
                let user = User::from_name(u)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ("agent.user".to_owned(), format!("no user named '{u}'")))?;
                (user.uid.as_raw(), Some(user.gid.as_raw()))
            }
        },
    };
    let gid = match v.agent.group.as_deref() {
        None => primary.unwrap_or(65534),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| ("agent.group".to_owned(), format!("no group named '{g}'")))?
                .gid
                .as_raw(),
        },
    };
    Ok((uid, gid))
}

/// Directories the agent must not see: the Workload API socket's, the static
/// token files', the CA key's, and `agent.hide`.
fn hidden_dirs(v: &Validated) -> Result<Vec<PathBuf>, (String, String)> {
    let mut dirs = BTreeSet::new();
    let socket = v.spiffe.endpoint_socket.clone().or_else(|| {
        std::env::var("SPIFFE_ENDPOINT_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if let Some(s) = socket {
        let path = s.trim_start_matches("unix://").trim_start_matches("unix:");
        if let Some(parent) = Path::new(path).parent() {
            dirs.insert(parent.to_owned());
        }
    }
    for p in v.providers.values() {
        if let Some(parent) = p.static_token.as_ref().and_then(|s| s.token_file.parent()) {
            dirs.insert(parent.to_owned());
        }
    }
    if let Some(parent) = v
        .settings
        .config
        .ca
        .key_file
        .as_deref()
        .and_then(Path::parent)
    {
        dirs.insert(parent.to_owned());
    }
    dirs.extend(v.agent.hide.iter().cloned());
    let ca_dir = &v.settings.config.ca.dir;
    let mut out = Vec::new();
    for d in dirs {
        if d.as_os_str().is_empty() || d == Path::new("/") {
            return Err(("agent.hide".into(), "cannot hide the root directory: keep the socket, token and key files in directories of their own".into()));
        }
        if ca_dir.starts_with(&d) {
            return Err((
                "agent.hide".into(),
                format!(
                    "hiding {} would also hide the CA directory {} the agent needs",
                    d.display(),
                    ca_dir.display()
                ),
            ));
        }
        if d.is_dir() {
            out.push(d);
        } else {
            tracing::warn!(dir = %d.display(), "not hiding a directory that does not exist");
        }
    }
    Ok(out)
}
