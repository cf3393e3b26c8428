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
//! Guest -> host packets with a bad descriptor chain or a length beyond the chain are dropped
//! (and their connection reset); the device never trusts a length it did not check.

pub mod conn;
pub mod muxer;
pub mod packet;

use std::io::{Read, Write};

use ember_fc_api::Vsock as VsockConfig;
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::muxer::{Muxer, MuxerError, TOKEN_KICK};
use self::packet::{HDR_LEN, MAX_PKT_DATA, PacketHeader};
use super::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, Interest, VirtioDevice,
};
use super::manager::VirtioError;
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
/// TX descriptor chains handled per event (a guest cannot keep the thread busy forever); the
/// rest is handled after a self-kick, behind whatever else is ready.
const TX_BUDGET: usize = 256;

/// The vsock device.
pub struct Vsock {
    config: VsockConfig,
    muxer: Muxer,
    pending_event_ack: bool,
    scratch: Vec<u8>,
    kick: EventFd,
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
            kick,
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

    fn process_tx(&mut self, ctx: &mut DeviceContext<'_>) {
        let Self { muxer, kick, .. } = self;
        let mem = ctx.mem;
        let mut used = false;
        let mut budget = TX_BUDGET;
        let mut data = Vec::new();
        let Some(q) = ctx.queues.get_mut(TXQ) else {
            return;
        };
        'outer: loop {
            let _ = q.disable_notification(mem);
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match read_tx_packet(mem, chain, &mut data) {
                    Ok(hdr) => muxer.from_guest(&hdr, &data, ctx.events),
                    Err(e) => tracing::debug!(error = %e, "vsock: dropping a bad TX packet"),
                }
                if let Err(e) = q.add_used(mem, head, 0) {
                    tracing::warn!(error = %e, "vsock: cannot return a TX buffer");
                }
                used = true;
                budget -= 1;
                if budget == 0 {
                    // Come back for the rest after other work.
                    if let Err(e) = kick.write(1) {
                        tracing::warn!(error = %e, "vsock: cannot kick itself");
                    }
                    break 'outer;
                }
            }
            match q.enable_notification(mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            ctx.signal_used(TXQ);
        }
    }

    fn process_rx(&mut self, ctx: &mut DeviceContext<'_>) {
        if self.pending_event_ack {
            return;
        }
        let Self { muxer, scratch, .. } = self;
        let mem = ctx.mem;
        let mut used = false;
        let Some(q) = ctx.queues.get_mut(RXQ) else {
            return;
        };
        while muxer.has_pending_rx() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                // Out of buffers: ask the driver to tell us about new ones.
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(mem) {
                Ok(w) if w.available_bytes() >= HDR_LEN => w,
                _ => {
                    tracing::debug!("vsock: RX buffer unusable, returned empty");
                    let _ = q.add_used(mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HDR_LEN).min(MAX_PKT_DATA);
            if scratch.len() < room {
                scratch.resize(room, 0);
            }
            match muxer.next_packet(&mut scratch[..room], ctx.events) {
                Some(hdr) => {
                    let len = hdr.len as usize;
                    let ok = writer.write_all(&hdr.to_bytes()).is_ok()
                        && writer.write_all(&scratch[..len]).is_ok();
                    let written = if ok { (HDR_LEN + len) as u32 } else { 0 };
                    if let Err(e) = q.add_used(mem, head, written) {
                        tracing::warn!(error = %e, "vsock: cannot return an RX buffer");
                    }
                    used = true;
                }
                None => {
                    // Nothing to send after all: give the buffer back.
                    q.go_to_previous_position();
                    break;
                }
            }
        }
        if !muxer.has_pending_rx() {
            // Nothing waiting: the driver need not tell us about new RX buffers.
            let _ = q.disable_notification(mem);
        }
        if used {
            ctx.signal_used(RXQ);
        }
        // Keep the scratch buffer small between bursts.
        if scratch.capacity() > 8 << 10 && !muxer.has_pending_rx() {
            *scratch = Vec::new();
        }
    }

    /// Publishes `TRANSPORT_RESET` on the event queue.
    fn send_transport_reset(&mut self, ctx: &mut DeviceContext<'_>) {
        let mem = ctx.mem;
        let Some(q) = ctx.queues.get_mut(EVQ) else {
            return;
        };
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            tracing::warn!("vsock: no event buffer; the guest will not see the transport reset");
            return;
        };
        let head = chain.head_index();
        let written = match chain.writer(mem) {
            Ok(mut w) => match w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()) {
                Ok(()) => 4,
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        if let Err(e) = q.add_used(mem, head, written) {
            tracing::warn!(error = %e, "vsock: cannot return the event buffer");
        }
        self.pending_event_ack = true;
        ctx.interrupt.signal_used_queue();
    }
}

/// Reads a TX packet: header, then exactly `hdr.len` payload bytes into `data`.
fn read_tx_packet(
    mem: &vm_memory::GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&vm_memory::GuestMemoryMmap>,
    data: &mut Vec<u8>,
) -> Result<PacketHeader, String> {
    let mut reader = chain.reader(mem).map_err(|e| format!("bad chain: {e}"))?;
    let mut h = [0u8; HDR_LEN];
    reader
        .read_exact(&mut h)
        .map_err(|e| format!("header: {e}"))?;
    let hdr = PacketHeader::from_bytes(&h);
    let len = hdr.len as usize;
    if len > MAX_PKT_DATA || len > reader.available_bytes() {
        return Err(format!(
            "payload length {len} exceeds the chain ({} bytes) or {MAX_PKT_DATA}",
            reader.available_bytes()
        ));
    }
    data.clear();
    data.resize(len, 0);
    reader
        .read_exact(data)
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
