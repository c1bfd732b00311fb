//! `cargo fuzz run parse`: the parse phase on arbitrary input. Nothing may
//! panic; normal forms are idempotent and free of `//`, `.` and `..`; host and
//! authority parsing round-trips through Display.
#![no_main]

use lanyard_proxy::parse::{Host, Target, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(n) = normalize_path(s) {
        assert!(!n.contains("//"));
        assert!(n.split('/').all(|seg| seg != "." && seg != ".."));
        assert_eq!(normalize_path(&n).as_deref(), Ok(n.as_str()));
    }
    if let Ok(h) = Host::parse(s) {
        assert_eq!(Host::parse(&h.to_string()).ok(), Some(h));
    }
    if let Ok(t) = Target::parse_authority(s, Some(443)) {
        assert_eq!(Target::parse_authority(&t.to_string(), None).ok(), Some(t));
    }
});
