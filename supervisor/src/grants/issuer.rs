//! The token endpoint client. Deliberately small and strict: HTTPS (plain
//! HTTP only to loopback), never through a proxy (it reads no proxy
//! variables), never follows redirects, bounded in time and response size,
//! and its errors carry the issuer's OAuth `error`/`error_description`
//! sanitised and capped, never the request body.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use lanyard_proxy::Secret;
use serde::Deserialize;
use zeroize::Zeroizing;

/// A validated `token_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEndpoint {
    uri: Uri,
    host: String,
    port: u16,
    tls: bool,
    text: String,
}

impl TokenEndpoint {
    /// Parses and checks the scheme rule: `https://`, or `http://` to a
    /// loopback host.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("'{s}' must be an https:// URL")),
        };
        let host = uri.host().ok_or_else(|| format!("'{s}' has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!("'{s}' must not carry credentials in the URL"));
        }
        if !tls && !is_loopback_name(&host) {
            return Err(format!(
                "'{s}' uses plain http to a non-loopback host; use https://"
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            uri,
            host,
            port,
            tls,
            text: s.to_owned(),
        })
    }

    /// The URL as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Limits for talking to issuers.
#[derive(Debug, Clone)]
pub struct IssuerLimits {
    /// TCP connect (and DNS).
    pub connect_timeout: Duration,
    /// The whole exchange.
    pub timeout: Duration,
    /// Largest response body read.
    pub max_response_bytes: usize,
}

/// A token the issuer returned.
#[derive(Debug)]
pub struct Issued {
    /// The access token.
    pub access_token: Secret,
    /// `expires_in`, when the issuer sent it.
    pub expires_in: Option<Duration>,
}

/// The client; cheap to share.
#[derive(Debug, Clone)]
pub struct IssuerClient {
    tls: Arc<rustls::ClientConfig>,
    resolve: Arc<std::collections::HashMap<lanyard_proxy::parse::Host, Vec<IpAddr>>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

impl IssuerClient {
    /// Verifies issuers against `tls`'s roots (the same trust as upstreams)
    /// and resolves pinned names (`resolve:` in the config) before DNS.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        resolve: std::collections::HashMap<lanyard_proxy::parse::Host, Vec<IpAddr>>,
    ) -> Self {
        Self {
            tls,
            resolve: Arc::new(resolve),
        }
    }

    /// POSTs `form` and returns the token. `secrets` (the assertion) are
    /// scrubbed from anything the issuer echoes back into an error.
    pub async fn exchange(
        &self,
        ep: &TokenEndpoint,
        form: &Zeroizing<String>,
        limits: &IssuerLimits,
        secrets: &[&str],
    ) -> Result<Issued, String> {
        let fut = self.post(ep, form, limits, secrets);
        tokio::time::timeout(limits.timeout, fut)
            .await
            .map_err(|_| {
                format!(
                    "token endpoint {} did not answer within {} ms",
                    ep.text,
                    limits.timeout.as_millis()
                )
            })?
    }

    async fn post(
        &self,
        ep: &TokenEndpoint,
        form: &Zeroizing<String>,
        limits: &IssuerLimits,
        secrets: &[&str],
    ) -> Result<Issued, String> {
        let at = |what: String| format!("token endpoint {}: {what}", ep.text);
        let req = Request::post(ep.uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::copy_from_slice(form.as_bytes())));
        let (status, body) = self.round_trip(ep, req, limits).await.map_err(at)?;
        parse(status, &body, secrets).map_err(at)
    }

    /// GETs authorization server metadata at `url`: its body, or `None`
    /// when the server has none there (404), so the caller tries the next
    /// well-known location.
    pub async fn metadata(
        &self,
        url: &TokenEndpoint,
        limits: &IssuerLimits,
    ) -> Result<Option<Bytes>, String> {
        let at = |what: String| format!("metadata {}: {what}", url.text);
        let req = Request::get(url.uri.path_and_query().map_or("/", |p| p.as_str()))
            .body(Full::new(Bytes::new()));
        let fut = self.round_trip(url, req, limits);
        let (status, body) = tokio::time::timeout(limits.timeout, fut)
            .await
            .map_err(|_| {
                at(format!(
                    "no answer within {} ms",
                    limits.timeout.as_millis()
                ))
            })?
            .map_err(at)?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(at(format!("answered {other}"))),
        }
    }

    /// One request to `ep`'s host (pinned names first, the scheme rule
    /// enforced on the resolved addresses), with its body bounded.
    async fn round_trip(
        &self,
        ep: &TokenEndpoint,
        req: Result<Request<Full<Bytes>>, http::Error>,
        limits: &IssuerLimits,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = req.map_err(|e| format!("cannot build request: {e}"))?;
        let h = req.headers_mut();
        let host = ep.uri.authority().map_or(ep.host.as_str(), |a| a.as_str());
        h.insert(
            header::HOST,
            header::HeaderValue::from_str(host).map_err(|e| format!("bad host: {e}"))?,
        );
        h.insert(
            header::ACCEPT,
            header::HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::USER_AGENT,
            header::HeaderValue::from_static(concat!("lanyard/", env!("CARGO_PKG_VERSION"))),
        );
        let name = lanyard_proxy::parse::Host::parse(&ep.host)?;
        // DNS and every connection attempt share one deadline.
        let deadline = tokio::time::Instant::now() + limits.connect_timeout;
        let addrs = lanyard_proxy::resolve::resolve(&self.resolve, &name, ep.port, deadline)
            .await
            .map_err(|e| e.to_string())?
            .addrs;
        if !ep.tls && addrs.iter().any(|a| !a.is_loopback()) {
            return Err("resolves to a non-loopback address; plain http refused".into());
        }
        let (tcp, _) = lanyard_proxy::resolve::connect(&addrs, ep.port, deadline)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let resp = if ep.tls {
            let server = rustls_pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|e| format!("invalid server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(server, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
        .map_err(|e| format!("request failed: {e}"))?;

        let status = resp.status();
        let body = Limited::new(resp.into_body(), limits.max_response_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    format!(
                        "answered {status} with a body over {} bytes",
                        limits.max_response_bytes
                    )
                } else {
                    format!("reading the response failed: {e}")
                }
            })?
            .to_bytes();
        Ok((status, body))
    }
}

async fn send<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}

/// Interprets a token endpoint response. Public for the fuzz target
/// (`supervisor/fuzz`): every byte of `body` is the issuer's.
pub fn parse(status: StatusCode, body: &[u8], secrets: &[&str]) -> Result<Issued, String> {
    if status.is_redirection() {
        return Err(format!("answered {status}; redirects are not followed"));
    }
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(e) => {
                // The agent gets the OAuth error code; the operator's log also
                // gets the description (sanitised: issuers echo request forms).
                let code = sanitize(&e.error, 64, secrets);
                if let Some(d) = e.error_description.filter(|d| !d.is_empty()) {
                    tracing::warn!(status = status.as_u16(), error = %code, description = %sanitize(&d, 200, secrets), "token endpoint refused the exchange");
                }
                format!("answered {status}: {code}")
            }
            Err(_) => format!(
                "answered {status} without an OAuth error body ({} bytes)",
                body.len()
            ),
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("answered {status} with an empty body"));
    }
    // Never the parser's message: for a wrong type it quotes the value, and
    // the value may be a bare token.
    let r: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        format!(
            "answered {status} with a body that is not a token response ({} at line {}, column {})",
            match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Data => "wrong shape",
                serde_json::error::Category::Eof => "truncated JSON",
            },
            e.line(),
            e.column()
        )
    })?;
    let token = r
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or("response has no access_token")?;
    let token = Secret::new(token);
    if !is_token68(token.expose()) {
        return Err("access_token has characters outside the RFC 6750 token68 alphabet".into());
    }
    if let Some(tt) = &r.token_type
        && !tt.eq_ignore_ascii_case("bearer")
        && tt != "N_A"
    {
        return Err(format!(
            "token_type '{}' is not Bearer",
            sanitize(tt, 32, secrets)
        ));
    }
    let expires_in = match r.expires_in {
        None | Some(serde_json::Value::Null) => None,
        // Some issuers write 3600.0; a fraction of a second is dropped.
        Some(serde_json::Value::Number(n)) => Some(match n.as_u64() {
            Some(u) => u,
            None => n
                .as_f64()
                .filter(|f| *f >= 0.0)
                .and_then(|f| Duration::try_from_secs_f64(f).ok())
                .ok_or("expires_in is not a positive number")?
                .as_secs(),
        }),
        Some(serde_json::Value::String(s)) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| "expires_in is not a positive integer")?,
        ),
        Some(_) => return Err("expires_in is not a positive integer".into()),
    };
    if expires_in == Some(0) {
        return Err("expires_in is 0: the token is already expired".into());
    }
    Ok(Issued {
        access_token: token,
        expires_in: expires_in.map(Duration::from_secs),
    })
}

/// How long an issued token is used: the earlier of the issuer's
/// `expires_in` and the token's own `exp` (an issuer may round up, or its
/// token may say less than it does), else the configured default.
pub fn lifetime(
    expires_in: Option<Duration>,
    exp: Option<Duration>,
    default: Duration,
) -> Duration {
    match (expires_in, exp) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(default),
    }
}

/// RFC 6750 §2.1 b64token: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_token68(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Printable ASCII only, capped, with any known secret removed, as written
/// and in the encodings an issuer echoing the request form would use
/// (form encoding with upper- or lower-case hex, `%20` for space, every byte
/// percent-encoded).
pub fn sanitize(s: &str, cap: usize, secrets: &[&str]) -> String {
    let mut s = s.to_owned();
    for secret in secrets.iter().filter(|x| x.len() >= 8) {
        for form in encodings(secret) {
            s = replace_ignore_ascii_case(&s, &form, "[redacted]");
        }
    }
    let mut out: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(cap)
        .collect();
    if s.chars().count() > cap {
        out.push_str("...");
    }
    out
}

/// A secret as written and as an echoed form would spell it.
fn encodings(secret: &str) -> Vec<String> {
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let every: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
    let mut out = vec![secret.to_owned(), form.replace('+', "%20"), every, form];
    out.dedup();
    out
}

/// Replaces `needle` in `hay` ignoring ASCII case, so that `%2f` and `%2F`
/// escapes both match (over-redacting a case variant is harmless).
fn replace_ignore_ascii_case(hay: &str, needle: &str, with: &str) -> String {
    if needle.is_empty() || hay.len() < needle.len() {
        return hay.to_owned();
    }
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let mut out = String::with_capacity(hay.len());
    let mut i = 0;
    let mut copied = 0;
    while i + n.len() <= h.len() {
        if h[i..i + n.len()].eq_ignore_ascii_case(n) {
            out.push_str(&hay[copied..i]);
            out.push_str(with);
            i += n.len();
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&hay[copied..]);
    out
}

/// `exp` of a JWT-shaped token, read without verification: only used to
/// avoid keeping a token past its own stated expiry when `expires_in` is absent.
pub fn jwt_remaining(token: &str) -> Option<Duration> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let exp = v.get("exp")?.as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}
