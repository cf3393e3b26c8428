//! virtio-rng (entropy device): fills device-writable buffers with bytes from the host's
//! `getrandom(2)`, behind an optional rate limiter (Firecracker's `PUT /entropy`).
//!
//! One queue. Each chain gets at most [`MAX_REQUEST`] bytes (the spec lets the device write
//! fewer bytes than offered; the used length says how many). A chain that is malformed or
//! holds a device-readable buffer, or an impossible available index, breaks the device (see
//! [`super::health`]); nothing is written. A request refused by the rate limiter (one op plus
//! its bytes) stays in the queue until the limiter's timer event. At most [`BUDGET`] chains
//! per call.

mod device;

pub use self::device::RNG_ID;

use ember_fc_api::RateLimiter as RateLimiterConfig;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::desc_chain::{Chain, ChainError, write_stream};
use super::health::{DeviceHealth, ErrorKind};
use super::wakeup::BUDGET;
use super::{QueueOutcome, VIRTIO_F_VERSION_1, add_used, feature, pop_head, ring};
use crate::rate_limiter::{Clock, RateLimiter, RateLimiterError};
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// Most bytes served per request.
pub const MAX_REQUEST: u32 = 64 * 1024;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// Counters (tests and debugging).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngStats {
    /// Bytes of entropy handed to the guest.
    pub bytes: u64,
    /// Chains not served: malformed (the device broke) or getrandom failed.
    pub failed: u64,
    /// Times processing stopped on the rate limiter.
    pub throttled: u64,
}

/// The entropy device model.
#[derive(Debug)]
pub struct Rng {
    limiter: RateLimiter,
    stats: RngStats,
    /// Its kick and limiter-timer plumbing while active (see `device.rs`).
    wakeups: super::wakeup::SingleQueueWakeups,
    /// Chains (frames) handled per call before yielding ([`BUDGET`]).
    budget: u32,
    /// The chain being served (its vector is reused).
    chain: Chain,
    /// The bytes for one request (kept between calls).
    buf: Vec<u8>,
}

/// Errors creating the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The rate limiter configuration.
    #[error("rate_limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
    /// Creating the device's wake-up eventfd.
    #[error("creating its kick eventfd: {0}")]
    Kick(std::io::Error),
}

/// Makes the host's entropy source ready on the calling (VMM) thread. `getrandom` falls back
/// to opening `/dev/urandom` where it cannot find libc's `getrandom` (a static glibc build
/// has no `dlsym`), and the device thread that serves the guest may not open files under
/// seccomp: the first read here opens and keeps that descriptor; with the syscall it costs
/// one call.
fn prime_entropy_source() {
    if let Err(e) = getrandom::fill(&mut [0u8; 1]) {
        tracing::warn!(error = %e, "virtio-rng: the host entropy source failed");
    }
}

impl Rng {
    /// A device with the given limits (`None`: unlimited) on `clock`.
    pub fn new(limits: Option<&RateLimiterConfig>, clock: Clock) -> Result<Rng, RngError> {
        prime_entropy_source();
        Ok(Rng {
            limiter: RateLimiter::with_clock(limits, clock)?,
            stats: RngStats::default(),
            wakeups: super::wakeup::SingleQueueWakeups::new().map_err(RngError::Kick)?,
            budget: BUDGET,
            chain: Chain::default(),
            buf: Vec::new(),
        })
    }

    /// Device feature bits offered to the driver.
    pub fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    /// The rate limiter (its timer fd goes into the device's event loop).
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Handles the limiter's timer event; `true` if the queue should be processed again.
    pub fn on_rate_limiter_timer(&mut self) -> bool {
        match self.limiter.on_timer() {
            Ok(unblocked) => unblocked,
            Err(e) => {
                tracing::error!(error = %e, "entropy rate limiter timer");
                false
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// Serves the available chains until the queue is empty, the limiter refuses one,
    /// [`BUDGET`] were served (`more`), or the ring breaks the device (reported to `health`).
    pub fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        health: &DeviceHealth,
    ) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        let mut budget = self.budget;
        let mut chain = std::mem::take(&mut self.chain);
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(head) = pop_head(queue, mem, health) {
            if budget == 0 {
                ring::unpop(queue);
                out.more = true;
                break;
            }
            budget -= 1;
            chain.walk_into(mem, queue, head);
            if chain.readable().next().is_some() {
                chain.fail(ChainError::WrongDirection(
                    "device-readable buffer in an entropy request",
                ));
            }
            if let Some(e) = chain.fatal() {
                ring::unpop(queue);
                self.stats.failed += 1;
                health.break_device(ErrorKind::Chain, format_args!("request {head}: {e}"));
                break;
            }
            let len = u32::try_from(chain.writable_len())
                .unwrap_or(u32::MAX)
                .min(MAX_REQUEST);
            if !self.limiter.consume_request(u64::from(len)) {
                ring::unpop(queue);
                self.stats.throttled += 1;
                out.throttled = true;
                break;
            }
            buf.resize(len as usize, 0);
            let written = match getrandom::fill(&mut buf)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    write_stream(mem, chain.writable(), 0, &buf).map_err(|e| e.to_string())
                }) {
                Ok(()) => len,
                Err(e) => {
                    health.report(
                        ErrorKind::Backend,
                        format_args!("filling an entropy buffer failed: {e}"),
                    );
                    self.stats.failed += 1;
                    0
                }
            };
            self.stats.bytes += u64::from(written);
            if !add_used(queue, mem, head, written, &mut out, health) {
                break;
            }
        }
        // Keep at most one small buffer between bursts.
        if buf.capacity() > 4096 {
            buf = Vec::new();
        }
        self.chain = chain;
        self.buf = buf;
        out
    }

    /// Appends the snapshot state (the limiter's buckets).
    pub fn encode_state(&self, w: &mut Writer) {
        self.limiter.encode(w);
    }

    /// Rebuilds the device from [`Rng::encode_state`]'s bytes.
    pub fn restore(r: &mut Reader<'_>, clock: Clock) -> Result<Rng, DecodeError> {
        prime_entropy_source();
        Ok(Rng {
            limiter: RateLimiter::decode(r, clock)?,
            stats: RngStats::default(),
            wakeups: super::wakeup::SingleQueueWakeups::new().map_err(|e| {
                DecodeError::Invalid {
                    what: "rng kick eventfd",
                    detail: e.to_string(),
                }
            })?,
            budget: BUDGET,
            chain: Chain::default(),
            buf: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::devices::virtio::test_utils::{OUTSIDE, TestQueue, test_memory, wait_for_timer};
    use ember_fc_api::TokenBucket as TokenBucketConfig;

    const BUF: u64 = 0x1_0000;

    #[test]
    fn fills_buffers_with_varying_bytes() {
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        let mut rng = Rng::new(None, Clock::Monotonic).unwrap();
        assert_eq!(rng.avail_features(), feature(VIRTIO_F_VERSION_1));
        tq.add_chain(&[(BUF, 64, true)]);
        // Split over two descriptors.
        tq.add_chain(&[(BUF + 0x1000, 100, true), (BUF + 0x2000, 28, true)]);
        let out = rng.process_queue(&mem, &mut q, &hl);
        assert_eq!(
            out,
            QueueOutcome {
                completed: 2,
                throttled: false,
                more: false,
            }
        );
        assert_eq!(tq.used(0), (0, 64));
        assert_eq!(tq.used(1), (1, 128));
        let a = tq.read(BUF, 64);
        let b = [tq.read(BUF + 0x1000, 100), tq.read(BUF + 0x2000, 28)].concat();
        for bytes in [&a, &b] {
            let distinct: std::collections::HashSet<u8> = bytes.iter().copied().collect();
            assert!(distinct.len() > 16, "not random-looking: {bytes:?}");
        }
        assert_ne!(a[..], b[..64]);
        assert_eq!(rng.stats().bytes, 192);
    }

    #[test]
    fn large_buffers_get_at_most_max_request_bytes() {
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        let mut rng = Rng::new(None, Clock::Monotonic).unwrap();
        tq.add_chain(&[(BUF, 0x2_0000, true)]);
        rng.process_queue(&mem, &mut q, &hl);
        assert_eq!(tq.used(0), (0, MAX_REQUEST));
    }

    #[test]
    fn bad_chains_break_the_device_and_nothing_is_written() {
        let mem = test_memory();
        let mut rng = Rng::new(None, Clock::Monotonic).unwrap();
        type Setup = fn(&mut TestQueue<'_>);
        let cases: [(&str, Setup); 4] = [
            ("device-readable buffer", |tq| {
                tq.add_chain(&[(BUF, 16, false)]);
            }),
            ("outside guest memory", |tq| {
                tq.add_chain(&[(OUTSIDE, 16, true)]);
            }),
            ("loop", |tq| {
                tq.set_desc(10, BUF, 16, 1 | 2, 10);
                tq.make_available(10);
            }),
            ("available index 21 is 21 entries ahead", |tq| {
                for _ in 0..20 {
                    tq.make_available(0);
                }
            }),
        ];
        for (what, setup) in cases {
            let hl = DeviceHealth::new("test");
            let mut tq = TestQueue::new(&mem, 16);
            let mut q = tq.queue();
            tq.write(BUF, &[0; 16]);
            setup(&mut tq);
            tq.add_chain(&[(BUF + 0x200, 8, true)]); // a good one after
            assert_eq!(
                rng.process_queue(&mem, &mut q, &hl),
                QueueOutcome::default()
            );
            assert_eq!(tq.used_idx(), 0, "{what}");
            assert_eq!(tq.read(BUF, 16), vec![0; 16], "{what}: nothing written");
            assert!(
                hl.reason().is_some_and(|r| r.contains(what)),
                "{what}: {:?}",
                hl.reason()
            );
        }
        assert_eq!(rng.stats().bytes, 0);
    }

    #[test]
    fn rate_limited_requests_wait_for_the_timer() {
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        let (clock, t) = Clock::manual(0);
        let limits = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 100,
                one_time_burst: None,
                refill_time: 20,
            }),
            ops: None,
        };
        let mut rng = Rng::new(Some(&limits), clock).unwrap();
        tq.add_chain(&[(BUF, 64, true)]);
        tq.add_chain(&[(BUF + 0x1000, 64, true)]);
        assert_eq!(
            rng.process_queue(&mem, &mut q, &hl),
            QueueOutcome {
                completed: 1,
                throttled: true,
                more: false,
            }
        );
        assert_eq!(rng.rate_limiter().bandwidth().unwrap().budget(), 36);
        assert_eq!(tq.used_idx(), 1);
        // 28 bytes missing at 5 bytes/ms: 5.6 ms.
        t.fetch_add(5_600_000, Ordering::AcqRel);
        wait_for_timer(rng.rate_limiter());
        assert_eq!(rng.process_queue(&mem, &mut q, &hl).completed, 0);
        assert!(rng.on_rate_limiter_timer());
        assert_eq!(rng.process_queue(&mem, &mut q, &hl).completed, 1);
        assert_eq!(rng.rate_limiter().bandwidth().unwrap().budget(), 0);

        let mut w = Writer::default();
        rng.encode_state(&mut w);
        let bytes = w.into_vec();
        let back = Rng::restore(&mut Reader::new(&bytes), Clock::manual(0).0).unwrap();
        assert_eq!(back.rate_limiter().config(), Some(limits));
    }

    #[test]
    fn device_face_yields_at_its_budget_and_its_kick_brings_it_back() {
        use crate::devices::virtio::testing::Harness;
        use crate::devices::virtio::{DeviceEvent, TYPE_RNG, VirtioDevice};

        let mut rng = Rng::new(None, Clock::Monotonic).unwrap();
        assert_eq!(
            (rng.device_type(), VirtioDevice::id(&rng)),
            (TYPE_RNG, RNG_ID)
        );
        // A queue the driver never set up cannot be activated.
        let mut h = Harness::new(&[QUEUE_SIZE]);
        assert!(rng.activate(&mut h.ctx()).is_err());

        let mut gq = h.guest_queue(0, 0, 16);
        rng.activate(&mut h.ctx()).unwrap();
        rng.budget = 2;
        for i in 0..5 {
            gq.add_chain(&h.mem, &[(BUF + i * 0x100, 32, true)]);
        }
        rng.handle_event(DeviceEvent::Queue(0), &mut h.ctx());
        let mut used = std::iter::from_fn(|| gq.next_used(&h.mem)).count();
        assert_eq!(used, 2);
        assert_eq!(h.interrupts(), 1);
        // Leftover work comes back through the device's own kick, not a guest notification.
        for _ in 0..2 {
            let events = h.poll(1000);
            assert_eq!(events.len(), 1, "{events:?}");
            let (token, readiness) = events[0];
            rng.handle_event(DeviceEvent::Fd { token, readiness }, &mut h.ctx());
            used += std::iter::from_fn(|| gq.next_used(&h.mem)).count();
        }
        assert_eq!(used, 5);
        assert!(h.poll(0).is_empty(), "nothing left to do");

        // Reset unregisters; a new activation works.
        rng.reset(&h.events);
        rng.activate(&mut h.ctx()).unwrap();
        gq.add_chain(&h.mem, &[(BUF, 16, true)]);
        rng.handle_event(DeviceEvent::Activated, &mut h.ctx());
        assert_eq!(gq.next_used(&h.mem).map(|u| u.1), Some(16));
    }
}
