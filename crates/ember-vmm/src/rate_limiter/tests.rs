//! Token accounting on a manual clock, the blocked/timer protocol, and state round trips.

use std::sync::atomic::Ordering;

use super::*;
use crate::devices::virtio::test_utils::wait_for_timer;

const MS: u64 = 1_000_000;

fn tb(size: u64, burst: Option<u64>, refill_time: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size,
        one_time_burst: burst,
        refill_time,
    }
}

fn limiter(
    bandwidth: Option<TokenBucketConfig>,
    ops: Option<TokenBucketConfig>,
) -> (RateLimiter, Arc<AtomicU64>) {
    let (clock, t) = Clock::manual(1_000 * MS);
    let cfg = RateLimiterConfig { bandwidth, ops };
    (RateLimiter::with_clock(Some(&cfg), clock).unwrap(), t)
}

#[test]
fn zero_size_or_refill_time_disables_a_bucket() {
    assert_eq!(TokenBucket::new(0, 10, 100, 0), Ok(None));
    assert_eq!(TokenBucket::new(10, 10, 0, 0), Ok(None));
    let (mut l, _) = limiter(Some(tb(0, None, 100)), Some(tb(5, None, 0)));
    assert!(l.is_unlimited());
    assert!(l.timer_fd().is_none());
    for _ in 0..1000 {
        assert!(l.consume_request(u64::MAX));
    }
    assert_eq!(l.config(), None);
}

#[test]
fn refill_time_overflow_is_an_error() {
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(tb(1, None, u64::MAX / 1000)),
    };
    let err = RateLimiter::new(Some(&cfg)).unwrap_err();
    assert!(err.to_string().starts_with("ops.refill_time"), "{err}");
    let err = ember_fc_api::validate_rate_limiter(&cfg, "rate_limiter").unwrap_err();
    assert_eq!(err.field, "rate_limiter.ops.refill_time");
}

#[test]
fn bucket_starts_full_and_refills_at_size_per_refill_time() {
    let mut b = TokenBucket::new(1000, 0, 100, 0).unwrap().unwrap();
    assert_eq!(b.reduce(1000, 0), Reduction::Taken);
    assert_eq!(b.budget(), 0);
    // 10 ms is a tenth of the refill time: 100 tokens.
    assert_eq!(
        b.reduce(101, 10 * MS),
        Reduction::Refused { wait_ns: 100_000 }
    );
    assert_eq!(b.budget(), 100, "refill credited, nothing taken");
    assert_eq!(b.reduce(100, 10 * MS), Reduction::Taken);
    // Never more than size, however long the pause.
    b.replenish(10_000 * MS);
    assert_eq!(b.budget(), 1000);
}

#[test]
fn time_spent_full_is_not_banked() {
    let mut b = TokenBucket::new(100, 0, 100, 0).unwrap().unwrap();
    // Idle for ten refill times, then drain: the bucket holds 100, not 1000 or 200.
    assert_eq!(b.reduce(100, 1_000 * MS), Reduction::Taken);
    assert_eq!(b.reduce(1, 1_000 * MS), Reduction::Refused { wait_ns: MS });
}

#[test]
fn fractions_of_a_token_carry_over() {
    // 3 tokens per 10 ms: one per 3.33 ms.
    let mut b = TokenBucket::new(3, 0, 10, 0).unwrap().unwrap();
    assert_eq!(b.reduce(3, 0), Reduction::Taken);
    b.replenish(2 * MS);
    assert_eq!(b.budget(), 0);
    b.replenish(4 * MS);
    assert_eq!(b.budget(), 1);
    b.replenish(7 * MS);
    assert_eq!(b.budget(), 2, "6.67 ms have produced two tokens");
    // Refused wait counts the fraction already accumulated: the third token is due at
    // 10 ms, 3 ms from now.
    assert_eq!(b.reduce(3, 7 * MS), Reduction::Refused { wait_ns: 3 * MS });
    let mut early = b.clone();
    assert!(matches!(
        early.reduce(3, 10 * MS - 1),
        Reduction::Refused { wait_ns: 1 }
    ));
    assert_eq!(b.reduce(3, 10 * MS), Reduction::Taken);
}

#[test]
fn one_time_burst_is_spent_first_and_never_refilled() {
    let mut b = TokenBucket::new(100, 50, 100, 0).unwrap().unwrap();
    assert_eq!(b.reduce(30, 0), Reduction::Taken);
    assert_eq!((b.one_time_burst(), b.budget()), (20, 100));
    // 20 from the burst, 20 from the budget.
    assert_eq!(b.reduce(40, 0), Reduction::Taken);
    assert_eq!((b.one_time_burst(), b.budget()), (0, 80));
    assert_eq!(b.reduce(80, 0), Reduction::Taken);
    // A full refill brings the budget back, not the burst.
    b.replenish(1000 * MS);
    assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
    assert_eq!(b.initial_one_time_burst(), 50);
    // size + burst can go through at once, without waiting.
    let mut b = TokenBucket::new(100, 50, 100, 0).unwrap().unwrap();
    assert_eq!(b.reduce(150, 0), Reduction::Taken);
    assert_eq!(b.reduce(1, 0), Reduction::Refused { wait_ns: MS });
}

#[test]
fn given_back_tokens_refill_the_burst_while_it_lasts() {
    let mut b = TokenBucket::new(100, 50, 100, 0).unwrap().unwrap();
    b.reduce(10, 0);
    b.force_replenish(30);
    assert_eq!(b.one_time_burst(), 50, "capped at the initial burst");
    b.reduce(100, 0);
    b.force_replenish(1000);
    assert_eq!(b.budget(), 100, "capped at size");
}

#[test]
fn a_request_larger_than_the_bucket_drains_it_and_blocks_for_the_overdraft() {
    let mut b = TokenBucket::new(100, 0, 100, 0).unwrap().unwrap();
    assert_eq!(b.reduce(250, 0), Reduction::Overdrawn { wait_ns: 150 * MS });
    assert_eq!(b.budget(), 0);

    let (mut l, _) = limiter(Some(tb(100, None, 100)), None);
    assert!(l.consume(250, TokenType::Bytes), "let through");
    assert!(l.is_blocked());
    assert!(!l.consume(1, TokenType::Bytes));
    assert!(!l.consume(1, TokenType::Ops));
}

#[test]
fn a_blocked_limiter_refuses_everything_until_its_timer_is_handled() {
    // 1000 bytes per 20 ms: after draining, 500 bytes are 10 ms away.
    let (mut l, t) = limiter(Some(tb(1000, None, 20)), None);
    assert!(l.consume(1000, TokenType::Bytes));
    assert!(!l.consume(500, TokenType::Bytes));
    assert!(l.is_blocked());
    assert_eq!(l.bandwidth().unwrap().budget(), 0, "refusal took nothing");

    // Even once the tokens are there and the timer expired, nothing goes through until the
    // owner handles the timer event.
    t.fetch_add(10 * MS, Ordering::AcqRel);
    wait_for_timer(&l);
    assert!(!l.consume(500, TokenType::Bytes));
    assert!(
        !l.consume(1, TokenType::Ops),
        "blocked means blocked for every kind"
    );

    assert!(l.on_timer().unwrap());
    assert!(!l.is_blocked());
    assert!(l.consume(500, TokenType::Bytes));
    assert_eq!(l.bandwidth().unwrap().budget(), 0);
}

#[test]
fn a_spurious_timer_event_keeps_the_limiter_blocked() {
    // 10 s refill: the timer cannot expire while the test runs.
    let (mut l, _) = limiter(None, Some(tb(1, None, 10_000)));
    assert!(l.consume(1, TokenType::Ops));
    assert!(!l.consume(1, TokenType::Ops));
    assert!(!l.on_timer().unwrap());
    assert!(l.is_blocked());
    // An unlimited limiter has no timer: events are always spurious.
    assert!(!RateLimiter::unlimited().on_timer().unwrap());
}

#[test]
fn consume_request_takes_both_buckets_or_neither() {
    let (mut l, _) = limiter(Some(tb(100, None, 10_000)), Some(tb(10, None, 10_000)));
    assert!(l.consume_request(60));
    assert_eq!(l.ops().unwrap().budget(), 9);
    // Bytes refused: the op is given back.
    assert!(!l.consume_request(60));
    assert_eq!(l.ops().unwrap().budget(), 9);
    assert_eq!(l.bandwidth().unwrap().budget(), 40);
}

#[test]
fn state_round_trips_and_garbage_is_rejected() {
    let (mut l, t) = limiter(Some(tb(1000, Some(300), 100)), Some(tb(10, None, 1000)));
    assert!(l.consume_request(500));
    t.fetch_add(5 * MS, Ordering::AcqRel);
    let mut w = Writer::default();
    l.encode(&mut w);
    let bytes = w.into_vec();

    let (clock, t2) = Clock::manual(77_000 * MS);
    let mut r = Reader::new(&bytes);
    let mut back = RateLimiter::decode(&mut r, clock).unwrap();
    r.finish("limiter").unwrap();
    assert_eq!(back.config(), l.config());
    let bw = back.bandwidth().unwrap();
    assert_eq!((bw.one_time_burst(), bw.budget()), (0, 800));
    assert_eq!(back.ops().unwrap().budget(), 9);
    // The 5 ms already elapsed still count: 5 more ms make 100 bytes (1000 per 100 ms).
    t2.fetch_add(5 * MS, Ordering::AcqRel);
    assert!(back.consume(900, TokenType::Bytes));

    for cut in 0..bytes.len() {
        let (clock, _) = Clock::manual(0);
        assert!(RateLimiter::decode(&mut Reader::new(&bytes[..cut]), clock).is_err());
    }
    let mut bad = bytes.clone();
    bad[0] = 7;
    assert!(RateLimiter::decode(&mut Reader::new(&bad), Clock::Monotonic).is_err());
    // Budget above size.
    let mut w = Writer::default();
    w.u8(1);
    for v in [10u64, 0, 100, 0, 11, 0, 0] {
        w.u64(v);
    }
    w.u8(0);
    let err = RateLimiter::decode(&mut Reader::new(&w.into_vec()), Clock::Monotonic).unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
}
