//! The pool's own floor: acquire latency over the in-memory provider (no VM behind it), so any
//! real provider's figure can be read as "pool overhead + provider cost".
//!
//! Criterion measures a single acquire; a second phase prints p50/p90/p99 over many acquires,
//! single-threaded and with 32 concurrent acquirers, as one JSON object per line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;
use ember_core::{InMemoryVmProvider, SnapshotId, SnapshotRequest, StackKey, VmId, VmProvider};
use ember_pool::{AliveValidator, BucketConfig, PoolSettings, Tenant, WarmPool};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn setup() -> (WarmPool<InMemoryVmProvider>, StackKey) {
    let p = InMemoryVmProvider::new();
    let stack = StackKey::new("bench", "1", 1, 128).unwrap();
    let tpl = VmId::new("tpl").unwrap();
    p.create(&tpl).unwrap();
    p.start(&tpl).unwrap();
    p.pause(&tpl).unwrap();
    let snap = p
        .snapshot(
            &tpl,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new("s").unwrap(),
                stack: Some(stack.clone()),
            },
        )
        .unwrap();
    let pool = WarmPool::start(p, Arc::new(AliveValidator), PoolSettings::default()).unwrap();
    pool.register(
        stack.clone(),
        snap,
        BucketConfig {
            min_depth: DEPTH,
            max_depth: DEPTH,
            refill_parallelism: 8,
            ..BucketConfig::default()
        },
    )
    .unwrap();
    wait_full(&pool, &stack);
    (pool, stack)
}

const DEPTH: usize = 4096;

/// Waits until the bucket is full again, so measured acquires never wait for a refill.
fn wait_full(pool: &WarmPool<InMemoryVmProvider>, stack: &StackKey) {
    while pool.depth(stack).unwrap_or(0) < DEPTH {
        thread::sleep(Duration::from_millis(1));
    }
}

/// One acquire, timed; the tenant's VM is destroyed outside the timing.
fn timed_acquire(pool: &WarmPool<InMemoryVmProvider>, stack: &StackKey) -> Duration {
    let tenant = Tenant::new(&format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))).unwrap();
    let t0 = Instant::now();
    let vm = pool
        .acquire_timeout(stack, &tenant, Duration::from_secs(30))
        .unwrap();
    let d = t0.elapsed();
    pool.provider().destroy(&vm.vm_id).unwrap();
    d
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.9), at(0.99))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (pool, stack) = setup();

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    c.bench_function("pool_acquire_in_memory", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if pool.depth(&stack).unwrap_or(0) == 0 {
                    wait_full(&pool, &stack);
                }
                total += timed_acquire(&pool, &stack);
            }
            total
        })
    });
    c.final_summary();

    // Warm: the bucket holds more than the phase takes.
    let n = if full { 4_000 } else { 200 };
    wait_full(&pool, &stack);
    let samples: Vec<Duration> = (0..n).map(|_| timed_acquire(&pool, &stack)).collect();
    let (p50, p90, p99) = percentiles(samples);
    println!(
        "{{\"bench\":\"pool_acquire_in_memory\",\"threads\":1,\"n\":{n},\"p50_us\":{p50:.2},\"p90_us\":{p90:.2},\"p99_us\":{p99:.2}}}"
    );

    let threads = 32;
    let per_thread = n / threads;
    wait_full(&pool, &stack);
    let t0 = Instant::now();
    let samples: Vec<Duration> = thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    (0..per_thread)
                        .map(|_| timed_acquire(&pool, &stack))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let total = samples.len();
    let (p50, p90, p99) = percentiles(samples);
    println!(
        "{{\"bench\":\"pool_acquire_in_memory\",\"threads\":{threads},\"n\":{total},\"p50_us\":{p50:.2},\"p90_us\":{p90:.2},\"p99_us\":{p99:.2},\"acquires_per_s\":{:.0}}}",
        total as f64 / wall
    );

    // Drained: 32 threads take 3x the bucket, so most acquires wait for a refill; this is the
    // pool's refill throughput with a free provider.
    wait_full(&pool, &stack);
    let per_thread = 3 * DEPTH / threads;
    let t0 = Instant::now();
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    timed_acquire(&pool, &stack);
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let created = pool.metrics().created_total;
    println!(
        "{{\"bench\":\"pool_refill_in_memory\",\"threads\":{threads},\"acquires\":{},\"acquires_per_s\":{:.0},\"created_total\":{created}}}",
        per_thread * threads,
        (per_thread * threads) as f64 / wall
    );
    pool.shutdown();
}
