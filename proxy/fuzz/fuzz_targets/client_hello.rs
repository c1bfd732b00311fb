//! The transparent listener's first-bytes classifier and ClientHello SNI
//! reader on arbitrary bytes. Nothing may panic; a name it reports occurs in
//! the input, and more input never turns a decided classification back
//! into "need more".
#![no_main]

use lanyard_proxy::transparent::{Peeked, peek_kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kind = peek_kind(data);
    if let Peeked::Tls(Some(name)) = &kind {
        assert!(data.windows(name.len()).any(|w| w == name.as_bytes()));
    }
    if kind != Peeked::NeedMore {
        let mut more = data.to_vec();
        more.extend_from_slice(b"\x00\x01trailing");
        assert_ne!(peek_kind(&more), Peeked::NeedMore);
    }
});
