//! What the supervisor tells the launcher: one value, serialised into a
//! single environment variable of the launcher's otherwise fixed environment.
//!
//! The agent's own environment travels inside it, encoded, so nothing the
//! agent's config can set (`LD_PRELOAD`, `GCONV_PATH`, ...) is seen by the
//! dynamic loader of a process that still runs as root: it is applied by the
//! final `execve` alone, after every privilege is gone. Arguments would be
//! readable by every user on the host (`/proc/<pid>/cmdline`); the environment
//! of a root process is not.

use std::ffi::OsString;
use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The variable the spec travels in.
pub const VAR: &str = "LANYARD_SANDBOX_SPEC";
/// `PATH` of the launcher itself (never the agent's).
pub const LAUNCHER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the launcher needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// uid and gid to become; `None` when Lanyard is not root (`isolation: none` only).
    pub ids: Option<(u32, u32)>,
    /// Mount namespace setup; `None` under `isolation: none`.
    pub mounts: Option<Mounts>,
    /// Whether the launcher is PID 1 of a new PID namespace (mount a fresh `/proc`).
    pub pid_namespace: bool,
    /// Working directory in the agent's view.
    pub workdir: PathBuf,
    /// Stdin is a pty the supervisor relays: make it the controlling terminal.
    pub tty: bool,
    /// Apply the seccomp filter and Landlock (full isolation).
    pub confine: bool,
    /// Paths the agent may write below (Landlock); reads are allowed everywhere it can see.
    pub writable: Vec<PathBuf>,
    /// The agent command.
    pub command: Vec<OsString>,
    /// The agent's complete environment.
    pub env: Vec<(String, String)>,
}

/// The agent's mount namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mounts {
    /// Allowlist root (pivot into a tmpfs), or the host's root.
    pub root: Root,
    /// Directories covered by an empty read-only tmpfs (resolved, existing on the host).
    pub hide_dirs: Vec<PathBuf>,
    /// Files covered by an empty read-only file (resolved, existing on the host).
    pub hide_files: Vec<PathBuf>,
    /// An empty directory owned by root where the launcher mounts its scratch tmpfs.
    pub scratch: PathBuf,
}

/// `agent.filesystem`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Root {
    /// A new root: read-only binds of `read_only`, writable binds of
    /// `writable`, a private `/tmp`, a minimal `/dev`, a fresh `/proc`.
    Minimal {
        /// Bound read-only at the same path (system directories, the CA directory, config).
        read_only: Vec<PathBuf>,
        /// Bound writable at the same path (the workdir, config).
        writable: Vec<PathBuf>,
    },
    /// The host's root, minus the hidden paths.
    Host,
}

impl Spec {
    /// The value of [`VAR`].
    pub fn encode(&self) -> Result<String, String> {
        let json = serde_json::to_vec(self).map_err(|e| format!("encode sandbox spec: {e}"))?;
        Ok(base64::engine::general_purpose::STANDARD_NO_PAD.encode(json))
    }

    /// Reads [`VAR`] from the launcher's environment.
    pub fn from_env() -> Result<Self, String> {
        let v = std::env::var(VAR)
            .map_err(|_| format!("{VAR} missing: only `lanyard run` starts the launcher"))?;
        let json = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(v)
            .map_err(|e| format!("{VAR}: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("{VAR}: {e}"))
    }
}
