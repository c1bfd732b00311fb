//! Just enough JOSE for the demo: verify JWTs against JWKs (the algorithms a
//! JWT-SVID may use: RS/PS/ES 256/384/512 where ring has them), and sign ES256.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    self, EcdsaKeyPair, KeyPair as _, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde_json::Value;

/// A verification key from a JWK.
#[derive(Debug, Clone)]
pub enum Key {
    /// EC key: curve name and uncompressed SEC1 point.
    Ec(&'static str, Vec<u8>),
    /// RSA key: modulus and exponent.
    Rsa(Vec<u8>, Vec<u8>),
}

fn b64(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = v[field]
        .as_str()
        .ok_or_else(|| format!("JWK has no {field}"))?;
    B64.decode(s.trim_end_matches('='))
        .map_err(|_| format!("JWK {field} is not base64url"))
}

impl Key {
    /// Parses one JWK (as found in a JWKS or a SPIFFE JWT bundle).
    pub fn from_jwk(jwk: &Value) -> Result<Self, String> {
        match jwk["kty"].as_str() {
            Some("EC") => {
                let crv = match jwk["crv"].as_str() {
                    Some("P-256") => "P-256",
                    Some("P-384") => "P-384",
                    other => return Err(format!("unsupported curve {other:?}")),
                };
                let mut point = vec![4u8];
                point.extend(b64(jwk, "x")?);
                point.extend(b64(jwk, "y")?);
                Ok(Key::Ec(crv, point))
            }
            Some("RSA") => Ok(Key::Rsa(b64(jwk, "n")?, b64(jwk, "e")?)),
            other => Err(format!("unsupported key type {other:?}")),
        }
    }
}

/// A verified token's header and claims.
#[derive(Debug)]
pub struct Verified {
    /// JOSE header.
    pub header: Value,
    /// Claims.
    pub claims: Value,
}

/// The `kid` of a compact JWS, unverified (to pick the key).
pub fn kid(token: &str) -> Option<String> {
    let h = token.split('.').next()?;
    let v: Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
    v["kid"].as_str().map(str::to_owned)
}

/// Verifies the signature with `key`; checks `exp` (required) and `nbf`
/// (when present) with `leeway_s` seconds of tolerance.
pub fn verify(token: &str, key: &Key, leeway_s: u64) -> Result<Verified, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    let header: Value = serde_json::from_slice(&B64.decode(h).map_err(|_| "bad header encoding")?)
        .map_err(|_| "header is not JSON")?;
    let sig = B64.decode(s).map_err(|_| "bad signature encoding")?;
    let msg = format!("{h}.{c}");
    let alg = header["alg"].as_str().unwrap_or("");
    let ok = match (alg, key) {
        ("ES256", Key::Ec("P-256", p)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                .verify(msg.as_bytes(), &sig)
                .is_ok()
        }
        ("ES384", Key::Ec("P-384", p)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                .verify(msg.as_bytes(), &sig)
                .is_ok()
        }
        ("RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512", Key::Rsa(n, e)) => {
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, msg.as_bytes(), &sig)
                .is_ok()
        }
        _ => return Err(format!("algorithm '{alg}' not allowed for this key")),
    };
    if !ok {
        return Err("signature does not verify".into());
    }
    let claims: Value = serde_json::from_slice(&B64.decode(c).map_err(|_| "bad claims encoding")?)
        .map_err(|_| "claims are not JSON")?;
    let now = now();
    let exp = claims["exp"].as_u64().ok_or("token has no exp")?;
    if exp + leeway_s <= now {
        return Err("token expired".into());
    }
    if let Some(nbf) = claims["nbf"].as_u64()
        && nbf > now + leeway_s
    {
        return Err("token not yet valid (nbf)".into());
    }
    Ok(Verified { header, claims })
}

/// True when the `aud` claim (string or array) contains `aud`.
pub fn has_audience(claims: &Value, aud: &str) -> bool {
    match &claims["aud"] {
        Value::String(a) => a == aud,
        Value::Array(a) => a.iter().any(|v| v == aud),
        _ => false,
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An ES256 signing key.
pub struct Es256 {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl Es256 {
    /// A fresh key.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .map_err(|e| e.to_string())?;
        let mut id = [0u8; 9];
        ring::rand::SecureRandom::fill(&rng, &mut id).map_err(|e| e.to_string())?;
        Ok(Self {
            key,
            kid: B64.encode(id),
            rng,
        })
    }

    /// Signs `claims` as a compact JWS with `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }

    /// Random `jti`.
    pub fn jti(&self) -> String {
        let mut b = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&self.rng, &mut b);
        B64.encode(b)
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        let p = self.key.public_key().as_ref();
        let (x, y) = p
            .get(1..)
            .map_or((&[][..], &[][..]), |q| q.split_at(q.len() / 2));
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid, "x": B64.encode(x), "y": B64.encode(y)}]})
    }
}
