//! The token endpoint response parser on arbitrary status and body. Nothing
//! may panic; no error message carries the secrets the request held (an
//! issuer may echo the form back), and a token it accepts is token68.
#![no_main]

use http::StatusCode;
use lanyard_supervisor::grants::issuer::{is_token68, parse};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXN2aWQ.c2ln";

fuzz_target!(|data: &[u8]| {
    let Some((&code, body)) = data.split_first() else { return };
    let status = StatusCode::from_u16(100 + u16::from(code) * 2).unwrap_or(StatusCode::OK);
    match parse(status, body, &[SECRET]) {
        Ok(issued) => assert!(is_token68(issued.access_token.expose())),
        Err(e) => assert!(!e.contains(SECRET), "{e}"),
    }
});
