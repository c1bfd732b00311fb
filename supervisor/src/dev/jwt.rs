//! ES256 JWT-SVIDs from a local P-256 key, and the key as a SPIFFE JWKS bundle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

/// A signing key with its key id.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh key.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| format!("key generation: {e}"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| format!("key: {e}"))?;
        let mut id = [0u8; 12];
        ring::rand::SecureRandom::fill(&rng, &mut id).map_err(|e| format!("rng: {e}"))?;
        Ok(Self {
            key,
            kid: B64.encode(id),
            rng,
        })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed JWT-SVID for `sub` with `aud`, valid for `ttl`.
    pub fn mint(&self, sub: &str, aud: &[String], ttl: Duration) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let header = serde_json::json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" });
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&self.rng, &mut jti).map_err(|e| format!("rng: {e}"))?;
        let claims = serde_json::json!({
            "sub": sub,
            "aud": aud,
            "iat": now,
            "exp": now + ttl.as_secs().max(1),
            "jti": B64.encode(jti),
            // Anyone who could open the socket got this: say so to every verifier.
            "lanyard_dev": "development Workload API: no attestation",
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }

    /// The public key as a SPIFFE JWKS bundle document.
    pub fn jwks(&self) -> String {
        // Uncompressed SEC1 point: 0x04 || X (32) || Y (32).
        let point = self.key.public_key().as_ref();
        let (x, y) = point
            .get(1..)
            .map_or((&[][..], &[][..]), |p| p.split_at(p.len() / 2));
        serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": B64.encode(x),
                "y": B64.encode(y),
                "kid": self.kid,
                "use": "jwt-svid",
            }],
            "spiffe_refresh_hint": 300,
        })
        .to_string()
    }

    /// Verifies a token this signer minted (signature, `aud`, `exp`); returns `sub`.
    pub fn verify(&self, token: &str, audience: &str) -> Result<String, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS".into());
        };
        let sig = B64.decode(s).map_err(|_| "bad signature encoding")?;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "signature does not verify")?;
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(c).map_err(|_| "bad claims encoding")?)
                .map_err(|_| "claims are not JSON")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        if claims["exp"].as_u64().is_none_or(|e| e <= now) {
            return Err("token expired".into());
        }
        let aud_ok = match &claims["aud"] {
            serde_json::Value::String(a) => a == audience,
            serde_json::Value::Array(a) => a.iter().any(|v| v == audience),
            _ => false,
        };
        if !aud_ok {
            return Err(format!("audience '{audience}' not in token"));
        }
        claims["sub"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no sub".into())
    }
}
