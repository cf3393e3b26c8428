//! virtio-net over a host TAP device, at the queue level: queue 0 receives (host → guest),
//! queue 1 transmits (guest → host).
//!
//! - Features: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC when a `guest_mac` is configured (the
//!   MAC is in configuration space), VIRTIO_NET_F_MTU when an `mtu` is. No offloads and no
//!   mergeable RX buffers: every frame goes whole into one RX chain behind the 12-byte
//!   virtio-net header (`num_buffers` = 1).
//! - RX: frames are read from the non-blocking TAP until it is empty, the guest has no RX
//!   buffer, or the RX rate limiter refuses the frame. In the last two cases the frame is
//!   kept (*deferred*) and the owner should stop watching the TAP ([`Net::wants_tap_reads`])
//!   until RX buffers arrive or the limiter's timer fires. RX chains shorter than a full
//!   frame for the MTU (1526 bytes for 1500) are returned with used length 0 (and counted);
//!   a frame larger than a valid chain is dropped.
//! - TX: each chain is one frame (header + Ethernet frame, device-readable only); it is
//!   gathered and written to the TAP in one `write`. Frames shorter than the header or
//!   longer than 64 KiB are dropped (and counted). Every TX chain is returned with used
//!   length 0. A frame refused by the TX rate limiter stays in the queue until the
//!   limiter's timer fires.
//! - A malformed chain (loop, buffer outside guest memory, ...), a buffer in the wrong
//!   direction (device-readable on RX, device-writable on TX) or an impossible available
//!   index breaks the device (see [`super::health`]). At most [`BUDGET`] frames per queue
//!   per call.
//! - Both limiters charge one op plus the Ethernet frame's bytes (header excluded).
//! - Restore opens the TAP named by the (possibly overridden) configuration: that is how
//!   `network_overrides` moves a restored VM to another TAP. A deferred RX frame is not
//!   saved (the network may drop frames).

mod device;
pub mod tap;
#[cfg(test)]
mod tests;

use ember_fc_api::{NetworkInterface, RateLimiter as RateLimiterConfig};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use self::tap::{Tap, TapError, VNET_HDR_LEN};
use super::desc_chain::{Chain, ChainError, read_stream, write_stream};
use super::health::{DeviceHealth, ErrorKind};
use super::wakeup::BUDGET;
use super::{
    QueueOutcome, RestoreError, VIRTIO_F_VERSION_1, add_used, feature, pop_head, read_config_bytes,
    ring,
};
use crate::rate_limiter::{Clock, RateLimiter, RateLimiterError};
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Largest frame handled, header included (64 KiB of frame plus the header).
pub const MAX_FRAME: usize = 65_562;
/// Ethernet header length.
const ETH_HLEN: usize = 14;
/// The MTU assumed when none is configured.
const DEFAULT_MTU: u16 = 1500;

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP device.
    #[error("network interface {id}: {source}")]
    Tap {
        /// Interface id.
        id: String,
        /// Why.
        source: TapError,
    },
    /// `guest_mac` is not `xx:xx:xx:xx:xx:xx`.
    #[error("network interface {id}: invalid guest_mac {mac:?}")]
    Mac {
        /// Interface id.
        id: String,
        /// The value.
        mac: String,
    },
    /// Creating the device's wake-up eventfd.
    #[error("network interface {id}: creating its kick eventfd: {source}")]
    Kick {
        /// Interface id.
        id: String,
        /// Why.
        source: std::io::Error,
    },
    /// A rate limiter configuration.
    #[error("network interface {id}: {which}: {source}")]
    RateLimiter {
        /// Interface id.
        id: String,
        /// `rx_rate_limiter` or `tx_rate_limiter`.
        which: &'static str,
        /// Why.
        source: RateLimiterError,
    },
}

/// Parses `06:00:ac:10:00:02`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Counters (tests and debugging).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Ethernet bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames from the TAP dropped (larger than the guest's buffer, or unreadable).
    pub rx_dropped: u64,
    /// RX chains returned unused because they were too short (or malformed: the device broke).
    pub rx_bad_chains: u64,
    /// Frames written to the TAP.
    pub tx_frames: u64,
    /// Ethernet bytes written to the TAP.
    pub tx_bytes: u64,
    /// TX chains dropped (malformed, wrong direction, bad size, TAP write error).
    pub tx_dropped: u64,
    /// Times RX stopped on its rate limiter.
    pub rx_throttled: u64,
    /// Times TX stopped on its rate limiter.
    pub tx_throttled: u64,
}

/// How to create a network device.
#[derive(Debug, Clone)]
pub struct NetParams {
    /// Interface id.
    pub id: String,
    /// Host TAP name.
    pub host_dev_name: String,
    /// Guest MAC, offered in configuration space.
    pub guest_mac: Option<[u8; 6]>,
    /// MTU offered to the guest.
    pub mtu: Option<u16>,
    /// Receive limits.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Transmit limits.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// The limiters' clock.
    pub clock: Clock,
}

impl NetParams {
    /// Parameters from a validated `PUT /network-interfaces` body.
    pub fn from_config(cfg: &NetworkInterface) -> Result<NetParams, NetError> {
        let guest_mac = match &cfg.guest_mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| NetError::Mac {
                id: cfg.iface_id.clone(),
                mac: m.clone(),
            })?),
            None => None,
        };
        Ok(NetParams {
            id: cfg.iface_id.clone(),
            host_dev_name: cfg.host_dev_name.clone(),
            guest_mac,
            mtu: cfg.mtu,
            rx_rate_limiter: cfg.rx_rate_limiter,
            tx_rate_limiter: cfg.tx_rate_limiter,
            clock: Clock::Monotonic,
        })
    }
}

/// Checks that the TAP `cfg` names exists and can be attached (opened and closed again).
pub fn check_config(cfg: &NetworkInterface) -> Result<(), TapError> {
    Tap::open(&cfg.host_dev_name).map(drop)
}

/// One virtio-net device model.
#[derive(Debug)]
pub struct Net {
    params: NetParams,
    tap: Tap,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    /// Frame read from the TAP and not yet delivered: `rx_buf[..rx_len]`.
    rx_buf: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
    stats: NetStats,
    /// The device's own wake-up, created with the device on the VMM thread: the vCPU
    /// thread that activates the device (the driver's DRIVER_OK write) may not create
    /// descriptors under seccomp. Watched while active ([`Net::kick_watched`]).
    kick: super::wakeup::Kick,
    /// Whether `kick` is registered with the device thread (see `device.rs`).
    kick_watched: bool,
    tap_watch: device::TapWatch,
    /// Chains (frames) handled per call before yielding ([`BUDGET`]).
    budget: u32,
    /// The chain being served (its vector is reused).
    chain: Chain,
}

impl Net {
    /// Opens the TAP and builds the limiters.
    pub fn new(params: NetParams) -> Result<Net, NetError> {
        let limiter = |cfg: Option<&RateLimiterConfig>, which| {
            RateLimiter::with_clock(cfg, params.clock.clone()).map_err(|source| {
                NetError::RateLimiter {
                    id: params.id.clone(),
                    which,
                    source,
                }
            })
        };
        let rx_limiter = limiter(params.rx_rate_limiter.as_ref(), "rx_rate_limiter")?;
        let tx_limiter = limiter(params.tx_rate_limiter.as_ref(), "tx_rate_limiter")?;
        let tap = Tap::open(&params.host_dev_name).map_err(|source| NetError::Tap {
            id: params.id.clone(),
            source,
        })?;
        tracing::debug!(iface = %params.id, tap = %params.host_dev_name, "TAP opened");
        let kick = super::wakeup::Kick::new().map_err(|source| NetError::Kick {
            id: params.id.clone(),
            source,
        })?;
        Ok(Net {
            params,
            tap,
            rx_limiter,
            tx_limiter,
            rx_buf: vec![0; MAX_FRAME],
            rx_len: 0,
            tx_buf: Vec::with_capacity(MAX_FRAME),
            stats: NetStats::default(),
            kick,
            kick_watched: false,
            tap_watch: device::TapWatch::Off,
            budget: BUDGET,
            chain: Chain::default(),
        })
    }

    /// Interface id.
    pub fn id(&self) -> &str {
        &self.params.id
    }

    /// The TAP (its fd goes into the device's event loop).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The guest MAC, if configured.
    pub fn guest_mac(&self) -> Option<[u8; 6]> {
        self.params.guest_mac
    }

    /// Device feature bits offered to the driver.
    pub fn avail_features(&self) -> u64 {
        let mut f = feature(VIRTIO_F_VERSION_1);
        if self.params.guest_mac.is_some() {
            f |= 1 << VIRTIO_NET_F_MAC;
        }
        if self.params.mtu.is_some() {
            f |= 1 << VIRTIO_NET_F_MTU;
        }
        f
    }

    /// Configuration space: `mac[6]`, `status` (0), `max_virtqueue_pairs` (1), `mtu`.
    pub fn config_space(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.params.guest_mac.unwrap_or_default());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.params.mtu.unwrap_or(DEFAULT_MTU).to_le_bytes());
        c
    }

    /// Reads the configuration space.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    /// The receive limiter.
    pub fn rx_rate_limiter(&self) -> &RateLimiter {
        &self.rx_limiter
    }

    /// The transmit limiter.
    pub fn tx_rate_limiter(&self) -> &RateLimiter {
        &self.tx_limiter
    }

    /// Handles the RX limiter's timer event; `true` if RX should be processed again.
    pub fn on_rx_limiter_timer(&mut self) -> bool {
        Self::timer(&mut self.rx_limiter, &self.params.id)
    }

    /// Handles the TX limiter's timer event; `true` if TX should be processed again.
    pub fn on_tx_limiter_timer(&mut self) -> bool {
        Self::timer(&mut self.tx_limiter, &self.params.id)
    }

    fn timer(l: &mut RateLimiter, id: &str) -> bool {
        l.on_timer().unwrap_or_else(|e| {
            tracing::error!(iface = %id, error = %e, "rate limiter timer");
            false
        })
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// True while a frame waits for an RX buffer or RX tokens.
    pub fn rx_deferred(&self) -> bool {
        self.rx_len > 0
    }

    /// Whether the owner should watch the TAP for readability: not while a frame is
    /// deferred (the TAP would stay readable and wake the loop for nothing).
    pub fn wants_tap_reads(&self) -> bool {
        !self.rx_deferred()
    }

    /// The smallest RX chain accepted: header plus a full Ethernet frame at the MTU.
    pub fn min_rx_buffer(&self) -> u64 {
        (VNET_HDR_LEN + ETH_HLEN) as u64 + u64::from(self.params.mtu.unwrap_or(DEFAULT_MTU))
    }

    /// Moves frames from the TAP into RX chains (see the module docs for when it stops).
    pub fn process_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        rxq: &mut Queue,
        health: &DeviceHealth,
    ) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        let mut budget = self.budget;
        let mut chain = std::mem::take(&mut self.chain);
        loop {
            if self.rx_len == 0 {
                if budget == 0 {
                    out.more = true;
                    break;
                }
                budget -= 1;
                if !self.read_tap(health) {
                    break;
                }
            }
            if !self.next_rx_chain(mem, rxq, &mut chain, &mut budget, &mut out, health) {
                break;
            }
            if self.rx_len as u64 > chain.writable_len() {
                // Larger than the MTU promised: drop the frame, keep the buffer.
                ring::unpop(rxq);
                self.stats.rx_dropped += 1;
                self.rx_len = 0;
                continue;
            }
            let frame_bytes = (self.rx_len - VNET_HDR_LEN) as u64;
            if !self.rx_limiter.consume_request(frame_bytes) {
                ring::unpop(rxq);
                self.stats.rx_throttled += 1;
                out.throttled = true;
                break;
            }
            let frame = &mut self.rx_buf[..self.rx_len];
            // num_buffers = 1 (no mergeable buffers).
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let len = match write_stream(mem, chain.writable(), 0, frame) {
                Ok(()) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += frame_bytes;
                    self.rx_len = 0;
                    frame.len() as u32
                }
                Err(e) => {
                    health.report(
                        ErrorKind::Request,
                        format_args!("RX chain {}: writing the frame: {e}", chain.head),
                    );
                    self.stats.rx_bad_chains += 1;
                    0
                }
            };
            if !add_used(rxq, mem, chain.head, len, &mut out, health) {
                break;
            }
        }
        self.chain = chain;
        out
    }

    /// Reads the next frame from the TAP into `rx_buf`; `false` when none is queued.
    fn read_tap(&mut self, health: &DeviceHealth) -> bool {
        loop {
            match self.tap.read_frame(&mut self.rx_buf) {
                Ok(n) if n > VNET_HDR_LEN => {
                    self.rx_len = n;
                    return true;
                }
                Ok(0) => return false,
                Ok(_) => self.stats.rx_dropped += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    health.report(ErrorKind::Backend, format_args!("TAP read failed: {e}"));
                    return false;
                }
            }
        }
    }

    /// Pops the next usable RX chain into `chain`, returning too-short ones with used length
    /// 0 (each costs one unit of `budget`); `false` when there is none (empty queue, budget
    /// spent, or the device broke).
    fn next_rx_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        rxq: &mut Queue,
        chain: &mut Chain,
        budget: &mut u32,
        out: &mut QueueOutcome,
        health: &DeviceHealth,
    ) -> bool {
        let min = self.min_rx_buffer();
        while let Some(head) = pop_head(rxq, mem, health) {
            chain.walk_into(mem, rxq, head);
            if chain.readable().next().is_some() {
                chain.fail(ChainError::WrongDirection(
                    "device-readable buffer in an RX chain",
                ));
            }
            if chain.writable_len() < min {
                chain.fail(ChainError::Layout("RX chain shorter than a full frame"));
            }
            let Some(e) = chain.error else {
                return true;
            };
            self.stats.rx_bad_chains += 1;
            if e.is_fatal() {
                ring::unpop(rxq);
                health.break_device(ErrorKind::Chain, format_args!("RX chain {head}: {e}"));
                return false;
            }
            health.report(ErrorKind::Request, format_args!("RX chain {head}: {e}"));
            if !add_used(rxq, mem, head, 0, out, health) {
                return false;
            }
            if *budget == 0 {
                out.more = true;
                return false;
            }
            *budget -= 1;
        }
        false
    }

    /// Sends the available TX chains to the TAP, until the queue is empty, the TX limiter
    /// refuses a frame (which stays available), [`BUDGET`] were sent (`more`), or the ring
    /// breaks the device.
    pub fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        txq: &mut Queue,
        health: &DeviceHealth,
    ) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        let mut budget = self.budget;
        let mut chain = std::mem::take(&mut self.chain);
        while let Some(head) = pop_head(txq, mem, health) {
            if budget == 0 {
                ring::unpop(txq);
                out.more = true;
                break;
            }
            budget -= 1;
            chain.walk_into(mem, txq, head);
            if chain.writable().next().is_some() {
                chain.fail(ChainError::WrongDirection(
                    "device-writable buffer in a TX chain",
                ));
            }
            let len = chain.readable_len();
            if len <= VNET_HDR_LEN as u64 || len > MAX_FRAME as u64 {
                chain.fail(ChainError::Layout("TX frame length out of range"));
            }
            if let Some(e) = chain.error {
                self.stats.tx_dropped += 1;
                if e.is_fatal() {
                    ring::unpop(txq);
                    health.break_device(ErrorKind::Chain, format_args!("TX chain {head}: {e}"));
                    break;
                }
                health.report(
                    ErrorKind::Request,
                    format_args!("TX chain {head}: {e} ({len} bytes)"),
                );
                if !add_used(txq, mem, head, 0, &mut out, health) {
                    break;
                }
                continue;
            }
            let frame_bytes = len - VNET_HDR_LEN as u64;
            if !self.tx_limiter.consume_request(frame_bytes) {
                ring::unpop(txq);
                self.stats.tx_throttled += 1;
                out.throttled = true;
                break;
            }
            self.tx_buf.resize(len as usize, 0);
            let sent = read_stream(mem, chain.readable(), 0, &mut self.tx_buf)
                .map_err(std::io::Error::other)
                .and_then(|()| self.tap.write_frame(&self.tx_buf));
            match sent {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame_bytes;
                }
                Err(e) => {
                    health.report(ErrorKind::Backend, format_args!("TX frame dropped: {e}"));
                    self.stats.tx_dropped += 1;
                }
            }
            if !add_used(txq, mem, head, 0, &mut out, health) {
                break;
            }
        }
        self.chain = chain;
        out
    }

    /// Appends the snapshot state: id, MAC, both limiters.
    pub fn encode_state(&self, w: &mut Writer) {
        w.bytes(self.params.id.as_bytes());
        match self.params.guest_mac {
            Some(mac) => {
                w.u8(1);
                w.raw(&mac);
            }
            None => w.u8(0),
        }
        self.rx_limiter.encode(w);
        self.tx_limiter.encode(w);
    }

    /// Opens the TAP named in `params` (the restore-time configuration, so an override moves
    /// the VM to another TAP) and applies the saved limiter state. The id and MAC must match
    /// what was saved: the guest already knows its MAC.
    pub fn restore(params: NetParams, r: &mut Reader<'_>) -> Result<Net, RestoreError> {
        let invalid = |detail: String| DecodeError::Invalid {
            what: "network device state",
            detail,
        };
        let id = r.bytes("interface id")?;
        let mac = match r.u8("MAC presence")? {
            0 => None,
            1 => {
                let b = r.take(6, "MAC")?;
                Some([b[0], b[1], b[2], b[3], b[4], b[5]])
            }
            v => return Err(invalid(format!("MAC presence byte {v}")).into()),
        };
        if id != params.id.as_bytes() || mac != params.guest_mac {
            return Err(RestoreError::State(invalid(format!(
                "saved interface {:?} with MAC {mac:02x?} does not match the configured {:?} \
                 with MAC {:02x?}",
                String::from_utf8_lossy(id),
                params.id,
                params.guest_mac
            ))));
        }
        let rx = RateLimiter::decode(r, params.clock.clone())?;
        let tx = RateLimiter::decode(r, params.clock.clone())?;
        let mut net = Net::new(params).map_err(|e| RestoreError::Backend(e.to_string()))?;
        net.rx_limiter = rx;
        net.tx_limiter = tx;
        Ok(net)
    }
}
