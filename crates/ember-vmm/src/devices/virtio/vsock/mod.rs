//! virtio-vsock (device type 19) with Firecracker's hybrid Unix-socket backend.
//!
//! Queues: RX (0, packets for the guest), TX (1, packets from the guest), event (2, transport
//! events). The device moves packets between the queues and the [`muxer::Muxer`], which owns
//! the Unix sockets and the connection table ([`conn`]).
//!
//! Snapshots (Firecracker's behaviour): connections do not survive. When a snapshot is taken,
//! the device publishes `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue (so the guest
//! of the snapshot, and of every VM restored from it, drops its connections) and closes its
//! host connections; listening continues. Until the guest acknowledges the event (by
//! notifying the event queue, which it does when it re-posts the event buffer), nothing is
//! delivered on RX, so a new connection can never be mistaken for an old one. A restored
//! device binds the (possibly overridden) `uds_path` anew.
//!
//! A hostile guest (see [`super::health`]): a packet whose header is short or whose length
//! runs beyond its buffers is dropped and counted, as is an RX buffer too short for a
//! header; the device never trusts a length it did not check. An impossible available index
//! (the spin this device once had: `virtio_queue` logs it and reports "nothing available"
//! and "more available" at once), a descriptor loop, a buffer outside guest memory or in the
//! wrong direction breaks the device until the driver resets it. Each event handles at most
//! [`TX_BUDGET`] TX chains and [`RX_BUDGET`] RX packets; a self-kick brings the device back
//! for the rest, behind whatever else is ready.

pub mod conn;
pub mod muxer;
pub mod packet;

use ember_fc_api::Vsock as VsockConfig;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::muxer::{Muxer, MuxerError, TOKEN_KICK};
use self::packet::{HDR_LEN, MAX_PKT_DATA, PacketHeader};
use super::desc_chain::{Chain, ChainError, read_stream, write_stream};
use super::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, Interest, VirtioDevice,
};
use super::health::ErrorKind;
use super::manager::VirtioError;
use super::ring;
use super::{TYPE_VSOCK, VIRTIO_F_VERSION_1, feature};
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// RX queue index.
pub const RXQ: usize = 0;
/// TX queue index.
pub const TXQ: usize = 1;
/// Event queue index.
pub const EVQ: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// TX descriptor chains (and ring re-checks) handled per event (a guest cannot keep the
/// thread busy forever); the rest is handled after a self-kick, behind whatever else is
/// ready.
pub const TX_BUDGET: usize = 256;
/// RX packets (and ring re-checks) delivered per event; the rest after a self-kick.
pub const RX_BUDGET: usize = 256;
/// Payload buffers larger than this are freed after a burst (density: an idle VM keeps none).
const KEEP_BUF: usize = 8 << 10;

/// The vsock device.
pub struct Vsock {
    config: VsockConfig,
    muxer: Muxer,
    pending_event_ack: bool,
    /// RX payload bytes.
    scratch: Vec<u8>,
    /// TX payload bytes.
    tx_data: Vec<u8>,
    /// The chain being handled (its vector is reused).
    chain: Chain,
    kick: EventFd,
    /// [`TX_BUDGET`] and [`RX_BUDGET`] (tests lower them).
    tx_budget: usize,
    rx_budget: usize,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.config.guest_cid)
            .field("uds_path", &self.config.uds_path)
            .field("pending_event_ack", &self.pending_event_ack)
            .finish_non_exhaustive()
    }
}

fn muxer_error(e: MuxerError) -> VirtioError {
    VirtioError::Device {
        id: "vsock".into(),
        source: ActivateError::Io {
            what: "binding the vsock Unix socket",
            source: std::io::Error::new(e.source.kind(), e.to_string()),
        },
    }
}

impl Vsock {
    /// Creates the device and binds its Unix socket at `config.uds_path`.
    pub fn new(config: &VsockConfig) -> Result<Vsock, VirtioError> {
        let muxer =
            Muxer::new(u64::from(config.guest_cid), &config.uds_path).map_err(muxer_error)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| VirtioError::Device {
            id: "vsock".into(),
            source: ActivateError::Io {
                what: "vsock kick eventfd",
                source,
            },
        })?;
        Ok(Vsock {
            config: config.clone(),
            muxer,
            pending_event_ack: false,
            scratch: Vec::new(),
            tx_data: Vec::new(),
            chain: Chain::default(),
            kick,
            tx_budget: TX_BUDGET,
            rx_budget: RX_BUDGET,
        })
    }

    /// Rebuilds the device from its snapshot bytes, binding `config.uds_path` (the load
    /// request's `vsock_override`, if any, is already applied).
    pub fn restore(config: &VsockConfig, state: &[u8]) -> Result<Vsock, VirtioError> {
        let bad = |e: DecodeError| VirtioError::Snapshot {
            id: "vsock".into(),
            message: e.to_string(),
        };
        let mut r = Reader::new(state);
        let cid = r.u64("vsock guest cid").map_err(bad)?;
        let pending_event_ack = r.u8("vsock pending event ack").map_err(bad)? != 0;
        let local_port_last = r.u32("vsock local port").map_err(bad)?;
        r.finish("vsock state").map_err(bad)?;
        if cid != u64::from(config.guest_cid) {
            return Err(VirtioError::Snapshot {
                id: "vsock".into(),
                message: format!(
                    "saved guest CID {cid} differs from the configuration's {}",
                    config.guest_cid
                ),
            });
        }
        let mut v = Vsock::new(config)?;
        v.pending_event_ack = pending_event_ack;
        v.muxer.set_local_port_last(local_port_last);
        Ok(v)
    }

    /// True if this device was made for `config` (same CID and socket path).
    pub fn matches(&self, config: &VsockConfig) -> bool {
        self.config.guest_cid == config.guest_cid && self.config.uds_path == config.uds_path
    }

    /// Asks for another turn on the device thread (work left at a budget).
    fn kick_self(kick: &EventFd) {
        if let Err(e) = kick.write(1) {
            tracing::warn!(error = %e, "vsock: cannot kick itself");
        }
    }

    fn process_tx(&mut self, ctx: &mut DeviceContext<'_>) {
        let Self {
            muxer,
            kick,
            chain,
            tx_data,
            ..
        } = self;
        let (mem, health, events) = (ctx.mem, ctx.health, ctx.events);
        let mut used = false;
        let mut budget = self.tx_budget;
        let Some(q) = ctx.queues.get_mut(TXQ) else {
            return;
        };
        ring::disable_notification(q, mem);
        loop {
            if budget == 0 {
                // Come back for the rest after other work.
                Self::kick_self(kick);
                break;
            }
            budget -= 1;
            let head = match ring::pop_head(q, mem) {
                Ok(Some(head)) => head,
                Ok(None) => match ring::enable_notification(q, mem) {
                    Ok(true) => {
                        ring::disable_notification(q, mem);
                        continue;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        health.break_device(ErrorKind::Ring, format_args!("TX queue: {e}"));
                        break;
                    }
                },
                Err(e) => {
                    health.break_device(ErrorKind::Ring, format_args!("TX queue: {e}"));
                    break;
                }
            };
            chain.walk_into(mem, q, head);
            if chain.writable().next().is_some() {
                chain.fail(ChainError::WrongDirection(
                    "device-writable buffer in a TX packet",
                ));
            }
            if let Some(e) = chain.fatal() {
                ring::unpop(q);
                health.break_device(ErrorKind::Chain, format_args!("TX chain {head}: {e}"));
                break;
            }
            match read_tx_packet(mem, chain, tx_data) {
                Ok(hdr) => muxer.from_guest(&hdr, tx_data, events),
                Err(e) => {
                    health.report(
                        ErrorKind::Request,
                        format_args!("dropping TX packet {head}: {e}"),
                    );
                }
            }
            if let Err(e) = ring::add_used(q, mem, head, 0) {
                health.break_device(ErrorKind::Ring, format_args!("TX queue: {e}"));
                break;
            }
            used = true;
        }
        if tx_data.capacity() > KEEP_BUF {
            *tx_data = Vec::new();
        }
        if used && !health.is_broken() {
            ctx.signal_used(TXQ);
        }
    }

    fn process_rx(&mut self, ctx: &mut DeviceContext<'_>) {
        if self.pending_event_ack || ctx.is_broken() {
            return;
        }
        let Self {
            muxer,
            scratch,
            chain,
            kick,
            ..
        } = self;
        let (mem, health, events) = (ctx.mem, ctx.health, ctx.events);
        let mut used = false;
        let mut budget = self.rx_budget;
        let Some(q) = ctx.queues.get_mut(RXQ) else {
            return;
        };
        while muxer.has_pending_rx() {
            if budget == 0 {
                Self::kick_self(kick);
                break;
            }
            budget -= 1;
            let head = match ring::pop_head(q, mem) {
                Ok(Some(head)) => head,
                // Out of buffers: ask the driver to tell us about new ones.
                Ok(None) => match ring::enable_notification(q, mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        health.break_device(ErrorKind::Ring, format_args!("RX queue: {e}"));
                        break;
                    }
                },
                Err(e) => {
                    health.break_device(ErrorKind::Ring, format_args!("RX queue: {e}"));
                    break;
                }
            };
            chain.walk_into(mem, q, head);
            if chain.readable().next().is_some() {
                chain.fail(ChainError::WrongDirection(
                    "device-readable buffer in an RX buffer",
                ));
            }
            let capacity = chain.writable_len();
            if capacity < HDR_LEN as u64 {
                chain.fail(ChainError::Layout("RX buffer shorter than a packet header"));
            }
            if let Some(e) = chain.error {
                if e.is_fatal() {
                    ring::unpop(q);
                    health.break_device(ErrorKind::Chain, format_args!("RX chain {head}: {e}"));
                    break;
                }
                health.report(ErrorKind::Request, format_args!("RX chain {head}: {e}"));
                if let Err(e) = ring::add_used(q, mem, head, 0) {
                    health.break_device(ErrorKind::Ring, format_args!("RX queue: {e}"));
                    break;
                }
                used = true;
                continue;
            }
            let room = usize::try_from(capacity - HDR_LEN as u64)
                .unwrap_or(usize::MAX)
                .min(MAX_PKT_DATA);
            if scratch.len() < room {
                scratch.resize(room, 0);
            }
            let Some(hdr) = muxer.next_packet(&mut scratch[..room], events) else {
                // Nothing to send after all: give the buffer back.
                ring::unpop(q);
                break;
            };
            let payload = scratch.get(..hdr.len as usize).unwrap_or_default();
            let ok = write_stream(mem, chain.writable(), 0, &hdr.to_bytes()).is_ok()
                && write_stream(mem, chain.writable(), HDR_LEN as u64, payload).is_ok();
            let written = if ok {
                (HDR_LEN + payload.len()) as u32
            } else {
                health.report(
                    ErrorKind::Request,
                    format_args!("RX chain {head}: cannot write the packet"),
                );
                0
            };
            if let Err(e) = ring::add_used(q, mem, head, written) {
                health.break_device(ErrorKind::Ring, format_args!("RX queue: {e}"));
                break;
            }
            used = true;
        }
        if !muxer.has_pending_rx() && !health.is_broken() {
            // Nothing waiting: the driver need not tell us about new RX buffers.
            ring::disable_notification(q, mem);
        }
        if used && !health.is_broken() {
            ctx.signal_used(RXQ);
        }
        // Keep the scratch buffer small between bursts.
        if scratch.capacity() > KEEP_BUF && !muxer.has_pending_rx() {
            *scratch = Vec::new();
        }
    }

    /// Publishes `TRANSPORT_RESET` on the event queue.
    fn send_transport_reset(&mut self, ctx: &mut DeviceContext<'_>) {
        let (mem, health) = (ctx.mem, ctx.health);
        let Some(q) = ctx.queues.get_mut(EVQ) else {
            return;
        };
        let head = match ring::pop_head(q, mem) {
            Ok(Some(head)) => head,
            Ok(None) => {
                health.report(
                    ErrorKind::Driver,
                    format_args!("no event buffer; the guest will not see the transport reset"),
                );
                return;
            }
            Err(e) => {
                health.break_device(ErrorKind::Ring, format_args!("event queue: {e}"));
                return;
            }
        };
        let chain = &mut self.chain;
        chain.walk_into(mem, q, head);
        if chain.readable().next().is_some() {
            chain.fail(ChainError::WrongDirection(
                "device-readable buffer in an event buffer",
            ));
        }
        if let Some(e) = chain.fatal() {
            ring::unpop(q);
            health.break_device(ErrorKind::Chain, format_args!("event chain {head}: {e}"));
            return;
        }
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = match write_stream(mem, chain.writable(), 0, &event) {
            Ok(()) => event.len() as u32,
            Err(_) => {
                health.report(
                    ErrorKind::Request,
                    format_args!("event buffer {head} is shorter than an event"),
                );
                0
            }
        };
        if let Err(e) = ring::add_used(q, mem, head, written) {
            health.break_device(ErrorKind::Ring, format_args!("event queue: {e}"));
            return;
        }
        self.pending_event_ack = true;
        ctx.interrupt.signal_used_queue();
    }
}

/// Reads a TX packet from a checked chain: header, then exactly `hdr.len` payload bytes into
/// `data`.
fn read_tx_packet(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    data: &mut Vec<u8>,
) -> Result<PacketHeader, String> {
    let total = chain.readable_len();
    let mut h = [0u8; HDR_LEN];
    read_stream(mem, chain.readable(), 0, &mut h)
        .map_err(|_| format!("{total} bytes is shorter than a packet header"))?;
    let hdr = PacketHeader::from_bytes(&h);
    let len = hdr.len as usize;
    let rest = total - HDR_LEN as u64;
    if len > MAX_PKT_DATA || len as u64 > rest {
        return Err(format!(
            "payload length {len} exceeds the chain ({rest} bytes) or {MAX_PKT_DATA}"
        ));
    }
    data.clear();
    data.resize(len, 0);
    read_stream(mem, chain.readable(), HDR_LEN as u64, data)
        .map_err(|e| format!("payload: {e}"))?;
    Ok(hdr)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn id(&self) -> &str {
        "vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = u64::from(self.config.guest_cid).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| cfg.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: &mut DeviceContext<'_>) -> Result<(), ActivateError> {
        use virtio_queue::QueueT as _;
        for (index, q) in ctx.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::Queue {
                    index,
                    reason: "not ready".into(),
                });
            }
        }
        let io = |source| ActivateError::Io {
            what: "watching the vsock socket",
            source,
        };
        self.muxer.register(ctx.events).map_err(io)?;
        match ctx.events.add(&self.kick, TOKEN_KICK, Interest::READ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(io),
        }
    }

    fn handle_event(&mut self, event: DeviceEvent, ctx: &mut DeviceContext<'_>) {
        match event {
            DeviceEvent::Activated => {
                if self.pending_event_ack {
                    // A transport reset is waiting for the guest (snapshot taken, or restored
                    // from one): make sure it hears about it.
                    ctx.interrupt.signal_used_queue();
                }
                self.process_tx(ctx);
            }
            DeviceEvent::Queue(q) if usize::from(q) == TXQ => self.process_tx(ctx),
            DeviceEvent::Queue(q) if usize::from(q) == EVQ => {
                if self.pending_event_ack {
                    tracing::debug!("vsock: guest acknowledged the transport reset");
                }
                self.pending_event_ack = false;
            }
            DeviceEvent::Queue(_) => {}
            DeviceEvent::Fd {
                token: TOKEN_KICK, ..
            } => {
                let _ = self.kick.read();
                self.process_tx(ctx);
            }
            DeviceEvent::Fd { token, readiness } => {
                self.muxer.handle_fd(token, readiness, ctx.events)
            }
        }
        self.process_rx(ctx);
    }

    fn reset(&mut self, events: &EventRegistry) {
        let _ = events.remove(&self.kick);
        self.muxer.unregister(events);
        self.pending_event_ack = false;
    }

    fn prepare_save(&mut self, ctx: &mut DeviceContext<'_>) {
        self.send_transport_reset(ctx);
        let n = self.muxer.connection_count();
        if n > 0 {
            tracing::info!(
                connections = n,
                "vsock: closing connections for the snapshot"
            );
        }
        self.muxer.drop_connections();
    }

    fn save_state(&self, w: &mut Writer) {
        w.u64(u64::from(self.config.guest_cid));
        w.u8(u8::from(self.pending_event_ack));
        w.u32(self.muxer.local_port_last());
    }
}

#[cfg(test)]
mod tests;
