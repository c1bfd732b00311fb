//! Pieces shared by the demos and the integration tests: a throwaway PKI and
//! an HTTPS echo upstream that reports what it received (so a demo can show,
//! and a test can assert, which credential arrived).

pub mod echo;
pub mod pki;
