use super::admin;
use super::*;

#[test]
fn constant_time_eq_compares_whole_values() {
    assert!(constant_time_eq(b"abcdef", b"abcdef"));
    assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
    assert!(!constant_time_eq(b"abc", b"abcdef"));
}

#[test]
fn metrics_encode_as_openmetrics_with_the_lanyard_prefix() {
    let ops = Ops::with_audit(None);
    GrantMetrics::inc(&ops.observe.metrics.reloads, "applied");
    let text = ops.encode();
    assert!(
        text.contains("lanyard_config_reloads_total{result=\"applied\"} 1"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let _ = admin::serve;
}
