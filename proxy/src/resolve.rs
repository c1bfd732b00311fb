//! Name resolution for every connection Lanyard opens (upstreams, tunnels,
//! token endpoints): names pinned in `resolve:` first, then the system
//! resolver, bounded in time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::parse::Host;

/// Addresses for a host, and whether they came from a `resolve:` pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Candidate addresses, in resolver order.
    pub addrs: Vec<IpAddr>,
    /// True when the name was pinned in config (not looked up).
    pub pinned: bool,
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup took longer than allowed.
    #[error("DNS lookup timed out")]
    Timeout,
    /// The resolver failed.
    #[error("cannot resolve: {0}")]
    Failed(#[from] std::io::Error),
}

/// Resolves `host` (literal addresses resolve to themselves).
pub async fn resolve(
    pins: &HashMap<Host, IpAddr>,
    host: &Host,
    port: u16,
    limit: Duration,
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
    if let Some(ip) = pins.get(host) {
        return Ok(Resolved {
            addrs: vec![*ip],
            pinned: true,
        });
    }
    let found = tokio::time::timeout(limit, tokio::net::lookup_host((name.as_str(), port)))
        .await
        .map_err(|_| ResolveError::Timeout)??;
    Ok(Resolved {
        addrs: found.map(|a| a.ip()).collect(),
        pinned: false,
    })
}
