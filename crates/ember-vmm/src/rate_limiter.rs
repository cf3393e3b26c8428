//! Token-bucket rate limiting for the virtio devices, in the shape of Firecracker's
//! `RateLimiter` API object: up to two buckets, `bandwidth` (bytes) and `ops` (requests), each
//! `{size, one_time_burst, refill_time}`.
//!
//! Semantics (what the API documents, and what Firecracker does):
//! - a bucket holds at most `size` tokens and starts full; it refills continuously, `size`
//!   tokens per `refill_time` milliseconds (so `size / refill_time` tokens per ms);
//! - `one_time_burst` is an extra allowance spent *before* the regular budget and never
//!   refilled;
//! - `size == 0` or `refill_time == 0` disables that bucket (no limit);
//! - a request larger than `size` is let through once the bucket has been drained, and the
//!   limiter then stays blocked for as long as the overdraft takes to refill (otherwise such a
//!   request could never pass);
//! - when a request cannot be served, the limiter is *blocked*: every further `consume` fails
//!   until the owner handles the expiry of the limiter's timerfd ([`RateLimiter::on_timer`]).
//!   The device keeps the request queued and retries after that event, so a throttled device
//!   sleeps in its event loop instead of polling.
//!
//! Where ember differs on purpose: the timer is armed for the time the missing tokens take to
//! refill (at least [`MIN_TIMER_NS`]) instead of a fixed 100 ms; a failed reduction takes
//! nothing (Firecracker may spend part of the one-time burst on a request it then refuses);
//! and refill is credited on every reduction, so a bucket that sat full does not hand out
//! a second bucketful right after the first.
//!
//! Time comes from a [`Clock`]: the monotonic clock in production, a manual one in tests, so
//! token accounting is asserted exactly. Buckets take the time as an argument and are pure.
//! State (budgets, remaining burst, time since the last refill) goes into snapshots.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

// The API's shape of a limiter (`ember_fc_api::RateLimiter`), named for its role here.
use crate::snapshot::codec::{DecodeError, Reader, Writer};
use ember_fc_api::{RateLimiter as RateLimiterConfig, TokenBucket as TokenBucketConfig};

const NS_PER_MS: u64 = 1_000_000;

/// The shortest refill wait the timer is armed for (bounds wake-ups of a throttled device).
pub const MIN_TIMER_NS: u64 = 1_000_000;

/// Errors creating or driving a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// A bucket's numbers cannot be represented.
    #[error("{bucket}.refill_time: {refill_time} ms is too large")]
    RefillTimeTooLarge {
        /// `bandwidth` or `ops`.
        bucket: &'static str,
        /// The configured value.
        refill_time: u64,
    },
    /// The timerfd could not be created, armed or read.
    #[error("rate limiter timerfd ({what}): {source}")]
    Timer {
        /// The operation.
        what: &'static str,
        /// The errno.
        source: Errno,
    },
}

/// Where the limiter reads the time (nanoseconds, monotonic).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// CLOCK_MONOTONIC.
    #[default]
    Monotonic,
    /// A clock that only moves when told to (tests, benchmarks).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `start_ns`, and the handle that moves it.
    pub fn manual(start_ns: u64) -> (Clock, Arc<AtomicU64>) {
        let handle = Arc::new(AtomicU64::new(start_ns));
        (Clock::Manual(handle.clone()), handle)
    }

    /// The current time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic => crate::timing::now_ns(),
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }
}

/// What a [`TokenBucket::reduce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The tokens were taken.
    Taken,
    /// Not enough tokens; nothing was taken. `wait_ns` is how long the missing tokens take
    /// to refill.
    Refused {
        /// Nanoseconds until the request would fit.
        wait_ns: u64,
    },
    /// The request was larger than the bucket: it was let through, the bucket is empty and
    /// `wait_ns` is how long the overdraft takes to refill.
    Overdrawn {
        /// Nanoseconds of refill the overdraft costs.
        wait_ns: u64,
    },
}

/// One token bucket. Pure: every operation takes the current time.
///
/// Refill is exact: the part of a token accumulated between operations is kept as a
/// remainder (in token·ns), so frequent calls neither lose nor invent tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    initial_one_time_burst: u64,
    refill_time_ms: u64,
    one_time_burst: u64,
    budget: u64,
    /// Time of the last refill credit.
    last_update_ns: u64,
    /// Refill accumulated towards the next token, in token·ns (`< refill_ns`).
    remainder: u64,
    /// `refill_time` in ns.
    refill_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilled every `refill_time_ms`, plus a one-time burst.
    /// `Ok(None)` when the bucket is disabled (`size` or `refill_time_ms` is zero);
    /// `Err(refill_time_ms)` when the refill time does not fit in nanoseconds.
    pub fn new(
        size: u64,
        one_time_burst: u64,
        refill_time_ms: u64,
        now_ns: u64,
    ) -> Result<Option<TokenBucket>, u64> {
        if size == 0 || refill_time_ms == 0 {
            return Ok(None);
        }
        let refill_ns = refill_time_ms
            .checked_mul(NS_PER_MS)
            .ok_or(refill_time_ms)?;
        Ok(Some(TokenBucket {
            size,
            initial_one_time_burst: one_time_burst,
            refill_time_ms,
            one_time_burst,
            budget: size,
            last_update_ns: now_ns,
            remainder: 0,
            refill_ns,
        }))
    }

    /// Nanoseconds until `tokens` more have been refilled (rounded up), counting the
    /// remainder already accumulated.
    fn time_for(&self, tokens: u64) -> u64 {
        let need = (u128::from(tokens) * u128::from(self.refill_ns))
            .saturating_sub(u128::from(self.remainder));
        u64::try_from(need.div_ceil(u128::from(self.size))).unwrap_or(u64::MAX)
    }

    /// Credits the refill since the last update.
    pub fn replenish(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_update_ns);
        self.last_update_ns = self.last_update_ns.max(now_ns);
        if dt >= self.refill_ns {
            self.budget = self.size;
            self.remainder = 0;
            return;
        }
        let acc = u128::from(dt) * u128::from(self.size) + u128::from(self.remainder);
        let refill = u128::from(self.refill_ns);
        // acc < 2 * size * refill_ns, so the quotient is below 2 * size and the remainder
        // below refill_ns: both fit in u64.
        let tokens = u64::try_from(acc / refill).unwrap_or(u64::MAX);
        self.remainder = u64::try_from(acc % refill).unwrap_or(0);
        self.budget = self.budget.saturating_add(tokens).min(self.size);
        if self.budget == self.size {
            self.remainder = 0;
        }
    }

    /// Takes `tokens`, the one-time burst first. Refill is credited first, so time spent
    /// with a full bucket is not banked (Firecracker only refills when the budget falls
    /// short, which lets an idle bucket hand out twice its size at once).
    pub fn reduce(&mut self, tokens: u64, now_ns: u64) -> Reduction {
        self.replenish(now_ns);
        if tokens <= self.one_time_burst {
            self.one_time_burst -= tokens;
            return Reduction::Taken;
        }
        let mut needed = tokens - self.one_time_burst;
        if needed > self.size {
            // Larger than the bucket can ever hold: drain everything, charge the rest as
            // refill time.
            self.one_time_burst = 0;
            needed -= self.budget;
            self.budget = 0;
            self.remainder = 0;
            return Reduction::Overdrawn {
                wait_ns: self.time_for(needed),
            };
        }
        if needed > self.budget {
            return Reduction::Refused {
                wait_ns: self.time_for(needed - self.budget),
            };
        }
        self.one_time_burst = 0;
        self.budget -= needed;
        Reduction::Taken
    }

    /// Gives back `tokens` (a request that was charged but not served). The one-time burst is
    /// refilled first while it lasts, never beyond its initial size.
    pub fn force_replenish(&mut self, tokens: u64) {
        if self.one_time_burst > 0 {
            self.one_time_burst = self
                .one_time_burst
                .saturating_add(tokens)
                .min(self.initial_one_time_burst);
            return;
        }
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    /// Capacity in tokens.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Milliseconds to refill `size` tokens.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }
    /// Remaining one-time burst.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }
    /// The configured one-time burst.
    pub fn initial_one_time_burst(&self) -> u64 {
        self.initial_one_time_burst
    }
    /// Current budget, without the burst and without crediting refills since the last
    /// operation.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn encode(&self, w: &mut Writer, now_ns: u64) {
        w.u64(self.size);
        w.u64(self.initial_one_time_burst);
        w.u64(self.refill_time_ms);
        w.u64(self.one_time_burst);
        w.u64(self.budget);
        w.u64(self.remainder);
        w.u64(now_ns.saturating_sub(self.last_update_ns));
    }

    fn decode(r: &mut Reader<'_>, now_ns: u64) -> Result<TokenBucket, DecodeError> {
        let size = r.u64("bucket size")?;
        let initial_one_time_burst = r.u64("bucket initial burst")?;
        let refill_time_ms = r.u64("bucket refill time")?;
        let one_time_burst = r.u64("bucket burst")?;
        let budget = r.u64("bucket budget")?;
        let remainder = r.u64("bucket refill remainder")?;
        let elapsed_ns = r.u64("bucket elapsed time")?;
        let invalid = |detail: String| DecodeError::Invalid {
            what: "token bucket",
            detail,
        };
        let mut b = TokenBucket::new(size, initial_one_time_burst, refill_time_ms, now_ns)
            .map_err(|ms| invalid(format!("refill time {ms} ms overflows")))?
            .ok_or_else(|| invalid("size or refill time is zero".into()))?;
        if budget > size || one_time_burst > initial_one_time_burst || remainder >= b.refill_ns {
            return Err(invalid(format!(
                "budget {budget}/{size}, burst {one_time_burst}/{initial_one_time_burst} or \
                 remainder {remainder} out of range"
            )));
        }
        b.one_time_burst = one_time_burst;
        b.budget = budget;
        b.remainder = remainder;
        b.last_update_ns = now_ns.saturating_sub(elapsed_ns.min(b.refill_ns));
        Ok(b)
    }
}

/// Which bucket a consumption draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Bytes (the `bandwidth` bucket).
    Bytes,
    /// Requests (the `ops` bucket).
    Ops,
}

/// A bandwidth bucket, an ops bucket (each optional) and the timerfd that wakes the owner
/// when a blocked limiter may go on.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    /// Present iff a bucket is.
    timer: Option<TimerFd>,
    blocked: bool,
    clock: Clock,
}

fn bucket_from(
    name: &'static str,
    cfg: Option<&TokenBucketConfig>,
    now_ns: u64,
) -> Result<Option<TokenBucket>, RateLimiterError> {
    let Some(c) = cfg else { return Ok(None) };
    TokenBucket::new(c.size, c.one_time_burst.unwrap_or(0), c.refill_time, now_ns).map_err(
        |refill_time| RateLimiterError::RefillTimeTooLarge {
            bucket: name,
            refill_time,
        },
    )
}

fn new_timer() -> Result<TimerFd, RateLimiterError> {
    TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .map_err(|source| RateLimiterError::Timer {
        what: "create",
        source,
    })
}

impl RateLimiter {
    /// A limiter that never limits (no buckets, no timerfd).
    pub fn unlimited() -> RateLimiter {
        RateLimiter {
            bandwidth: None,
            ops: None,
            timer: None,
            blocked: false,
            clock: Clock::Monotonic,
        }
    }

    /// A limiter from its API configuration (`None`: unlimited), on the monotonic clock.
    pub fn new(cfg: Option<&RateLimiterConfig>) -> Result<RateLimiter, RateLimiterError> {
        Self::with_clock(cfg, Clock::Monotonic)
    }

    /// Same, reading time from `clock`.
    pub fn with_clock(
        cfg: Option<&RateLimiterConfig>,
        clock: Clock,
    ) -> Result<RateLimiter, RateLimiterError> {
        let now = clock.now_ns();
        let bandwidth = bucket_from("bandwidth", cfg.and_then(|c| c.bandwidth.as_ref()), now)?;
        let ops = bucket_from("ops", cfg.and_then(|c| c.ops.as_ref()), now)?;
        Self::from_buckets(bandwidth, ops, clock)
    }

    fn from_buckets(
        bandwidth: Option<TokenBucket>,
        ops: Option<TokenBucket>,
        clock: Clock,
    ) -> Result<RateLimiter, RateLimiterError> {
        let timer = if bandwidth.is_some() || ops.is_some() {
            Some(new_timer()?)
        } else {
            None
        };
        Ok(RateLimiter {
            bandwidth,
            ops,
            timer,
            blocked: false,
            clock,
        })
    }

    /// True if neither bucket is configured.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    fn bucket_mut(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    fn block_for(&mut self, wait_ns: u64) {
        let wait = wait_ns.max(MIN_TIMER_NS);
        self.blocked = true;
        let Some(timer) = &self.timer else { return };
        let spec = TimeSpec::from_duration(std::time::Duration::from_nanos(wait));
        if let Err(source) = timer.set(Expiration::OneShot(spec), TimerSetTimeFlags::empty()) {
            // Without a timer nobody would wake the device: stay unblocked and let the
            // budget run dry instead (degraded limiting beats a stalled device).
            tracing::error!(%source, "arming the rate limiter timer failed; not blocking");
            self.blocked = false;
        }
    }

    /// Takes `tokens` of `kind`. `false` means the caller must keep the request and retry
    /// after [`RateLimiter::on_timer`]. Always `true` for an unlimited kind.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now_ns();
        let Some(bucket) = self.bucket_mut(kind) else {
            return true;
        };
        match bucket.reduce(tokens, now) {
            Reduction::Taken => true,
            Reduction::Refused { wait_ns } => {
                self.block_for(wait_ns);
                false
            }
            Reduction::Overdrawn { wait_ns } => {
                tracing::debug!(tokens, ?kind, "request larger than its bucket let through");
                self.block_for(wait_ns);
                true
            }
        }
    }

    /// Takes one op and `bytes` bytes, or nothing: on failure the op is given back.
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        if !self.consume(1, TokenType::Ops) {
            return false;
        }
        if !self.consume(bytes, TokenType::Bytes) {
            self.manual_replenish(1, TokenType::Ops);
            return false;
        }
        true
    }

    /// Gives back `tokens` of `kind` (a request that was charged but not served).
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(b) = self.bucket_mut(kind) {
            b.force_replenish(tokens);
        }
    }

    /// True while requests are refused until the timer fires.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to watch for readability (`None` for an unlimited limiter).
    pub fn timer_fd(&self) -> Option<BorrowedFd<'_>> {
        self.timer.as_ref().map(|t| t.as_fd())
    }

    /// Handles readability of [`RateLimiter::timer_fd`]: `Ok(true)` if the timer expired and
    /// the limiter is unblocked, `Ok(false)` for a spurious wake-up (nothing changes).
    pub fn on_timer(&mut self) -> Result<bool, RateLimiterError> {
        let Some(timer) = &self.timer else {
            return Ok(false);
        };
        let mut buf = [0u8; 8];
        match nix::unistd::read(timer, &mut buf) {
            Ok(_) => {
                self.blocked = false;
                Ok(true)
            }
            Err(Errno::EAGAIN) => Ok(false),
            Err(source) => Err(RateLimiterError::Timer {
                what: "read",
                source,
            }),
        }
    }

    /// The bandwidth bucket.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// The configuration this limiter was built from (for `GET /vm/config`-style reports).
    pub fn config(&self) -> Option<RateLimiterConfig> {
        if self.is_unlimited() {
            return None;
        }
        let cfg = |b: &TokenBucket| TokenBucketConfig {
            size: b.size,
            one_time_burst: (b.initial_one_time_burst > 0).then_some(b.initial_one_time_burst),
            refill_time: b.refill_time_ms,
        };
        Some(RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(cfg),
            ops: self.ops.as_ref().map(cfg),
        })
    }

    /// The configuration and current state as JSON (null when unlimited): per bucket its
    /// `size`, `one_time_burst`, `refill_time`, and the current `budget` and
    /// `one_time_burst_left`.
    pub fn describe(&self) -> serde_json::Value {
        if self.is_unlimited() {
            return serde_json::Value::Null;
        }
        let bucket = |b: &Option<TokenBucket>| match b {
            Some(b) => serde_json::json!({
                "size": b.size,
                "one_time_burst": b.initial_one_time_burst,
                "refill_time": b.refill_time_ms,
                "budget": b.budget,
                "one_time_burst_left": b.one_time_burst,
            }),
            None => serde_json::Value::Null,
        };
        serde_json::json!({
            "bandwidth": bucket(&self.bandwidth),
            "ops": bucket(&self.ops),
            "blocked": self.blocked,
        })
    }

    /// Appends the buckets' state (a presence byte per bucket, then its numbers).
    pub fn encode(&self, w: &mut Writer) {
        let now = self.clock.now_ns();
        for b in [&self.bandwidth, &self.ops] {
            match b {
                Some(b) => {
                    w.u8(1);
                    b.encode(w, now);
                }
                None => w.u8(0),
            }
        }
    }

    /// Rebuilds a limiter from [`RateLimiter::encode`]'s bytes, on `clock`. The restored
    /// limiter is not blocked: a request it refuses arms the timer again.
    pub fn decode(r: &mut Reader<'_>, clock: Clock) -> Result<RateLimiter, DecodeError> {
        let now = clock.now_ns();
        let mut bucket = |what: &'static str| -> Result<Option<TokenBucket>, DecodeError> {
            match r.u8(what)? {
                0 => Ok(None),
                1 => TokenBucket::decode(r, now).map(Some),
                v => Err(DecodeError::Invalid {
                    what,
                    detail: format!("presence byte {v}"),
                }),
            }
        };
        let bandwidth = bucket("bandwidth bucket")?;
        let ops = bucket("ops bucket")?;
        Self::from_buckets(bandwidth, ops, clock).map_err(|e| DecodeError::Invalid {
            what: "rate limiter",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
