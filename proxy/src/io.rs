//! I/O plumbing shared by every phase: an idle timeout that covers both
//! directions, and the task set that graceful shutdown drains.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// Fails reads and writes with `TimedOut` once no byte has moved in either
    /// direction for `timeout`. Activity only stamps an `Instant`; the timer is
    /// re-armed lazily when it fires, so the hot path never touches the timer wheel.
    pub struct IdleIo<T> {
        #[pin]
        inner: T,
        sleep: Pin<Box<Sleep>>,
        last: Instant,
        timeout: Duration,
    }
}

impl<T> IdleIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            last: now,
            timeout,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn poll_idle(self: Pin<&mut Self>, cx: &mut Context<'_>) -> io::Result<()> {
        let this = self.project();
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let due = *this.last + *this.timeout;
            if due <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle timeout",
                ));
            }
            this.sleep.as_mut().reset(due);
        }
    }
}

impl<T: AsyncRead> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.as_mut().project();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    *this.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.poll_idle(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        match this.inner.poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    *this.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.poll_idle(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    *this.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.poll_idle(cx)?;
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.project().inner.poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

/// Spawns hyper's HTTP/2 stream tasks inside the connection's span, so each
/// request's log line names its peer and destination.
#[derive(Debug, Clone)]
pub struct SpanExecutor(pub tracing::Span);

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        use tracing::Instrument;
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}

/// Every task that serves a connection. Shutdown signals them, waits for the
/// last one to drop its receiver (or the deadline), then aborts the rest.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
}

/// Held by each connection task; resolves `signalled` when shutdown begins.
#[derive(Debug, Clone)]
pub struct DrainWatch(watch::Receiver<bool>);

impl DrainWatch {
    /// Completes once shutdown has been requested.
    pub async fn signalled(&mut self) {
        // An error means the sender is gone, which also means shutdown.
        let _ = self.0.wait_for(|v| *v).await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            tx: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
        }
    }
}

impl Drain {
    /// Spawns a tracked task; `f` receives the watch it should select on.
    pub fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(DrainWatch) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = f(DrainWatch(self.tx.subscribe()));
        if let Ok(mut set) = self.tasks.lock() {
            while set.try_join_next().is_some() {}
            set.spawn(fut);
        } else {
            // A poisoned lock means a panic while spawning; keep serving untracked.
            tokio::spawn(fut);
        }
    }

    /// Signals every task, waits up to `deadline` for them to finish, aborts the rest.
    /// Returns how many were still running at the deadline.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        self.tx.send_replace(true);
        let _ = tokio::time::timeout(deadline, self.tx.closed()).await;
        match self.tasks.lock() {
            Ok(mut set) => {
                while set.try_join_next().is_some() {}
                let left = set.len();
                set.abort_all();
                left
            }
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_read_times_out_and_activity_extends() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(10));
        b.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        idle.read_exact(&mut buf).await.unwrap();
        let start = Instant::now();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_aborts_stragglers_at_deadline() {
        let drain = Drain::default();
        drain.spawn(|mut w| async move { w.signalled().await });
        drain.spawn(|_w| std::future::pending());
        assert_eq!(drain.shutdown(Duration::from_secs(1)).await, 1);
    }
}

/// HTTP/2 bounds, the same on the agent side and the upstream side, so one
/// connection cannot pin more than about
/// `H2_MAX_STREAMS × H2_MAX_SEND_BUF + H2_CONN_WINDOW` (≈ 7.4 MiB) however
/// its peer behaves (hyper's defaults allowed ~80 MB: 150+ streams, each
/// with a 400 KiB send buffer, never read).
pub(crate) mod h2 {
    /// Streams open at once on one connection.
    pub(crate) const MAX_STREAMS: u32 = 100;
    /// Bytes buffered for sending on one stream before the writer waits.
    pub(crate) const MAX_SEND_BUF: usize = 64 * 1024;
    /// Flow-control window granted per stream (what a peer may send unread).
    pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;
    /// Flow-control window granted per connection.
    pub(crate) const CONN_WINDOW: u32 = 1024 * 1024;
    /// Reset streams tolerated before the connection is closed (rapid reset).
    pub(crate) const MAX_PENDING_RESETS: usize = 100;
}
