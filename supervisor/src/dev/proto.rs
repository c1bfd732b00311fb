//! The JWT half of the public `workload.proto` (SPIFFE Workload API), as
//! prost messages, and gRPC's length-prefixed framing.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

/// `JWTSVIDRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvidRequest {
    /// Audiences the SVID must carry.
    #[prost(string, repeated, tag = "1")]
    pub audience: Vec<String>,
    /// Optional SPIFFE ID to select.
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
}

/// `JWTSVID`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvid {
    /// The SVID's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The compact JWT.
    #[prost(string, tag = "2")]
    pub svid: String,
    /// Operator hint.
    #[prost(string, tag = "3")]
    pub hint: String,
}

/// `JWTSVIDResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvidResponse {
    /// SVIDs, the default first.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<JwtSvid>,
}

/// `JWTBundlesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesResponse {
    /// Trust domain name → JWKS document.
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// `ValidateJWTSVIDRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJwtSvidRequest {
    /// Expected audience.
    #[prost(string, tag = "1")]
    pub audience: String,
    /// The token.
    #[prost(string, tag = "2")]
    pub svid: String,
}

/// `ValidateJWTSVIDResponse` (claims omitted: the dev server returns the ID only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJwtSvidResponse {
    /// The token's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
}

/// One gRPC message: flag byte 0 (uncompressed), 4-byte big-endian length, payload.
pub fn frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut b);
    b.freeze()
}

/// The first message of a request body.
pub fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let (head, rest) = body
        .split_at_checked(5)
        .ok_or("request shorter than a gRPC frame header")?;
    if head[0] != 0 {
        return Err("compressed gRPC messages are not supported".into());
    }
    let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))
        .map_err(|_| "frame too large")?;
    rest.get(..len).ok_or_else(|| "truncated gRPC frame".into())
}
