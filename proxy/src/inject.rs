//! Inject phase: check that every name the client used agrees with the
//! destination Lanyard dialed, normalise the path, find the endpoint, and
//! replace the credential header. Everything here happens before a byte of
//! the request reaches the upstream.

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Method, Request, Response, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use zeroize::Zeroizing;

use crate::Shared;
use crate::error::ProxyError;
use crate::matcher::Rule;
use crate::parse::{Target, normalize_path};
use crate::relay::{is_upgrade, strip_hop_by_hop};

/// A request ready for the upstream.
pub(crate) struct Prepared {
    pub(crate) req: Request<Incoming>,
    /// The credential injected, to keep it out of the response (see [`scrub_echo`]).
    pub(crate) credential: Option<crate::Secret>,
    /// An HTTP/1.1 upgrade is being relayed.
    pub(crate) upgrade: bool,
}

/// How the request reached Lanyard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Inside an intercepted CONNECT tunnel.
    Https,
    /// Absolute-form `http://` request to the proxy.
    Http,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// Every authority the request names (URI authority or HTTP/2 `:authority`,
/// and the Host header) must equal `target`; otherwise nothing is injected.
pub(crate) fn check_names(
    target: &Target,
    scheme: Scheme,
    uri: &Uri,
    headers: &http::HeaderMap,
    version: Version,
) -> Result<(), ProxyError> {
    let port = Some(scheme.default_port());
    if let Some(auth) = uri.authority() {
        let named = Target::parse_authority(auth.as_str(), port)
            .map_err(|e| ProxyError::BadRequest(format!("request authority: {e}")))?;
        if &named != target {
            return Err(ProxyError::Misdirected(format!(
                "request authority '{auth}' does not match the destination {target}; nothing was injected"
            )));
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    if let Some(h) = hosts.next() {
        if hosts.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Host header".into()));
        }
        let text = h
            .to_str()
            .map_err(|_| ProxyError::BadRequest("Host header is not ASCII".into()))?;
        let named = Target::parse_authority(text, port)
            .map_err(|e| ProxyError::BadRequest(format!("Host header: {e}")))?;
        if &named != target {
            return Err(ProxyError::Misdirected(format!(
                "Host header '{text}' does not match the destination {target}; nothing was injected"
            )));
        }
    } else if version < Version::HTTP_2 && uri.authority().is_none() {
        return Err(ProxyError::BadRequest("missing Host header".into()));
    }
    Ok(())
}

/// Why a tunnel whose TLS SNI names another host than the CONNECT authority
/// (or than the name a transparent connection was routed by) must refuse
/// every request in it; `None` when they agree or there is no SNI.
pub fn sni_problem(sni: Option<&str>, target: &Target) -> Option<String> {
    let s = sni?;
    match crate::parse::Host::parse(s) {
        Ok(h) if h == target.host => None,
        _ => Some(format!(
            "TLS SNI '{s}' does not match the CONNECT authority {target}; nothing was injected"
        )),
    }
}

/// The request head's size as sent (request line and `name: value` fields;
/// for HTTP/2 the same count, which is what `max_header_list_size` bounds
/// less 32 bytes a field). hyper's own bound is its read buffer, which grows
/// in steps past the configured size, so the exact limit is enforced here.
pub(crate) fn check_head_size<B>(req: &Request<B>, limit: usize) -> Result<(), ProxyError> {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len() + 8)
        + 12;
    let size = line
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2;
    if size > limit {
        return Err(ProxyError::HeadTooLarge { size, limit });
    }
    Ok(())
}

/// Methods Lanyard answers `OPTIONS` with when it is the final recipient.
const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// RFC 9110 §7.6.2: a proxy checks and decrements `Max-Forwards` on TRACE
/// and OPTIONS, and at 0 answers as the final recipient instead of
/// forwarding: OPTIONS gets 200 with `Allow`, TRACE 405 (Lanyard does not
/// echo requests). Returns the local answer, if any.
pub(crate) fn max_forwards(
    req: &mut Request<Incoming>,
) -> Result<Option<Response<Full<Bytes>>>, ProxyError> {
    if *req.method() != Method::TRACE && *req.method() != Method::OPTIONS {
        return Ok(None);
    }
    let mut values = req.headers().get_all(header::MAX_FORWARDS).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest(
            "more than one Max-Forwards header".into(),
        ));
    }
    let n: u32 = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProxyError::BadRequest("Max-Forwards is not a number".into()))?;
    if n == 0 {
        let mut resp = Response::new(Full::new(Bytes::new()));
        if *req.method() == Method::TRACE {
            *resp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        }
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        return Ok(Some(resp));
    }
    req.headers_mut()
        .insert(header::MAX_FORWARDS, HeaderValue::from(n - 1));
    Ok(None)
}

/// What the inject phase decides for one request before any I/O: the
/// endpoint whose credential it gets (if any) and the normalised path sent
/// upstream.
#[derive(Debug)]
pub struct Decision<'r> {
    /// The endpoint rule that matched: its credential is injected.
    pub rule: Option<&'r Rule>,
    /// The path as it goes upstream (normalised; the query is appended apart).
    pub path: String,
}

/// The inject phase's decision for a request with this method, target URI,
/// headers and version, arriving by `scheme` at a connection for `target`.
/// [`prepare`] runs exactly this; it is public so the generated-attack suite
/// and the fuzz targets exercise the code the pipeline runs, not a copy.
pub fn decide<'r>(
    router: &'r crate::matcher::Router,
    target: &Target,
    scheme: Scheme,
    method: &Method,
    uri: &Uri,
    headers: &http::HeaderMap,
    version: Version,
) -> Result<Decision<'r>, ProxyError> {
    check_names(target, scheme, uri, headers, version)?;
    let path =
        normalize_path(uri.path()).map_err(|e| ProxyError::BadRequest(format!("path: {e}")))?;
    let rule = router.find(target, &path, method);
    Ok(Decision { rule, path })
}

/// Why `policy` refuses `method` on `target` + `path` (the normalised
/// path), or `None` when it allows (an empty policy allows everything).
pub fn refusal(
    policy: &crate::policy::Effective,
    method: &Method,
    target: &Target,
    path: &str,
) -> Option<String> {
    if policy.is_empty() {
        return None;
    }
    policy
        .decide(method, &target.host, path)
        .refusal(method, path)
}

/// Invariant 2: no credential in cleartext off this host unless the
/// endpoint opts in; `addr` is the address actually dialled.
pub fn cleartext_allowed(rule: &Rule, addr: std::net::SocketAddr) -> bool {
    addr.ip().is_loopback() || rule.allow_cleartext
}

/// How a request is shaped for its upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// How the request reached Lanyard.
    pub(crate) scheme: Scheme,
    /// The upstream speaks HTTP/2 (else HTTP/1.1 with a Host header).
    pub(crate) upstream_h2: bool,
    /// An HTTP/1.1 upgrade may be relayed.
    pub(crate) upgrade_ok: bool,
    /// Cleartext to this dialled address (invariant 2 is checked against it).
    pub(crate) cleartext_to: Option<std::net::SocketAddr>,
    /// Absolute-form URI (a pooled client routes by it) rather than origin-form.
    pub(crate) absolute: bool,
}

/// Prepares `req` for its upstream as `shape` says.
pub(crate) async fn prepare(
    shared: &Shared,
    target: &Target,
    shape: Shape,
    mut req: Request<Incoming>,
    rec: &mut crate::observe::Record,
) -> Result<Prepared, ProxyError> {
    let Shape {
        scheme,
        upstream_h2,
        upgrade_ok,
        cleartext_to,
        absolute,
    } = shape;
    let limit = shared.settings.config.limits.max_request_line;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limit {
        return Err(ProxyError::UriTooLong(limit));
    }
    let Decision { rule, path } = decide(
        &shared.settings.router,
        target,
        scheme,
        req.method(),
        req.uri(),
        req.headers(),
        req.version(),
    )?;
    rec.path = Some(path.clone());
    let upgrade = upgrade_ok && !upstream_h2 && is_upgrade(&req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let mut credential = None;
    if let Some(rule) = rule {
        rec.endpoint = Some(rule.name.clone());
        rec.provider = Some(rule.provider.clone());
        if let Some(addr) = cleartext_to
            && !cleartext_allowed(rule, addr)
        {
            rec.deny_reason = Some("cleartext");
            return Err(ProxyError::Denied(format!(
                "endpoint '{}' needs TLS: {target} ({addr}) is not loopback; use https:// or set allow_cleartext",
                rule.name
            )));
        }
        // Statements narrow what the credential may be used for: decided
        // before any token is fetched or anything is sent upstream.
        if let Some(why) = refusal(&rule.policy, req.method(), target, &path) {
            rec.deny_reason = Some("policy");
            return Err(ProxyError::Denied(format!(
                "endpoint '{}': {why}",
                rule.name
            )));
        }
        let token = inject(shared, rule, &mut req).await?;
        rec.injected = true;
        if shared.telemetry.auditing() {
            rec.token_id = Some(shared.telemetry.token_id(&token));
        }
        credential = Some(token);
    } else if let Some((i, to, policy)) = shared.settings.egress.inspection(target)
        && let Some(why) = refusal(policy, req.method(), target, &path)
    {
        // No credential here, but the egress entry that let the agent
        // reach this destination allows only what its statements say.
        rec.deny_reason = Some("policy");
        return Err(ProxyError::Denied(format!(
            "egress.allow[{i}] '{to}': {why}"
        )));
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let authority = if target.port == scheme.default_port() {
        target.host.to_string()
    } else {
        target.to_string()
    };
    let uri = if upstream_h2 || absolute {
        Uri::builder()
            .scheme(scheme.as_str())
            .authority(authority.as_str())
            .path_and_query(pq.as_str())
            .build()
    } else {
        Uri::builder().path_and_query(pq.as_str()).build()
    }
    .map_err(|e| ProxyError::BadRequest(format!("cannot rebuild request target: {e}")))?;
    *req.uri_mut() = uri;
    if upstream_h2 {
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        let host = HeaderValue::from_str(&authority).map_err(|_| {
            ProxyError::Internal("canonical authority is not a header value".into())
        })?;
        req.headers_mut().insert(header::HOST, host);
        *req.version_mut() = Version::HTTP_11;
    }
    Ok(Prepared {
        req,
        credential,
        upgrade,
    })
}

/// Replaces every client-supplied value of the rule's header with the
/// provider's credential (invariant 6: replaced, never merged).
async fn inject(
    shared: &Shared,
    rule: &Rule,
    req: &mut Request<Incoming>,
) -> Result<crate::Secret, ProxyError> {
    let fail = |cause: String| ProxyError::Credential {
        endpoint: rule.name.clone(),
        provider: rule.provider.clone(),
        cause,
    };
    let source = shared
        .sources
        .get(&rule.provider)
        .ok_or_else(|| fail("provider is not running".into()))?;
    let token = source.token(&rule.name).await.map_err(|e| fail(e.0))?;
    let value = credential_value(&rule.prefix, &token)
        .map_err(|_| fail("credential has characters not allowed in a header value".into()))?;
    replace_header(req.headers_mut(), &rule.header, value);
    Ok(token)
}

/// The header value `prefix` + `token`, marked sensitive: HPACK never
/// indexes it, and hyper's `Debug` prints `Sensitive`. The text it was built
/// from is zeroed.
pub fn credential_value(
    prefix: &str,
    token: &crate::Secret,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut text = Zeroizing::new(String::with_capacity(prefix.len() + token.len()));
    text.push_str(prefix);
    text.push_str(token.expose());
    let mut value = HeaderValue::from_str(&text)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Every value of `name` the client sent is dropped and `value` alone set
/// (invariant 6: replaced, never merged).
pub fn replace_header(
    headers: &mut http::HeaderMap,
    name: &header::HeaderName,
    value: HeaderValue,
) {
    headers.remove(name);
    headers.insert(name.clone(), value);
}

/// An upstream that reflects request headers (a debug endpoint, a TRACE-like
/// handler behind another method) would hand the injected credential back to
/// the agent. Every response header whose value contains it is removed;
/// returns how many were. Bodies stream through unexamined: the endpoint is
/// the one the token was minted for, and ARCHITECTURE.md says so.
pub(crate) fn scrub_echo<B>(resp: &mut Response<B>, credential: Option<&crate::Secret>) -> usize {
    let Some(secret) = credential
        .map(crate::Secret::expose)
        .filter(|s| s.len() >= 8)
    else {
        return 0;
    };
    let needle = secret.as_bytes();
    let echoed: Vec<header::HeaderName> = resp
        .headers()
        .iter()
        .filter(|(_, v)| v.as_bytes().windows(needle.len()).any(|w| w == needle))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &echoed {
        resp.headers_mut().remove(k);
        tracing::warn!(header = %k, "the upstream echoed the injected credential in a response header; removed");
    }
    echoed.len()
}

/// An origin-form `PathAndQuery` for logs: the path without the query, which
/// may carry secrets of the agent's own.
pub(crate) fn log_path(pq: Option<&PathAndQuery>) -> &str {
    pq.map_or("/", PathAndQuery::path)
}
