//! The four request shapes, as `application/x-www-form-urlencoded` bodies.

use zeroize::Zeroizing;

use super::{Grant, Params};
use crate::config::ActorMode;

/// RFC 7523 §2.2 assertion type (the default).
pub const ASSERTION_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// draft-ietf-oauth-spiffe-client-auth assertion type.
pub const ASSERTION_JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// RFC 8693 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 7523 §2.1 grant type.
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 8693 token type of a JWT-SVID.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The form for `grant` with the SVID `svid` and, for on-behalf-of
/// delegation, the owner's token `subject`. The buffer holds both, so it is
/// zeroed on drop.
pub fn build(grant: Grant, p: &Params, svid: &str, subject: Option<&str>) -> Zeroizing<String> {
    let mut f = form_urlencoded::Serializer::new(String::new());
    if let (Grant::TokenExchange, Some(obo), Some(owner)) = (grant, &p.on_behalf_of, subject) {
        {
            f.append_pair("grant_type", GRANT_TOKEN_EXCHANGE);
            f.append_pair("subject_token", owner);
            f.append_pair("subject_token_type", &obo.subject_token_type);
            match obo.actor {
                ActorMode::ActorToken => {
                    f.append_pair("actor_token", svid);
                    f.append_pair("actor_token_type", TOKEN_TYPE_JWT);
                }
                ActorMode::ClientAssertion => {
                    f.append_pair("client_assertion_type", &p.client_assertion_type);
                    f.append_pair("client_assertion", svid);
                }
            }
            if let Some(t) = &p.requested_token_type {
                f.append_pair("requested_token_type", t);
            }
            return finish(f, p);
        }
    }
    match grant {
        Grant::ClientCredentials => {
            f.append_pair("grant_type", "client_credentials");
            f.append_pair("client_assertion_type", &p.client_assertion_type);
            f.append_pair("client_assertion", svid);
        }
        Grant::TokenExchange => {
            f.append_pair("grant_type", GRANT_TOKEN_EXCHANGE);
            f.append_pair("subject_token", svid);
            f.append_pair("subject_token_type", TOKEN_TYPE_JWT);
            if let Some(t) = &p.requested_token_type {
                f.append_pair("requested_token_type", t);
            }
        }
        Grant::JwtBearer => {
            f.append_pair("grant_type", GRANT_JWT_BEARER);
            f.append_pair("assertion", svid);
        }
        Grant::JwtSvid => {}
    }
    finish(f, p)
}

/// The fields every grant shares.
fn finish(mut f: form_urlencoded::Serializer<'_, String>, p: &Params) -> Zeroizing<String> {
    if let Some(id) = &p.client_id {
        f.append_pair("client_id", id);
    }
    if !p.scopes.is_empty() {
        f.append_pair("scope", &p.scopes.join(" "));
    }
    if let Some(a) = &p.audience {
        f.append_pair("audience", a);
    }
    if let Some(r) = &p.resource {
        f.append_pair("resource", r);
    }
    for (k, v) in &p.extra_params {
        f.append_pair(k, v);
    }
    Zeroizing::new(f.finish())
}
