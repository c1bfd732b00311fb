//! The agent's network namespace: loopback only, with Lanyard's listener
//! inside it. There is no route and no other interface, so the proxy is the
//! only thing the agent can connect to; a client that ignores HTTP_PROXY gets
//! "network unreachable" or "connection refused" instead of a way out.
//!
//! The namespace is created by a dedicated thread (namespaces are per-thread
//! in Linux) that binds the listener and then parks for the life of the
//! process, keeping the namespace alive without a bind mount to clean up.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;

use nix::sched::{CloneFlags, unshare};

/// A network namespace holding Lanyard's listener.
#[derive(Debug)]
pub struct AgentNet {
    /// Bound inside the namespace on 127.0.0.1.
    pub listener: TcpListener,
    /// `/proc/<pid>/task/<tid>/ns/net`, for the launcher to join.
    pub netns: PathBuf,
}

/// Creates the namespace and binds `127.0.0.1:port` inside it (0 picks a port).
pub fn create(port: u16) -> Result<AgentNet, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("lanyard-netns".into())
        .spawn(move || {
            let setup = || -> Result<(TcpListener, i32), String> {
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
                let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
                    .map_err(|e| {
                        format!("cannot listen on 127.0.0.1:{port} in the agent namespace: {e}")
                    })?;
                Ok((listener, nix::unistd::gettid().as_raw()))
            };
            let failed = {
                let r = setup();
                let failed = r.is_err();
                let _ = tx.send(r);
                failed
            };
            if !failed {
                loop {
                    std::thread::park();
                }
            }
        })
        .map_err(|e| format!("cannot start the namespace thread: {e}"))?;
    let (listener, tid) = rx
        .recv()
        .map_err(|_| "namespace thread died".to_owned())??;
    Ok(AgentNet {
        listener,
        netns: PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())),
    })
}
