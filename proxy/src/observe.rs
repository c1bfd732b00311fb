//! What the data plane reports about itself: Prometheus metrics, the audit
//! trail, and the one log line per request. Every phase fills a [`Record`]
//! as it learns things (endpoint, normalised path, dialled address, whether
//! a credential went in); [`Telemetry::finish`] turns it into all three at
//! the end, so the three never disagree.
//!
//! Labels are low-cardinality by construction: endpoint names from config
//! (restricted to `[A-Za-z0-9._-]` at load, because the exposition crate
//! does not escape label values) and fixed outcome words, never a host or
//! path from a request.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Secret;
use crate::error::ProxyError;

#[cfg(test)]
mod tests;

/// `lanyard_requests_total` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched endpoint's name, or empty when none matched.
    pub endpoint: String,
    /// One of [`Outcome::as_str`].
    pub outcome: &'static str,
}

/// One label, for the families keyed by a single word.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// A fixed word (tunnel mode, byte direction, listener).
    pub kind: &'static str,
}

/// `lanyard_tls_handshake_failures_total` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `client` (the agent) or `upstream`.
    pub side: &'static str,
    /// A fixed word: `untrusted_ca`, `bad_certificate`, `timeout`, `no_hello`, `protocol`.
    pub reason: &'static str,
}

/// The data plane's metrics. Cheap to clone (every family is shared).
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    /// Requests by endpoint and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Connections accepted, by listener (`explicit`, `transparent`).
    pub connections: Family<KindLabel, Counter>,
    /// Client connections open now (including tunnels and spliced upgrades).
    pub open_connections: Gauge,
    /// Tunnels opened, by mode (`intercept`, `passthrough`, `blind`).
    pub tunnels: Family<KindLabel, Counter>,
    /// Bytes relayed through tunnels Lanyard does not decrypt, by direction
    /// (`to_upstream`, `to_client`).
    pub tunnel_bytes: Family<KindLabel, Counter>,
    /// TLS handshakes that failed, by side and reason.
    pub tls_handshake_failures: Family<HandshakeLabels, Counter>,
    /// Leaf certificates minted by the sandbox CA.
    pub leaf_certificates_minted: Counter,
    /// Leaf certificates held in the cache.
    pub leaf_certificates_cached: Gauge,
    /// Upstream connections open in the shared pools, busy or idle.
    pub upstream_connections: Gauge,
}

impl ProxyMetrics {
    /// Registers every family under `registry` (whose prefix is usually `lanyard`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "Requests by endpoint (empty: none matched) and outcome",
            self.requests.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted, by listener",
            self.connections.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open now",
            self.open_connections.clone(),
        );
        r.register("tunnels", "Tunnels opened, by mode", self.tunnels.clone());
        r.register(
            "tunnel_bytes",
            "Bytes relayed through tunnels Lanyard does not decrypt, by direction",
            self.tunnel_bytes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by side and reason",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "leaf_certificates_minted",
            "Leaf certificates minted by the sandbox CA",
            self.leaf_certificates_minted.clone(),
        );
        r.register(
            "leaf_certificates_cached",
            "Leaf certificates held in the cache",
            self.leaf_certificates_cached.clone(),
        );
        r.register(
            "upstream_connections",
            "Upstream connections open in the shared pools, busy or idle",
            self.upstream_connections.clone(),
        );
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, side: &'static str, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&HandshakeLabels { side, reason })
            .inc();
    }

    fn kind(family: &Family<KindLabel, Counter>, kind: &'static str) -> Counter {
        family.get_or_create(&KindLabel { kind }).clone()
    }
}

/// Where audit events go: JSON lines, written by a thread of their own. The
/// request path only serialises its line and queues it; the writer takes
/// whatever has queued up and writes it with one call, so a busy proxy
/// makes one write per batch rather than one per request, and lines never
/// interleave. Dropping the sink writes everything queued before returning.
pub struct Audit {
    tx: Option<std::sync::mpsc::Sender<Msg>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// A batch is written once it holds this much, even if more is queued.
const AUDIT_BATCH: usize = 256 * 1024;

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

impl Audit {
    /// Audit lines to `out` (stderr, a file opened for append, a test buffer).
    pub fn new(mut out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let writer = std::thread::Builder::new()
            .name("lanyard-audit".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(first) = rx.recv() {
                    let mut acks = Vec::new();
                    let mut take = |m: Msg, buf: &mut Vec<u8>| match m {
                        Msg::Line(l) => buf.extend_from_slice(&l),
                        Msg::Flush(ack) => acks.push(ack),
                    };
                    take(first, &mut buf);
                    while buf.len() < AUDIT_BATCH {
                        match rx.try_recv() {
                            Ok(m) => take(m, &mut buf),
                            Err(_) => break,
                        }
                    }
                    if !buf.is_empty() {
                        if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                            tracing::warn!(error = %e, "cannot write the audit trail");
                        }
                        buf.clear();
                    }
                    for a in acks {
                        let _ = a.send(());
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Writes one event, stamped with the current UTC time and the sandbox's
    /// SPIFFE ID.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, spiffe_id: Option<&str>, fields: &T) {
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = Line {
            time: &stamp,
            event,
            spiffe_id,
            fields,
        };
        let mut buf = Vec::with_capacity(320);
        if serde_json::to_writer(&mut buf, &line).is_err() {
            return;
        }
        buf.push(b'\n');
        if let Some(tx) = &self.tx
            && tx.send(Msg::Line(buf)).is_err()
        {
            tracing::warn!("the audit writer has stopped; an audit line was lost");
        }
    }

    /// Returns once every line emitted so far is written.
    pub fn flush(&self) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if let Some(tx) = &self.tx
            && tx.send(Msg::Flush(ack)).is_ok()
        {
            let _ = done.recv();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// One audit line: the common fields, then the event's own.
#[derive(Serialize)]
struct Line<'a, T: Serialize + ?Sized> {
    time: &'a str,
    event: &'a str,
    spiffe_id: Option<&'a str>,
    #[serde(flatten)]
    fields: &'a T,
}

/// The `request` event.
#[derive(Serialize)]
struct RequestEvent<'a> {
    endpoint: Option<&'a str>,
    provider: Option<&'a str>,
    method: &'a str,
    dest: &'a str,
    path: Option<&'a str>,
    upstream: Option<SocketAddr>,
    status: u16,
    injected: bool,
    token_id: Option<&'a str>,
}

/// Tokens whose audit ids are remembered: one per endpoint in use, roughly.
const TOKEN_IDS: usize = 16;

/// Metrics, the audit sink and the sandbox identity, shared by every
/// connection and kept across config reloads.
#[derive(Debug)]
pub struct Telemetry {
    /// The data plane's metrics.
    pub metrics: ProxyMetrics,
    audit: Option<Audit>,
    spiffe_id: RwLock<Option<Arc<str>>>,
    /// The ids of the last few tokens seen (see [`Telemetry::token_id`]).
    token_ids: Mutex<Vec<(Secret, Arc<str>)>>,
    /// Keys the hash that names non-JWT tokens in the audit trail: random
    /// per process, so the identifier cannot be brute-forced offline from a
    /// leaked audit file.
    token_key: ring::hmac::Key,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(ProxyMetrics::default(), None)
    }
}

impl Telemetry {
    /// Telemetry with these metrics and, if given, an audit sink.
    pub fn new(metrics: ProxyMetrics, audit: Option<Audit>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let token_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"lanyard"));
        Self {
            metrics,
            audit,
            spiffe_id: RwLock::new(None),
            token_ids: Mutex::new(Vec::with_capacity(TOKEN_IDS)),
            token_key,
        }
    }

    /// Records the sandbox's SPIFFE ID (from the last SVID) for audit events.
    pub fn set_spiffe_id(&self, id: &str) {
        if let Ok(mut g) = self.spiffe_id.write()
            && g.as_deref() != Some(id)
        {
            *g = Some(Arc::from(id));
        }
    }

    /// The sandbox's SPIFFE ID, once an SVID has been fetched.
    pub fn spiffe_id(&self) -> Option<Arc<str>> {
        self.spiffe_id.read().ok().and_then(|g| g.clone())
    }

    /// Returns once every audit line emitted so far is written.
    pub fn flush_audit(&self) {
        if let Some(a) = &self.audit {
            a.flush();
        }
    }

    /// Whether audit events are written at all (skips the token hash otherwise).
    pub fn auditing(&self) -> bool {
        self.audit.is_some()
    }

    /// Writes an audit event, adding the time and the SPIFFE ID.
    pub fn audit<T: Serialize + ?Sized>(&self, event: &str, fields: &T) {
        let Some(a) = &self.audit else { return };
        let id = self.spiffe_id();
        a.emit(event, id.as_deref(), fields);
    }

    /// A non-reversible name for a token: `jti:<jti>` when it is a JWT that
    /// carries one, else `hmac:<16 hex>` of a per-process keyed hash.
    /// Remembered for the last few tokens, so a cached token costs a string
    /// comparison per request, not a decode.
    pub fn token_id(&self, token: &Secret) -> Arc<str> {
        if let Ok(seen) = self.token_ids.lock()
            && let Some((_, id)) = seen.iter().find(|(t, _)| t.expose() == token.expose())
        {
            return id.clone();
        }
        let id: Arc<str> = match jwt_jti(token.expose()) {
            Some(jti) => Arc::from(format!("jti:{jti}")),
            None => {
                let tag = ring::hmac::sign(&self.token_key, token.expose().as_bytes());
                let hex: String = tag.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Arc::from(format!("hmac:{hex}"))
            }
        };
        if let Ok(mut seen) = self.token_ids.lock() {
            if seen.len() >= TOKEN_IDS {
                seen.remove(0);
            }
            seen.push((token.clone(), id.clone()));
        }
        id
    }

    /// The end of one request: metrics, the audit event and the log line.
    pub(crate) fn finish(&self, rec: &Record, result: Result<u16, &ProxyError>) {
        let endpoint = rec.endpoint.clone().unwrap_or_default();
        let outcome = match result {
            Ok(_) if rec.injected => Outcome::Injected,
            Ok(_) => Outcome::PassedThrough,
            Err(e) => Outcome::of(e),
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
                outcome: outcome.as_str(),
            })
            .inc();
        let status = match result {
            Ok(s) => s,
            Err(e) => e.status().as_u16(),
        };
        let ms = rec.started.elapsed().as_millis();
        match result {
            Ok(_) => {
                tracing::info!(method = %rec.method, host = ?rec.host, path = ?rec.log_path, status,
                endpoint = rec.endpoint.as_deref().unwrap_or("-"), ms, "request")
            }
            Err(e) => {
                tracing::info!(method = %rec.method, host = ?rec.host, path = ?rec.log_path, status,
                error = ?e.to_string(), ms, "request refused")
            }
        }
        if !self.auditing() {
            return;
        }
        if let Some(reason) = outcome.denial() {
            let reason = rec.deny_reason.unwrap_or(reason);
            let detail = result.err().map(ToString::to_string);
            self.audit(
                "denied",
                &json!({
                    "reason": reason,
                    "endpoint": rec.endpoint,
                    "provider": rec.provider,
                    "method": rec.method.as_str(),
                    "dest": &*rec.host,
                    "path": rec.path.as_deref().unwrap_or(&rec.log_path),
                    "status": status,
                    "detail": detail,
                }),
            );
        } else if rec.endpoint.is_some() {
            self.audit(
                "request",
                &RequestEvent {
                    endpoint: rec.endpoint.as_deref(),
                    provider: rec.provider.as_deref(),
                    method: rec.method.as_str(),
                    dest: &rec.host,
                    path: rec.path.as_deref(),
                    upstream: rec.upstream,
                    status,
                    injected: rec.injected,
                    token_id: rec.token_id.as_deref(),
                },
            );
        }
    }

    /// A connection refused before any request (CONNECT or a redirected
    /// connection to a denied destination): counted and audited.
    pub(crate) fn denied_connection(&self, reason: &'static str, dest: &str, detail: &str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: String::new(),
                outcome: Outcome::Denied.as_str(),
            })
            .inc();
        self.audit(
            "denied",
            &json!({ "reason": reason, "dest": dest, "detail": detail }),
        );
    }

    /// A CONNECT or redirected connection to `dest` that failed before any
    /// request: refused by egress policy (audited as a denial) or unable to
    /// reach its destination. Counted under no endpoint.
    pub(crate) fn connection_failed(&self, e: &ProxyError, dest: &str) {
        if matches!(e, ProxyError::Denied(_)) {
            return self.denied_connection("egress", dest, &e.to_string());
        }
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: String::new(),
                outcome: Outcome::of(e).as_str(),
            })
            .inc();
    }

    /// A tunnel was opened in `mode`.
    pub(crate) fn tunnel_opened(&self, mode: &'static str) {
        ProxyMetrics::kind(&self.metrics.tunnels, mode).inc();
    }

    /// A tunnel Lanyard does not decrypt closed after relaying these bytes.
    pub(crate) fn tunnel_bytes(&self, to_upstream: u64, to_client: u64) {
        ProxyMetrics::kind(&self.metrics.tunnel_bytes, "to_upstream").inc_by(to_upstream);
        ProxyMetrics::kind(&self.metrics.tunnel_bytes, "to_client").inc_by(to_client);
    }

    /// A client connection was accepted on `listener`; the guard counts it open.
    pub(crate) fn connection(self: &Arc<Self>, listener: &'static str) -> OpenGuard {
        ProxyMetrics::kind(&self.metrics.connections, listener).inc();
        self.metrics.open_connections.inc();
        OpenGuard(self.clone())
    }
}

/// Decrements the open-connection gauge when the connection's last holder goes.
pub(crate) struct OpenGuard(Arc<Telemetry>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.open_connections.dec();
    }
}

/// How a request ended, as the metrics and audit trail name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A credential was injected and the upstream answered.
    Injected,
    /// No endpoint matched (or a local answer); relayed without a credential.
    PassedThrough,
    /// Egress policy or the cleartext rule refused it.
    Denied,
    /// The names in the request disagreed with the destination.
    Misdirected,
    /// The request was malformed or over a limit.
    BadRequest,
    /// The upstream failed or timed out.
    UpstreamError,
    /// No credential could be obtained.
    CredentialError,
    /// Lanyard itself failed.
    Internal,
}

impl Outcome {
    fn of(e: &ProxyError) -> Self {
        match e {
            ProxyError::Denied(_) => Self::Denied,
            ProxyError::Misdirected(_) => Self::Misdirected,
            ProxyError::BadRequest(_)
            | ProxyError::UriTooLong(_)
            | ProxyError::HeadTooLarge { .. } => Self::BadRequest,
            ProxyError::Upstream { .. } | ProxyError::UpstreamTimeout { .. } => Self::UpstreamError,
            ProxyError::Credential { .. } => Self::CredentialError,
            ProxyError::Internal(_) => Self::Internal,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::PassedThrough => "passed_through",
            Self::Denied => "denied",
            Self::Misdirected => "misdirected",
            Self::BadRequest => "bad_request",
            Self::UpstreamError => "upstream_error",
            Self::CredentialError => "credential_error",
            Self::Internal => "internal",
        }
    }

    /// The audit trail's reason word when this is a denial.
    fn denial(self) -> Option<&'static str> {
        match self {
            Self::Denied => Some("policy"),
            Self::Misdirected => Some("name_mismatch"),
            _ => None,
        }
    }
}

/// What one request's phases learned, for [`Telemetry::finish`].
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) started: tokio::time::Instant,
    pub(crate) method: http::Method,
    /// The destination as the connection named it (`host:port`), or the URI host.
    pub(crate) host: Arc<str>,
    /// The path as the client sent it, without the query (for the log line).
    pub(crate) log_path: String,
    /// The normalised path the inject phase decided on.
    pub(crate) path: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) provider: Option<String>,
    /// The address actually dialled.
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) injected: bool,
    pub(crate) token_id: Option<Arc<str>>,
    /// Why a denial happened (`egress`, `cleartext`), when a phase knows.
    pub(crate) deny_reason: Option<&'static str>,
}

impl Record {
    /// A record for `req`, arriving at a connection for `host`.
    pub(crate) fn start<B>(req: &http::Request<B>, host: Arc<str>) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            method: req.method().clone(),
            host,
            log_path: crate::inject::log_path(req.uri().path_and_query()).to_owned(),
            path: None,
            endpoint: None,
            provider: None,
            upstream: None,
            injected: false,
            token_id: None,
            deny_reason: None,
        }
    }
}

/// The `jti` claim of a JWT, when `token` is one and carries a short,
/// printable one. The signature is not checked: this only names the token.
pub fn jwt_jti(token: &str) -> Option<String> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 8192 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&raw).ok()?;
    let jti = claims.get("jti")?.as_str()?;
    (!jti.is_empty() && jti.len() <= 128 && jti.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| jti.to_owned())
}

/// Classifies a client-side TLS handshake failure and explains it for the
/// log: an agent that does not trust the sandbox CA otherwise looks like a
/// CONNECT followed by nothing.
pub fn classify_client_tls(e: &std::io::Error) -> (&'static str, &'static str) {
    use rustls::AlertDescription as A;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(A::UnknownCA | A::CertificateUnknown)) => (
            "untrusted_ca",
            "the client does not trust the sandbox CA: give it ca.pem or bundle.pem (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, a Java truststore)",
        ),
        Some(rustls::Error::AlertReceived(
            A::BadCertificate | A::UnsupportedCertificate | A::CertificateExpired,
        )) => (
            "bad_certificate",
            "the client rejected the sandbox certificate (expired, unsupported, or a name it did not expect)",
        ),
        Some(rustls::Error::AlertReceived(_)) => ("protocol", "the client aborted the handshake"),
        Some(_) => (
            "protocol",
            "the client's TLS is not something Lanyard can serve",
        ),
        None => ("protocol", "the connection failed during the handshake"),
    }
}
