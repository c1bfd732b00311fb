use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn policy() -> Policy {
    Policy {
        skew: Duration::ZERO,
        max_lifetime: Duration::from_secs(3600),
        refresh_ahead: 0.5,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        max_entries: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let cache = Refreshing::<&'static str, u32>::new("test", policy());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get(&"k", move || {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok((7, Duration::from_secs(60)))
                    }
                })
                .await
                .map(|f| f.value)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(7));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failures_back_off_and_do_not_poison_other_keys() {
    let cache = Refreshing::<&'static str, u32>::new("test", policy());
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = {
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(u32, Duration), _>("issuer down".to_owned())
            }
        }
    };
    assert_eq!(
        cache.get(&"bad", failing.clone()).await.unwrap_err(),
        CacheError::Failed("issuer down".into())
    );
    for _ in 0..50 {
        match cache.get(&"bad", failing.clone()).await.unwrap_err() {
            CacheError::Backoff { error, retry_in } => {
                assert_eq!(error, "issuer down");
                assert!(retry_in <= Duration::from_millis(100));
            }
            other => panic!("expected backoff, got {other:?}"),
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "retried inside the backoff window"
    );
    let ok = cache
        .get(&"good", || async { Ok((1, Duration::from_secs(60))) })
        .await
        .unwrap();
    assert_eq!(ok.value, 1);
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let p = policy();
    for attempts in 1..10 {
        let d = backoff(&p, attempts);
        let step = (p.backoff_initial * (1 << (attempts - 1))).min(p.backoff_max);
        assert!(
            d >= step / 2 && d <= step,
            "attempt {attempts}: {d:?} outside [{:?}, {step:?}]",
            step / 2
        );
    }
}

#[test]
fn lifetimes_respect_skew_and_cap() {
    let mut p = policy();
    p.skew = Duration::from_secs(30);
    p.max_lifetime = Duration::from_secs(600);
    let cache = Refreshing::<u8, u8>::new("test", p);
    let now = Instant::now();
    let f = cache.schedule(0, Duration::from_secs(300), now);
    assert_eq!(f.expires - now, Duration::from_secs(270));
    assert_eq!(f.refresh_at - now, Duration::from_secs(135));
    // Skew never eats more than half a short lifetime.
    let f = cache.schedule(0, Duration::from_secs(20), now);
    assert_eq!(f.expires - now, Duration::from_secs(10));
    // Capped.
    let f = cache.schedule(0, Duration::from_secs(86_400), now);
    assert_eq!(f.expires - now, Duration::from_secs(600));
}

/// A request cancelled while its fetch is in flight neither aborts the fetch
/// nor lets the next request start another: thirty callers that each give up
/// after 5 ms against a hanging issuer cost one exchange, and its failure is
/// recorded for backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_neither_multiply_fetches_nor_defeat_backoff() {
    let cache = Refreshing::<&'static str, u32>::new("test", policy());
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let fetch = {
        let (calls, gate) = (calls.clone(), gate.clone());
        move || {
            let (calls, gate) = (calls.clone(), gate.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = gate.acquire().await;
                Err::<(u32, Duration), _>("issuer hung, then failed".to_owned())
            }
        }
    };
    for _ in 0..30 {
        let r =
            tokio::time::timeout(Duration::from_millis(5), cache.get(&"k", fetch.clone())).await;
        assert!(r.is_err(), "the hanging fetch answered");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "cancelled callers started new fetches"
    );
    gate.add_permits(1);
    // This caller joins the same fetch and sees its failure, or arrives just
    // after it and sees it recorded.
    match cache.get(&"k", fetch.clone()).await.unwrap_err() {
        CacheError::Failed(e) | CacheError::Backoff { error: e, .. } => {
            assert_eq!(e, "issuer hung, then failed");
        }
    }
    // And the failure was recorded: the next caller backs off without a fetch.
    assert!(matches!(
        cache.get(&"k", fetch.clone()).await,
        Err(CacheError::Backoff { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The monotonic clock stands still across suspend and snapshot restore; an
/// entry whose wall-clock expiry has passed is never returned, whatever the
/// monotonic deadline says.
#[tokio::test]
async fn wall_clock_expiry_is_checked_on_every_read() {
    let cache = Refreshing::<&'static str, u32>::new("test", policy());
    let now = Instant::now();
    cache
        .entries
        .insert(
            "k",
            Arc::new(Fresh {
                value: 1,
                fetched: now,
                refresh_at: now + Duration::from_secs(3000),
                expires: now + Duration::from_secs(3600),
                expires_wall: SystemTime::now() - Duration::from_secs(1),
            }),
        )
        .await;
    let got = cache
        .get(&"k", || async { Ok((2, Duration::from_secs(60))) })
        .await
        .unwrap();
    assert_eq!(got.value, 2, "a wall-clock-expired value was returned");
}
