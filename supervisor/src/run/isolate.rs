//! The agent's network and PID namespaces.
//!
//! Network: loopback only, with Lanyard's listener inside it. There is no
//! route and no other interface, so the proxy is the only thing the agent can
//! connect to; a client that ignores HTTP_PROXY gets "network unreachable" or
//! "connection refused" instead of a way out.
//!
//! PID: the launcher is started as PID 1 of a new namespace, so the agent
//! sees no host process (no `/proc/<pid>/root` of a same-uid process, no
//! other sandbox to ptrace), and everything in it dies with that init.
//!
//! Namespaces (and the parent-death signal) belong to a thread in Linux: a
//! dedicated thread creates both, binds the listener, spawns the launcher and
//! then lives as long as the process, so the launcher's parent-death signal
//! fires only when Lanyard itself is gone.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::sync::mpsc;

use nix::sched::{CloneFlags, unshare};

/// What the namespace thread does on request.
type Spawn = (Command, mpsc::Sender<std::io::Result<Child>>);

/// A thread whose children start in the agent's namespaces.
#[derive(Debug)]
pub struct Sandbox {
    /// Bound inside the namespace on 127.0.0.1 (`None` without a network namespace).
    pub listener: Option<TcpListener>,
    spawn: mpsc::Sender<Spawn>,
}

/// Which namespaces the sandbox thread creates.
#[derive(Debug, Clone, Copy)]
pub struct Namespaces {
    /// A loopback-only network namespace with the listener on this port (0 picks one).
    pub net: Option<u16>,
    /// A PID namespace for the launcher and the agent.
    pub pid: bool,
}

impl Sandbox {
    /// Starts the thread and creates the namespaces.
    pub fn create(ns: Namespaces) -> Result<Self, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (spawn_tx, spawn_rx) = mpsc::channel::<Spawn>();
        std::thread::Builder::new()
            .name("lanyard-sandbox".into())
            .spawn(move || {
                let r = setup(ns);
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if !ok {
                    return;
                }
                while let Ok((mut cmd, reply)) = spawn_rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                // Children's parent-death signal is tied to this thread: never end.
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| format!("cannot start the namespace thread: {e}"))?;
        let listener = ready_rx
            .recv()
            .map_err(|_| "namespace thread died".to_owned())??;
        Ok(Self {
            listener,
            spawn: spawn_tx,
        })
    }

    /// Spawns `cmd` from the sandbox thread, inside its namespaces.
    pub fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        let gone = || std::io::Error::other("namespace thread gone");
        self.spawn.send((cmd, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

fn setup(ns: Namespaces) -> Result<Option<TcpListener>, String> {
    let listener = match ns.net {
        Some(port) => Some(net(port)?),
        None => None,
    };
    if ns.pid {
        unshare(CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("cannot create a PID namespace: {e}"))?;
    }
    Ok(listener)
}

fn net(port: u16) -> Result<TcpListener, String> {
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    // A child forked from this thread inherits its namespace.
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2) to bring up loopback: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip link set lo up` failed in the agent namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port} in the agent namespace: {e}"))
}
