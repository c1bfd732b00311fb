//! The config loader on arbitrary text: parse, then validate (everything
//! `lanyard check` does short of starting providers). Nothing may panic,
//! and every refusal names a field and a reason.
#![no_main]

use std::path::Path;

use lanyard_supervisor::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/fuzz/lanyard.yaml");
    match Config::parse(text, path) {
        Ok(config) => {
            if let Err(e) = config.validate(path) {
                assert!(!e.reason.is_empty(), "{e:?}");
            }
        }
        Err(e) => assert!(!e.reason.is_empty(), "{e:?}"),
    }
});
