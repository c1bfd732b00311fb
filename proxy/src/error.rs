//! Errors on the request path, classified by which side failed. Each class maps
//! to exactly one status code so a client can tell "my request was wrong" from
//! "the upstream is broken" from "Lanyard could not get a credential".

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Which party caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something malformed or disallowed.
    Client,
    /// The upstream could not be reached, failed TLS verification or misbehaved.
    Upstream,
    /// No credential could be produced for the matched endpoint.
    Credential,
    /// A bug or resource exhaustion inside Lanyard.
    Internal,
}

/// An error answered to the client instead of a forwarded response.
///
/// Messages are built from names, addresses and causes only: never from a
/// credential or a request body, so they are safe to log and to return.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// 400: the request could not be parsed or is ambiguous.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 414: the request target exceeds `limits.max_request_line`.
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    /// 431: the request head exceeds `limits.max_header_bytes`.
    #[error("request head of {size} bytes exceeds limits.max_header_bytes ({limit})")]
    HeadTooLarge {
        /// The head's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// 403: policy refuses the destination.
    #[error("{0}")]
    Denied(String),
    /// 421: the names the client used for one connection disagree.
    #[error("misdirected request: {0}")]
    Misdirected(String),
    /// 502: the upstream failed.
    #[error("upstream {dest}: {reason}")]
    Upstream {
        /// host:port the proxy dialed.
        dest: String,
        /// what went wrong.
        reason: String,
    },
    /// 504: the upstream did not answer in time.
    #[error("upstream {dest}: timed out after {after_ms} ms ({phase})")]
    UpstreamTimeout {
        /// host:port the proxy dialed.
        dest: String,
        /// which phase timed out.
        phase: &'static str,
        /// the limit that expired.
        after_ms: u128,
    },
    /// 503: the token source failed for a matched endpoint.
    #[error("no credential for endpoint '{endpoint}' (provider '{provider}'): {cause}")]
    Credential {
        /// endpoint name from config.
        endpoint: String,
        /// provider name from config.
        provider: String,
        /// the source's sanitised reason.
        cause: String,
    },
    /// 500: internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Which side failed.
    pub fn source_side(&self) -> ErrorSource {
        match self {
            Self::BadRequest(_)
            | Self::UriTooLong(_)
            | Self::HeadTooLarge { .. }
            | Self::Denied(_)
            | Self::Misdirected(_) => ErrorSource::Client,
            Self::Upstream { .. } | Self::UpstreamTimeout { .. } => ErrorSource::Upstream,
            Self::Credential { .. } => ErrorSource::Credential,
            Self::Internal(_) => ErrorSource::Internal,
        }
    }

    /// The one status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Credential { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine-readable class, sent as the `lanyard-error` header.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::UriTooLong(_) => "uri-too-long",
            Self::HeadTooLarge { .. } => "head-too-large",
            Self::Denied(_) => "denied",
            Self::Misdirected(_) => "misdirected",
            Self::Upstream { .. } => "upstream",
            Self::UpstreamTimeout { .. } => "upstream-timeout",
            Self::Credential { .. } => "credential",
            Self::Internal(_) => "internal",
        }
    }

    /// The response the client sees: status, a `lanyard-error` class header and
    /// a one-line plain-text reason.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = format!("lanyard: {self}\n");
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("lanyard-error", HeaderValue::from_static(self.kind()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_status_per_class() {
        let e = ProxyError::Credential {
            endpoint: "alpha".into(),
            provider: "p".into(),
            cause: "issuer down".into(),
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.source_side(), ErrorSource::Credential);
        assert_eq!(
            e.to_string(),
            "no credential for endpoint 'alpha' (provider 'p'): issuer down"
        );
        let up = ProxyError::Upstream {
            dest: "a:1".into(),
            reason: "x".into(),
        };
        assert_eq!(up.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(up.source_side(), ErrorSource::Upstream);
    }
}
