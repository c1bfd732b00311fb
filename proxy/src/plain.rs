//! Absolute-form `http://` requests to the proxy: matched endpoints get their
//! credential only when the upstream is loopback or the endpoint allows
//! cleartext (invariant 2); everything else is plain forwarding under egress
//! policy.

use http::{Request, Response, header};
use hyper::body::Incoming;

use crate::accept::Front;
use crate::error::ProxyError;
use crate::inject::{self, Scheme, Shape};
use crate::matcher::{ConnectPlan, EgressDecision};
use crate::observe::Record;
use crate::parse::{Target, normalize_path};
use crate::relay::{self, Origin, Purpose, ResBody, Sender};

/// Forwards one absolute-form request; returns the response and the endpoint injected, if any.
pub(crate) async fn forward(
    front: &Front,
    mut req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<ResBody>, ProxyError> {
    let shared = front.shared();
    if let Some(local) = inject::max_forwards(&mut req)? {
        return Ok(local.map(http_body_util::Either::Right));
    }
    if req.uri().scheme_str() != Some("http") {
        return Err(ProxyError::BadRequest(
            "only http:// may be sent in absolute form; send https:// through CONNECT".into(),
        ));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("absolute-form request without authority".into()))?;
    let target = Target::parse_authority(authority.as_str(), Some(80))
        .map_err(|e| ProxyError::BadRequest(format!("request authority: {e}")))?;
    let purpose = match shared.settings.router.connect_plan(&target) {
        ConnectPlan::Intercept => {
            // Decide invariant 2 before dialing, so a refused request costs no connection.
            let rule = normalize_path(req.uri().path())
                .ok()
                .and_then(|path| shared.settings.router.find(&target, &path, req.method()));
            match rule {
                Some(r) if !r.allow_cleartext => Purpose::CleartextEndpoint("credential needs TLS"),
                _ => Purpose::Endpoint,
            }
        }
        ConnectPlan::Passthrough | ConnectPlan::Unmatched | ConnectPlan::Inspect => {
            match shared.settings.egress.decide(&target) {
                EgressDecision::Deny(rule) => {
                    rec.deny_reason = Some("egress");
                    return Err(ProxyError::Denied(format!(
                        "request to {target} denied by {rule}"
                    )));
                }
                // An entry with statements: the inject phase decides the
                // request by them, as inside an intercepted tunnel.
                EgressDecision::Allow(_) | EgressDecision::Inspect(_) => {
                    // RFC 9112 §3.2.2: a proxy uses the absolute-form authority and
                    // ignores Host. Nothing is injected here, so no check is needed.
                    req.headers_mut().remove(header::HOST);
                    Purpose::Egress
                }
            }
        }
    };
    let mut slot = front.plain.lock().await;
    let reusable = matches!(&*slot, Some((t, _, s)) if *t == target && !s.is_closed());
    if !reusable {
        *slot = None;
        let dialed = relay::dial(shared, &target, purpose).await?;
        let addr = dialed.addr;
        let sender = Sender::handshake(
            dialed.stream,
            &target,
            shared.settings.config.limits.max_header_bytes,
        )
        .await?;
        *slot = Some((target.clone(), addr, sender));
    }
    let Some((_, addr, sender)) = slot.as_mut() else {
        return Err(ProxyError::Internal(
            "upstream slot empty after dial".into(),
        ));
    };
    let shape = Shape {
        scheme: Scheme::Http,
        upstream_h2: false,
        upgrade_ok: true,
        cleartext_to: Some(*addr),
        absolute: false,
    };
    rec.upstream = Some(*addr);
    let p = inject::prepare(shared, &target, shape, req, rec).await?;
    let mut resp = relay::forward(
        shared,
        Origin::Plain(sender),
        &target,
        p.req,
        p.upgrade,
        &front.permit,
    )
    .await?;
    inject::scrub_echo(&mut resp, p.credential.as_ref());
    Ok(resp)
}
