//! Pieces shared by the demos and the integration tests: a throwaway PKI, an
//! HTTPS echo upstream that reports what it received, and the alpha/beta
//! demo's token issuer and protected service.

pub mod echo;
pub mod https;
pub mod issuer;
pub mod jwt;
pub mod pki;
pub mod service;

/// One log line on stderr, for the demo binaries.
pub fn log(line: &str) {
    #[allow(clippy::print_stderr, reason = "the demo services log to stderr")]
    {
        eprintln!("{line}");
    }
}
