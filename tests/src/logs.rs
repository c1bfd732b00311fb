//! Every log line of a test binary, at TRACE for every crate, kept in memory
//! so a test can assert what never appears in them (tokens, SVIDs, keys).

use std::sync::{Arc, Mutex, OnceLock};

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// Installs the TRACE subscriber for this test binary (once) and returns
/// its buffer.
pub fn trace() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Capture::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    })
}

/// Panics if any of `secrets` was logged (or if nothing was: TRACE is off).
pub fn assert_never_logged(secrets: &[&str]) {
    let text = trace().text();
    assert!(!text.is_empty(), "nothing was logged: is TRACE on?");
    for s in secrets {
        assert!(
            !text.contains(s),
            "a secret reached a log line ({} chars)",
            s.len()
        );
    }
}
