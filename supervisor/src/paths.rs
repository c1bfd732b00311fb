//! Paths resolved once, the way the kernel will resolve them, so that what
//! Lanyard connects to and what it hides from the agent can never differ.

use std::path::{Component, Path, PathBuf};

use spiffe::transport::Endpoint;

/// A path with every symlink in its existing part followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute, canonical as far as it exists, lexically normalised beyond.
    pub path: PathBuf,
    /// Whether the whole path exists.
    pub exists: bool,
}

/// Resolves `p` (absolute) component by component: `..` after a symlink
/// means the parent of the link's target, as it does for the kernel.
pub fn resolve(p: &Path) -> Result<Resolved, String> {
    if !p.is_absolute() {
        return Err(format!("'{}' must be an absolute path", p.display()));
    }
    let mut cur = PathBuf::from("/");
    let mut exists = true;
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(n) => {
                let next = cur.join(n);
                if exists && std::fs::symlink_metadata(&next).is_ok() {
                    cur = std::fs::canonicalize(&next)
                        .map_err(|e| format!("cannot resolve '{}': {e}", next.display()))?;
                } else {
                    exists = false;
                    cur = next;
                }
            }
        }
    }
    Ok(Resolved { path: cur, exists })
}

/// The Workload API address from config or `SPIFFE_ENDPOINT_SOCKET`, parsed
/// by the same parser the client uses and, for a unix socket, with its
/// directory resolved. The client connects to exactly this value.
pub fn workload_endpoint(configured: Option<&str>) -> Result<Option<Endpoint>, String> {
    let raw = configured.map(str::to_owned).or_else(|| {
        std::env::var("SPIFFE_ENDPOINT_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let Some(raw) = raw else {
        return Ok(None);
    };
    let parsed = Endpoint::parse(&raw)
        .map_err(|e| format!("'{raw}': {e}; write it as unix:///path/to/socket"))?;
    let Endpoint::Unix(path) = parsed else {
        return Err(format!(
            "'{raw}' must be unix:///path/to/socket: a TCP Workload API cannot be hidden from the agent"
        ));
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("'{raw}' names no socket file"));
    };
    let dir = resolve(dir)?;
    Ok(Some(Endpoint::Unix(dir.path.join(name))))
}

/// The socket's path, for a unix endpoint.
pub fn socket_path(e: &Endpoint) -> Option<&Path> {
    match e {
        Endpoint::Unix(p) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_links_resolve_like_the_kernel() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir_all(real.join("sock")).unwrap();
        std::os::unix::fs::symlink(real.join("sock"), d.path().join("link")).unwrap();
        let canon = std::fs::canonicalize(real.join("sock")).unwrap();
        let r = resolve(&d.path().join("link")).unwrap();
        assert_eq!(
            r,
            Resolved {
                path: canon.clone(),
                exists: true
            }
        );
        // `link/..` is the target's parent, not d.
        let r = resolve(&d.path().join("link/../sock")).unwrap();
        assert_eq!(r.path, canon);
        let r = resolve(&d.path().join("link/missing/../x")).unwrap();
        assert_eq!(
            r,
            Resolved {
                path: canon.join("x"),
                exists: false
            }
        );
        assert!(resolve(Path::new("relative")).is_err());
    }

    #[test]
    fn the_socket_is_the_one_the_client_would_dial() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("spire");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("alias")).unwrap();
        let canon = std::fs::canonicalize(&real).unwrap();
        for raw in [
            format!("unix://{}/x/%2e%2e/spire/agent.sock", d.path().display()),
            format!("unix:{}/alias/agent.sock", d.path().display()),
            format!("unix://{}/spire/./agent.sock", d.path().display()),
        ] {
            let e = workload_endpoint(Some(&raw)).unwrap().unwrap();
            assert_eq!(socket_path(&e).unwrap(), canon.join("agent.sock"), "{raw}");
        }
        assert!(workload_endpoint(Some("tcp://127.0.0.1:1")).is_err());
    }
}
