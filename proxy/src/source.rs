//! Where credentials come from. The proxy only knows this trait; SPIFFE-based
//! grants live in the supervisor crate behind it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::secret::Secret;

/// A boxed, sendable future (the trait stays object-safe without a macro crate).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a source could not produce a credential. The text is shown to the
/// client in a 503, so sources must keep secrets and request bodies out of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A provider of credentials for matched endpoints.
pub trait TokenSource: Send + Sync + 'static {
    /// The credential to inject for a request matched to `endpoint` (the
    /// endpoint's configured name). Called on the request path: implementations
    /// cache, and must never return an expired credential.
    fn token<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Result<Secret, SourceError>>;
}

/// A token read from a file and read again whenever the file changes
/// (size, mtime or inode), e.g. a mounted Kubernetes secret.
#[derive(Debug)]
pub struct StaticSource {
    path: PathBuf,
    state: Mutex<Option<(Stamp, Secret)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl StaticSource {
    /// Opens the source, reading the file once so a bad path fails at start.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let s = StaticSource {
            path: path.into(),
            state: Mutex::new(None),
        };
        s.current()?;
        Ok(s)
    }

    /// A source that reads the file only when asked: a token that may
    /// appear after start (a delegation's subject token, written by whoever
    /// provisions the sandbox). A missing file is an error at each read.
    pub fn lazy(path: impl Into<PathBuf>) -> Self {
        StaticSource {
            path: path.into(),
            state: Mutex::new(None),
        }
    }

    /// The token now: the file is read again when it changed.
    pub fn current(&self) -> Result<Secret, SourceError> {
        let stamp = stamp(&self.path)?;
        let mut guard = self
            .state
            .lock()
            .map_err(|_| SourceError("token file state poisoned".into()))?;
        if let Some((old, secret)) = guard.as_ref()
            && *old == stamp
        {
            return Ok(secret.clone());
        }
        let secret = read_token(&self.path)?;
        *guard = Some((stamp, secret.clone()));
        Ok(secret)
    }
}

impl TokenSource for StaticSource {
    fn token<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, Result<Secret, SourceError>> {
        // A stat per request is cheaper than a watcher thread and never misses
        // a symlink swap (how Kubernetes updates mounted secrets).
        let r = self.current();
        Box::pin(async move { r })
    }
}

fn stamp(path: &Path) -> Result<Stamp, SourceError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)
        .map_err(|e| SourceError(format!("token file {}: {e}", path.display())))?;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

fn read_token(path: &Path) -> Result<Secret, SourceError> {
    let raw = std::fs::read(path)
        .map_err(|e| SourceError(format!("token file {}: {e}", path.display())))?;
    let raw = zeroize::Zeroizing::new(raw);
    let text = std::str::from_utf8(&raw)
        .map_err(|_| SourceError(format!("token file {} is not UTF-8", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SourceError(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SourceError(format!(
            "token file {} holds characters not allowed in a header value",
            path.display()
        )));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rereads_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "first\n").unwrap();
        let s = StaticSource::new(&path).unwrap();
        assert_eq!(s.token("e").await.unwrap().expose(), "first");
        // Replace by rename, as a secret mount does: new inode, so no reliance on mtime granularity.
        let tmp = dir.path().join("tok.new");
        std::fs::write(&tmp, "second-token").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(s.token("e").await.unwrap().expose(), "second-token");
        std::fs::remove_file(&path).unwrap();
        let e = s.token("e").await.unwrap_err();
        assert!(e.0.contains("token file"), "{e}");
    }

    #[test]
    fn refuses_unsafe_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "a b").unwrap();
        let e = StaticSource::new(&path).unwrap_err();
        assert!(!e.0.contains("a b"), "error echoes the token: {e}");
        std::fs::write(&path, "  \n").unwrap();
        assert!(StaticSource::new(&path).unwrap_err().0.contains("empty"));
    }
}
