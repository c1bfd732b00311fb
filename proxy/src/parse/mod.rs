//! Parse phase: turn the names and paths a client sent into canonical forms
//! that matching, injection and dialing all agree on.
//!
//! Hosts are lower-cased, stripped of one trailing dot and IDNA-normalised;
//! paths have dot segments removed and `//` collapsed, and the normalised path
//! is what the upstream receives, so a prefix matched here is the prefix the
//! upstream sees.

use std::fmt;
use std::net::IpAddr;

#[cfg(test)]
mod tests;

/// A canonical destination host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A lower-case ASCII (punycode) DNS name without trailing dot.
    Name(String),
    /// A literal address.
    Ip(IpAddr),
}

impl Host {
    /// Canonicalises a host as written in a URI authority, Host header, SNI or
    /// config (`[::1]` brackets allowed).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("empty host".into());
        }
        if let Some(inner) = raw.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("unterminated IPv6 literal '{raw}'"))?;
            return inner
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| format!("invalid IPv6 literal '{raw}'"));
        }
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        // `16843009`, `0x01010101`, `1.1.257`, `0177.0.0.1`: the system
        // resolver takes all of these as 1.1.1.1 (inet_aton), so rules must too.
        if ends_in_a_number(trimmed) {
            return whatwg_ipv4(trimmed)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| {
                    format!("'{raw}' looks like an IPv4 address but is not a valid one")
                });
        }
        let ascii = idna::domain_to_ascii(trimmed)
            .map_err(|_| format!("'{raw}' is not a valid host name"))?;
        if ascii.is_empty()
            || ascii.len() > 253
            || ascii
                .split('.')
                .any(|l| l.is_empty() || l.len() > 63 || !l.bytes().all(is_label_byte))
        {
            return Err(format!("'{raw}' is not a valid host name"));
        }
        // IDNA maps some forms to digits (full-width digits, `㉙` to `29`):
        // the mapped name is judged as an address again, as a browser's host
        // parser does and as the resolver would (found by the parse fuzz target).
        if ends_in_a_number(&ascii) {
            return whatwg_ipv4(&ascii)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| format!("'{raw}' maps to an invalid IPv4 address"));
        }
        Ok(Host::Name(ascii))
    }

    /// The name for TLS SNI / certificate SAN purposes.
    pub fn as_server_name(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

/// WHATWG URL "ends in a number": the last label is all digits, or `0x`
/// followed by hex digits. Such a host is an IPv4 address or invalid.
fn ends_in_a_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or("");
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The WHATWG IPv4 parser (what browsers and `inet_aton` accept): one to
/// four parts, each decimal, `0x` hex or `0` octal; every part but the last
/// is one byte, the last fills the remaining bytes.
fn whatwg_ipv4(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        // An empty part (`1..1`, a bare `0x`, which a browser reads as 0) is
        // refused: stricter than the resolver is the safe side.
        nums.push(u64::from_str_radix(digits, radix).ok()?);
    }
    let (last, init) = nums.split_last()?;
    if init.iter().any(|n| *n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - u32::try_from(init.len()).ok()?);
    if *last >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u64 = *last;
    for (i, n) in init.iter().enumerate() {
        v |= n << (8 * (3 - i));
    }
    u32::try_from(v).ok().map(std::net::Ipv4Addr::from)
}

fn is_label_byte(b: u8) -> bool {
    // Underscore is not valid in host names but common in real DNS (SRV-style
    // labels, some internal names); accept it rather than break clients.
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An address block (`192.0.2.0/24`, `2001:db8::/32`; a bare address is a
/// block of one). Host bits must be zero: `192.0.2.7/24` is refused rather
/// than silently read as `192.0.2.0/24`, since nftables refuses it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub net: IpAddr,
    /// Prefix length.
    pub bits: u8,
}

impl Cidr {
    /// Parses a block or a bare address.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (ip, bits) = match raw.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (raw, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{raw}': '{ip}' is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("'{raw}': the prefix length must be 0 to {max}"))?,
        };
        let block = Cidr { net, bits };
        let masked = block.mask(net);
        if masked != net {
            return Err(format!(
                "'{raw}' has host bits set; did you mean {masked}/{bits}?"
            ));
        }
        Ok(block)
    }

    /// `ip` with this block's host bits cleared.
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                IpAddr::from((u32::from(v4) & m).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                IpAddr::from((u128::from(v6) & m).to_be_bytes())
            }
        }
    }

    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && self.mask(ip) == self.net
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

/// A canonical `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Canonical host.
    pub host: Host,
    /// Port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    /// Parses `host:port` or `host` (then `default_port`), as in an authority
    /// or a Host header. Userinfo is refused: it has no place in a proxy target.
    pub fn parse_authority(raw: &str, default_port: Option<u16>) -> Result<Self, String> {
        if raw.contains('@') {
            return Err(format!("authority '{raw}' contains userinfo"));
        }
        let (host, port) = split_host_port(raw)?;
        let port = match (port, default_port) {
            (Some(p), _) => p,
            (None, Some(d)) => d,
            (None, None) => return Err(format!("'{raw}' has no port")),
        };
        Ok(Target {
            host: Host::parse(host)?,
            port,
        })
    }
}

fn split_host_port(raw: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => {
                let rest = &raw[end + 1..];
                match rest.strip_prefix(':') {
                    Some(p) => (&raw[..=end], Some(p)),
                    None if rest.is_empty() => (raw, None),
                    None => return Err(format!("malformed authority '{raw}'")),
                }
            }
            None => return Err(format!("malformed authority '{raw}'")),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let port = match port {
        None => None,
        // Digits only: `u16::from_str` would also take a leading '+'.
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!("invalid port in '{raw}'"));
        }
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid port in '{raw}'"))?,
        ),
    };
    Ok((host, port))
}

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadEscape,
    /// A segment a lenient server would read as `.` or `..` (behind an
    /// encoded slash or backslash, `;params`, double encoding or a NUL).
    #[error(
        "path hides a dot segment that a lenient server would resolve (encoded slash or backslash, ';' parameters, double encoding, overlong UTF-8 or NUL)"
    )]
    HiddenDotSegment,
}

/// Normalises an origin-form path (no query): decodes percent-encoded
/// unreserved characters, upper-cases the remaining escapes, collapses empty
/// segments and removes `.` and `..` (RFC 3986 §5.2.4, never above the root).
///
/// Refuses any path in which a lenient server could find a dot segment this
/// normalisation did not see: otherwise `/api/..%2Fadmin` or `/api/..;/admin`
/// could match `/api` here and reach `/admin` there. The lenient reading
/// (see [`lenient_dot_segments`]) is what Tomcat, Jetty, Spring, IIS and
/// friends have been seen to do; the contract is in ARCHITECTURE.md.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw)?;

    let mut out: Vec<&str> = Vec::new();
    let mut visible_dots = 0usize;
    for seg in decoded.split('/').skip(1) {
        match seg {
            "" => {}
            "." => visible_dots += 1,
            ".." => {
                visible_dots += 1;
                out.pop();
            }
            s => out.push(s),
        }
    }
    if lenient_dot_segments(&decoded) > visible_dots {
        return Err(PathError::HiddenDotSegment);
    }

    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || (trailing && !out.is_empty()) {
        path.push('/');
    }
    Ok(path)
}

/// How many dot segments the most lenient server reading of `path` finds.
/// The path is read as it is and after one, two and three rounds of
/// percent-decoding (`%252e` is `.` to a server that decodes twice); in each
/// reading `/` and `\\` separate segments, and a segment ends at its first
/// `;` (path parameters, as Tomcat, Jetty and Spring strip them) or NUL.
/// Each reading is also taken with overlong UTF-8 decoded (`%c0%ae` is `.`
/// and `%c0%af` is `/` to decoders that accept overlong forms).
fn lenient_dot_segments(path: &str) -> usize {
    let mut view = path.as_bytes().to_vec();
    let mut most = count_dots(&view);
    for _ in 0..3 {
        if !view.contains(&b'%') {
            break;
        }
        view = percent_decode(&view);
        most = most
            .max(count_dots(&view))
            .max(count_dots(&decode_overlong(&view)));
    }
    most
}

/// Replaces overlong UTF-8 encodings of ASCII (2-, 3- and 4-byte forms,
/// never valid UTF-8, RFC 3629 §3) with the ASCII byte a lenient decoder
/// would produce; everything else is kept.
fn decode_overlong(s: &[u8]) -> Vec<u8> {
    let cont = |b: Option<&u8>| b.filter(|b| *b & 0xc0 == 0x80).map(|b| u32::from(b & 0x3f));
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        let decoded = match b {
            0xc0 | 0xc1 => cont(s.get(i + 1)).map(|c1| ((u32::from(b & 0x1f) << 6) | c1, 2)),
            0xe0 => match (cont(s.get(i + 1)), cont(s.get(i + 2))) {
                (Some(c1), Some(c2)) => Some(((c1 << 6) | c2, 3)),
                _ => None,
            },
            0xf0 => match (cont(s.get(i + 1)), cont(s.get(i + 2)), cont(s.get(i + 3))) {
                (Some(c1), Some(c2), Some(c3)) => Some(((c1 << 12) | (c2 << 6) | c3, 4)),
                _ => None,
            },
            _ => None,
        };
        match decoded.and_then(|(v, n)| u8::try_from(v).ok().filter(u8::is_ascii).map(|v| (v, n))) {
            Some((v, n)) => {
                out.push(v);
                i += n;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn count_dots(view: &[u8]) -> usize {
    view.split(|b| *b == b'/' || *b == b'\\')
        .filter(|seg| {
            let end = seg
                .iter()
                .position(|b| *b == b';' || *b == 0)
                .unwrap_or(seg.len());
            matches!(&seg[..end], b"." | b"..")
        })
        .count()
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                s.get(i + 1).and_then(|c| hex(*c)),
                s.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let v = (hi << 4) | lo;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
            i += 3;
        } else {
            // Non-ASCII cannot appear in a parsed http::Uri, but keep it intact
            // rather than panic on a char boundary if it ever does.
            let ch_len = raw[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&raw[i..i + ch_len]);
            i += ch_len;
        }
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// True when `path` (normalised) is `prefix` or lies under it, segment-wise:
/// `/api` covers `/api` and `/api/x` but not `/apix`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
