//! The path oracle of the generated-attack suites: every way a lenient
//! server might read a path it received (percent-decoding once or twice,
//! backslashes, `;params`, overlong UTF-8, NUL truncation, collapsed `//`),
//! written independently of Lanyard's normaliser; and the seeding both
//! suites share (printed, replayable, one reproducible runner per batch).

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).expect("a byte"));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4 on '/'-separated segments, never above the root;
/// optionally dropping `;params` from each segment first (Tomcat, Jetty).
fn remove_dots(path: &str, strip_params: bool) -> String {
    let mut out: Vec<String> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for seg in &segs {
        let seg = if strip_params {
            seg.split(';').next().unwrap_or("")
        } else {
            seg
        };
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    format!("/{}", out.join("/"))
}

/// Every way a lenient server might read `raw`.
pub fn readings(raw: &str) -> Vec<String> {
    let overlong = raw
        .replace("%c0%ae", ".")
        .replace("%C0%AE", ".")
        .replace("%c0%af", "/")
        .replace("%u002e", ".");
    let once = percent_decode(raw);
    let twice = percent_decode(&once);
    let bases = [
        raw.to_owned(),
        once.clone(),
        twice.clone(),
        once.replace('\\', "/"),
        twice.replace('\\', "/"),
        percent_decode(&overlong).replace('\\', "/"),
        // NUL truncation (C string handling).
        once.split('\0').next().unwrap_or("").to_owned(),
    ];
    let mut out = Vec::new();
    for b in bases {
        // A lenient server collapses `//`; the segment-wise reading is the same.
        let collapsed = {
            let mut s = b.clone();
            while s.contains("//") {
                s = s.replace("//", "/");
            }
            s
        };
        for strip in [false, true] {
            out.push(remove_dots(&collapsed, strip));
        }
    }
    out
}

/// `path` is `prefix` or below it, segment-wise.
pub fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// The run's seed: `var` (hex) to replay one, else from the clock. Printed,
/// so a failure's output says how to replay it.
pub fn seed(var: &str, what: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| u64::from_str_radix(&s, 16).ok())
        .unwrap_or_else(|| {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (d.as_secs() << 30) ^ u64::from(d.subsec_nanos())
        });
    #[allow(clippy::print_stderr, reason = "the seed is how a failure is replayed")]
    {
        eprintln!("{what}: seed {seed:016x} (replay with {var}={seed:016x})");
    }
    seed
}

/// A runner of `cases` cases for batch `batch` of the run seeded `seed`:
/// the same pair always generates the same cases.
pub fn runner(seed: u64, batch: u64, cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&batch.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}
