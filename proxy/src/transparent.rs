//! Transparent front end: connections the kernel redirected to Lanyard
//! (`lanyard init`'s nftables rules) enter the same pipeline a CONNECT does.
//!
//! The original destination is read from the socket (`SO_ORIGINAL_DST`,
//! `IP6T_SO_ORIGINAL_DST`); a connection without one (not redirected) or
//! whose original destination is Lanyard itself is refused. Then the first
//! bytes are peeked, not consumed:
//!
//! - **TLS with SNI:** the target is SNI + the original port. An endpoint
//!   host is intercepted and injected exactly as after a CONNECT; any other
//!   name goes through egress policy and is tunnelled blind, or, when the
//!   allow entry has statements, intercepted without injection so each
//!   request is decided by them. Either way
//!   Lanyard dials the *name* through its own resolution (`resolve:` pins,
//!   then DNS), never the address the agent chose: an agent that points SNI
//!   `alpha.test` at an address of its own gets alpha's real server, and a
//!   name on the egress allow list cannot carry the agent to another address.
//!   When the original address is not among those the name resolves to (CDN
//!   rotation, or an agent steering), the connection proceeds to the name and
//!   the log says `original_dst_mismatch`.
//! - **TLS without SNI, and anything that is neither TLS nor HTTP:** no name,
//!   so no injection; egress policy decides on the original address, and the
//!   bytes are tunnelled blind to it (refused when the entry that allows the
//!   address has statements: nothing could enforce them).
//! - **Plain HTTP:** served by the HTTP/1.1 front end, each request routed by
//!   its Host header (with the original port when it names none), as an
//!   absolute-form request would be: invariant 2 holds unchanged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::Shared;
use crate::io::DrainWatch;
use crate::matcher::{ConnectPlan, EgressDecision};
use crate::parse::{Host, Target};
use crate::relay::{self, Purpose};

/// Largest ClientHello record read before deciding (a TLS record is at most 16 KiB).
const MAX_HELLO: usize = 5 + 16 * 1024;

/// Binds the transparent listeners: an unspecified IPv6 address also binds
/// the IPv4 one, each socket single-family, so each reads its own family's
/// original destination.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
    let mut out: Vec<TcpListener> = Vec::new();
    let v6_any = matches!(addr.ip(), IpAddr::V6(ip) if ip.is_unspecified());
    for a in std::iter::once(addr)
        .chain(v6_any.then(|| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), addr.port())))
    {
        let socket = if a.is_ipv6() {
            let s = tokio::net::TcpSocket::new_v6()?;
            rustix::net::sockopt::set_ipv6_v6only(&s, true)?;
            s
        } else {
            tokio::net::TcpSocket::new_v4()?
        };
        socket.set_reuseaddr(true)?;
        // Port 0 on the v6 socket: the v4 one takes the same port.
        let a = match out.first() {
            Some(first) if a.port() == 0 => SocketAddr::new(a.ip(), first.local_addr()?.port()),
            _ => a,
        };
        socket.bind(a)?;
        out.push(socket.listen(1024)?);
    }
    Ok(out)
}

/// The destination the agent dialled, before the kernel redirected it here.
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    match stream.local_addr()? {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(stream)
            .map(SocketAddr::V4)
            .map_err(Into::into),
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(stream)
            .map(SocketAddr::V6)
            .map_err(Into::into),
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// A TLS ClientHello, with its server name if it sent one.
    Tls(Option<String>),
    /// An HTTP/1 request line.
    Http,
    /// Something else.
    Other,
}

/// Classifies the first bytes of a connection; for TLS, extracts SNI from
/// the first record (RFC 8446 §4.1.2, RFC 6066 §3). Never panics on any
/// input: every length is checked against what is there.
pub fn peek_kind(b: &[u8]) -> Peeked {
    let Some(&first) = b.first() else {
        return Peeked::NeedMore;
    };
    if first == 0x16 {
        if b.len() < 5 {
            return Peeked::NeedMore;
        }
        if b[1] != 0x03 {
            return Peeked::Other;
        }
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        if b.len() < 5 + len {
            return if 5 + len > MAX_HELLO {
                Peeked::Tls(None)
            } else {
                Peeked::NeedMore
            };
        }
        return Peeked::Tls(client_hello_sni(&b[5..5 + len]));
    }
    // An HTTP method is an upper-case token followed by a space.
    let token = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    match b.get(token) {
        None if token < 16 => Peeked::NeedMore,
        Some(b' ') if token > 0 => Peeked::Http,
        _ => Peeked::Other,
    }
}

/// A little cursor over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

fn client_hello_sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    let mut r = Reader(r.take(body_len.min(r.0.len()))?);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut d = Reader(data);
        let list = d.u16()?;
        let mut names = Reader(d.take(list)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            // RFC 6066 §3: a HostName is never empty; an empty one is no name.
            if kind == 0 && !name.is_empty() {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
        }
        return None;
    }
    None
}

/// Serves one redirected connection.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    permit: crate::accept::Held,
    watch: DrainWatch,
    own: Arc<Vec<SocketAddr>>,
) {
    let orig = match original_dst(&stream) {
        Ok(a) => a,
        Err(e) => {
            return info!(error = %e, "refused: a connection to the transparent port that the kernel did not redirect");
        }
    };
    if loops_back(orig, &own) {
        return info!(%orig, "refused: the original destination is Lanyard itself");
    }
    let limit = shared.settings.config.limits.header_read_timeout;
    let kind = match tokio::time::timeout(limit, peek(&stream)).await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => {
            return debug!(%orig, error = %e, "redirected connection ended before its first bytes");
        }
        Err(_) => Peeked::Other,
    };
    let permit = Arc::new(permit);
    match kind {
        Peeked::Http => {
            let peer = stream.peer_addr().unwrap_or(orig);
            crate::accept::serve_http1(shared, stream, peer, permit, watch, Some(orig.port()))
                .await;
        }
        Peeked::Tls(Some(sni)) => match Host::parse(&sni) {
            Ok(host) => {
                let target = Target {
                    host,
                    port: orig.port(),
                };
                by_name(shared, stream, orig, target, permit, watch).await;
            }
            Err(e) => info!(%orig, sni = ?sni, error = %e, "refused: unusable SNI"),
        },
        Peeked::Tls(None) | Peeked::Other | Peeked::NeedMore => {
            blind_to_address(shared, stream, orig, permit).await;
        }
    }
}

/// Whether `orig` is Lanyard itself: one of its listeners' ports on loopback
/// or on the listener's own address. Traffic to other local addresses leaves
/// through `lo`, which the rules never redirect, so it cannot arrive here;
/// the same port on a remote host is just another destination.
fn loops_back(orig: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter()
        .any(|l| l.port() == orig.port() && (l.ip() == orig.ip() || orig.ip().is_loopback()))
}

/// Peeks until the first bytes can be classified.
async fn peek(stream: &TcpStream) -> std::io::Result<Peeked> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut last = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match peek_kind(&buf[..n]) {
            Peeked::NeedMore if n < buf.len() => {
                // peek returns at once while bytes wait: give the rest of a
                // split hello a moment to arrive (bounded by the caller).
                if n == last {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                last = n;
            }
            Peeked::NeedMore => return Ok(Peeked::Other),
            k => return Ok(k),
        }
    }
}

/// TLS naming a host: intercept an endpoint, tunnel anything else allowed,
/// always to the name as Lanyard resolves it.
async fn by_name(
    shared: Arc<Shared>,
    stream: TcpStream,
    orig: SocketAddr,
    target: Target,
    permit: crate::accept::ConnPermit,
    watch: DrainWatch,
) {
    let plan = match shared.settings.connect_plan(&target) {
        Ok(plan) => plan,
        Err(rule) => {
            let detail = format!("redirected connection to {target} denied by {rule}");
            shared
                .telemetry
                .denied_connection("egress", &target.to_string(), &detail);
            return info!(%orig, dest = %target, %rule, "refused by egress policy");
        }
    };
    let purpose = match plan {
        ConnectPlan::Intercept | ConnectPlan::Passthrough => Purpose::Endpoint,
        ConnectPlan::Inspect | ConnectPlan::Unmatched => Purpose::Egress,
    };
    // A warm upstream pool stands in for the dial, as for a CONNECT.
    let warm = match plan {
        ConnectPlan::Intercept | ConnectPlan::Inspect => shared.pools.warm(&target),
        _ => None,
    };
    let (dialed, addr) = match warm {
        Some(addr) => (None, addr),
        None => match relay::dial(&shared, &target, purpose).await {
            Ok(d) => {
                let addr = d.addr;
                (Some(d), addr)
            }
            Err(e) => {
                shared.telemetry.connection_failed(&e, &target.to_string());
                return info!(%orig, dest = %target, error = %e, "refused: cannot reach the destination");
            }
        },
    };
    let mismatch = addr.ip() != orig.ip();
    let mode = match plan {
        ConnectPlan::Unmatched => "tunnel",
        plan => plan.label(),
    };
    info!(%orig, dest = %target, dialed = %addr, original_dst_mismatch = mismatch, mode, "redirected");
    if mismatch {
        // The agent's resolver and Lanyard's disagree: worth a record, since
        // the agent meant one address and Lanyard dialled another.
        shared.telemetry.audit(
            "original_dst_mismatch",
            &serde_json::json!({
                "dest": target.to_string(),
                "original_dst": orig.to_string(),
                "upstream": addr.to_string(),
                "mode": mode,
            }),
        );
    }
    shared.telemetry.tunnel_opened(plan.label());
    match (plan, dialed) {
        (ConnectPlan::Intercept | ConnectPlan::Inspect, dialed) => {
            crate::intercept::run(shared, stream, target, dialed, watch, permit).await;
        }
        (_, Some(dialed)) => {
            let _permit = permit;
            relay::blind(&shared, stream, dialed.stream).await;
        }
        (_, None) => debug!("no connection to relay to"),
    }
}

/// No name to go by: egress policy on the original address, then a blind tunnel to it.
async fn blind_to_address(
    shared: Arc<Shared>,
    stream: TcpStream,
    orig: SocketAddr,
    permit: crate::accept::ConnPermit,
) {
    let target = Target {
        host: Host::Ip(orig.ip()),
        port: orig.port(),
    };
    let refused = match shared.settings.egress.decide(&target) {
        EgressDecision::Deny(rule) => Some(format!("denied by {rule}")),
        // Statements decide requests; without a name there is no request
        // Lanyard can read, and a blind tunnel would bypass them.
        EgressDecision::Inspect(rule) => Some(format!(
            "{rule} has statements, and a connection without a TLS name or HTTP cannot be inspected"
        )),
        EgressDecision::Allow(_) => None,
    };
    if let Some(why) = refused {
        let detail = format!("redirected connection to {target} {why}");
        shared
            .telemetry
            .denied_connection("egress", &target.to_string(), &detail);
        return info!(%orig, %why, "refused by egress policy");
    }
    let dialed = match relay::dial(&shared, &target, Purpose::Egress).await {
        Ok(d) => d,
        Err(e) => {
            shared.telemetry.connection_failed(&e, &target.to_string());
            return info!(%orig, error = %e, "refused: cannot reach the destination");
        }
    };
    info!(%orig, mode = "tunnel", "redirected");
    shared.telemetry.tunnel_opened("blind");
    let _permit = permit;
    relay::blind(&shared, stream, dialed.stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn hello(name: Option<&str>) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap(),
            None => rustls::pki_types::ServerName::IpAddress(rustls::pki_types::IpAddr::from(
                std::net::IpAddr::from([192, 0, 2, 1]),
            )),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        let _ = conn.write_tls(&mut out);
        out
    }

    #[test]
    fn sni_is_read_from_a_real_client_hello() {
        let h = hello(Some("alpha.test"));
        assert_eq!(peek_kind(&h), Peeked::Tls(Some("alpha.test".into())));
        // Without SNI (an IP address is never sent as SNI).
        assert_eq!(peek_kind(&hello(None)), Peeked::Tls(None));
        // Every prefix is "need more", never a wrong answer or a panic.
        for n in 0..h.len() {
            assert_eq!(peek_kind(&h[..n]), Peeked::NeedMore, "prefix of {n}");
        }
    }

    #[test]
    fn only_lanyard_itself_is_a_loop() {
        let own: Vec<SocketAddr> = ["[::]:15001", "0.0.0.0:15001", "127.0.0.1:3128"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for (orig, want) in [
            ("127.0.0.1:15001", true),
            ("[::1]:15001", true),
            ("127.0.0.1:3128", true),
            ("0.0.0.0:15001", true),
            // A remote service that happens to use the same port is not Lanyard.
            ("198.51.100.7:15001", false),
            ("[2001:db8::7]:15001", false),
            ("127.0.0.1:443", false),
        ] {
            assert_eq!(loops_back(orig.parse().unwrap(), &own), want, "{orig}");
        }
    }

    #[test]
    fn other_protocols_are_told_apart() {
        assert_eq!(peek_kind(b"GET / HTTP/1.1\r\n"), Peeked::Http);
        assert_eq!(peek_kind(b"OPTIONS * HTTP/1.1\r\n"), Peeked::Http);
        assert_eq!(peek_kind(b"GE"), Peeked::NeedMore);
        assert_eq!(peek_kind(b"SSH-2.0-OpenSSH\r\n"), Peeked::Other);
        assert_eq!(peek_kind(b"\x00\x01"), Peeked::Other);
        assert_eq!(peek_kind(b"\x16\x02\x00\x00\x00"), Peeked::Other);
    }

    #[test]
    fn malformed_hellos_never_panic() {
        let h = hello(Some("alpha.test"));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut m = h.clone();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(0..m.len());
                m[i] = rng.u8(..);
            }
            let _ = peek_kind(&m);
            let cut = rng.usize(0..m.len());
            let _ = peek_kind(&m[..cut]);
        }
    }
}
