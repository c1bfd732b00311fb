//! Name resolution and connecting, for every connection Lanyard opens
//! (upstreams, tunnels, token endpoints).
//!
//! - **Resolution:** names pinned in `resolve:` first, then the system
//!   resolver through a process-wide cache: answers are kept for
//!   [`CACHE_TTL`] (getaddrinfo reports no TTL), concurrent misses for one
//!   name share one lookup, and at most [`MAX_LOOKUPS`] lookups run at once,
//!   so a burst of CONNECTs cannot fill the blocking pool with resolver calls.
//! - **Connecting:** Happy Eyeballs (RFC 8305): addresses interleaved by
//!   family, a new attempt started every [`ATTEMPT_DELAY`] (or as soon as one
//!   fails) while earlier ones continue, the first to succeed wins; DNS and
//!   every attempt share one deadline, the caller's connect timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::parse::Host;

/// How long a resolver answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Names kept in the cache.
pub const CACHE_SIZE: u64 = 4096;
/// Resolver calls in flight at once, process-wide.
pub const MAX_LOOKUPS: usize = 32;
/// RFC 8305 §5 "Connection Attempt Delay" (recommended 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Addresses for a host, and whether they came from a `resolve:` pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Candidate addresses, in resolver order.
    pub addrs: Vec<IpAddr>,
    /// True when the name was pinned in config (not looked up).
    pub pinned: bool,
}

/// Why a name did not resolve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The lookup took longer than allowed.
    #[error("DNS lookup timed out")]
    Timeout,
    /// The resolver failed.
    #[error("cannot resolve: {0}")]
    Failed(String),
}

struct Cache {
    answers: moka::future::Cache<String, Arc<Vec<IpAddr>>>,
    lookups: tokio::sync::Semaphore,
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache {
        answers: moka::future::Cache::builder()
            .max_capacity(CACHE_SIZE)
            .time_to_live(CACHE_TTL)
            .build(),
        lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
    })
}

/// Resolves `host` (literal addresses resolve to themselves) by `deadline`.
pub async fn resolve(
    pins: &HashMap<Host, Vec<IpAddr>>,
    host: &Host,
    port: u16,
    deadline: Instant,
) -> Result<Resolved, ResolveError> {
    let name = match host {
        Host::Ip(ip) => {
            return Ok(Resolved {
                addrs: vec![*ip],
                pinned: false,
            });
        }
        Host::Name(n) => n,
    };
    if let Some(ips) = pins.get(host) {
        return Ok(Resolved {
            addrs: ips.clone(),
            pinned: true,
        });
    }
    let c = cache();
    let lookup = c.answers.try_get_with(name.clone(), async {
        let _slot = c
            .lookups
            .acquire()
            .await
            .map_err(|_| ResolveError::Failed("resolver shut down".into()))?;
        let found = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| ResolveError::Failed(e.to_string()))?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a.ip()) {
                addrs.push(a.ip());
            }
        }
        Ok::<_, ResolveError>(Arc::new(addrs))
    });
    let addrs = tokio::time::timeout_at(deadline, lookup)
        .await
        .map_err(|_| ResolveError::Timeout)?
        .map_err(|e: Arc<ResolveError>| (*e).clone())?;
    Ok(Resolved {
        addrs: (*addrs).clone(),
        pinned: false,
    })
}

/// Why no connection was made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The deadline passed first.
    #[error("timed out")]
    Timeout,
    /// Every address failed; the last reason.
    #[error("{0}")]
    Failed(String),
}

/// RFC 8305 §4: alternate address families, starting with the first one's.
pub fn interleave(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<IpAddr>, Vec<IpAddr>) =
        addrs.iter().partition(|a| a.is_ipv4() == first.is_ipv4());
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while !same.is_empty() || !other.is_empty() {
        out.extend(same.pop());
        out.extend(other.pop());
    }
    out
}

/// Connects to the first of `addrs` (on `port`) that answers, Happy Eyeballs
/// style, by `deadline`.
pub async fn connect(
    addrs: &[IpAddr],
    port: u16,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut queue = interleave(addrs)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port));
    let mut attempts = tokio::task::JoinSet::new();
    let mut last = String::from("no addresses");
    let start = |set: &mut tokio::task::JoinSet<_>, addr: SocketAddr| {
        set.spawn(async move { (addr, TcpStream::connect(addr).await) });
    };
    match queue.next() {
        Some(a) => start(&mut attempts, a),
        None => return Err(ConnectError::Failed(last)),
    }
    loop {
        let more = queue.len() > 0;
        let next_attempt = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((addr, Ok(stream)))) => return Ok((stream, addr)),
                Some(Ok((addr, Err(e)))) => {
                    last = format!("connect {addr}: {e}");
                    // A failure starts the next attempt at once.
                    if let Some(a) = queue.next() {
                        start(&mut attempts, a);
                    }
                }
                Some(Err(e)) => last = format!("connect attempt failed: {e}"),
                None => match queue.next() {
                    Some(a) => start(&mut attempts, a),
                    None => return Err(ConnectError::Failed(last)),
                },
            },
            () = next_attempt, if more => {
                if let Some(a) = queue.next() {
                    start(&mut attempts, a);
                }
            }
            () = tokio::time::sleep_until(deadline) => return Err(ConnectError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate_starting_with_the_first() {
        let a: Vec<IpAddr> = ["::1", "::2", "127.0.0.1", "127.0.0.2", "::3"]
            .iter()
            .map(|s| s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
            .collect();
        let got: Vec<String> = interleave(&a).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["::1", "127.0.0.1", "::2", "127.0.0.2", "::3"]);
        assert!(interleave(&[]).is_empty());
    }
}
