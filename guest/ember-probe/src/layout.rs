//! The probe's guest-physical memory map (identity-mapped; the first GiB is user-accessible
//! so the ring-3 agent can reach its buffers, and `memtouch` the rest of the RAM, see
//! [`crate::memtouch`]). Everything the probe uses lies below 4 MiB; RAM from 4 MiB up is
//! touched only by `memtouch`.
//!
//! | range | what |
//! |---|---|
//! | 0x100000.. | the ELF image (text, rodata, data, bss), then the 16 KiB kernel stack |
//! | 0x1f0000 | the state page the host reads (`STATE_GPA`) |
//! | 0x200000 | virtqueue rings, one page: RX at +0, TX at +0x200, event at +0x600, event buffers at +0x800 |
//! | 0x210000 | RX buffers, [`RX_COUNT`] x [`BUF_LEN`] |
//! | 0x220000 | TX buffers, [`TX_COUNT`] x [`BUF_LEN`] |
//! | 0x230000..0x240000 | the ring-3 agent's stack (64 KiB) |
//! | 0x240000 | per-connection receive storage, [`MAX_CONNS`] x [`CONN_RX_LEN`] |
//! | 0x2a0000 | per-connection reply buffers, [`MAX_CONNS`] x [`CONN_OUT_LEN`] |
//! | 0x330000 | scratch for building Exec output ([`SCRATCH_LEN`]) |
//! | 0x340000 | the file table: [`NODE_COUNT`] entries (files and directories) in three pages (`files.rs`) |
//! | 0x343000..0x3c3000 | file data, [`FILE_COUNT`] x [`FILE_MAX_LEN`] |
//! | 0x3c3000 | virtio-net rings, one page: RX at +0, TX at +0x400 (only with a net device) |
//! | 0x3c4000 | virtio-net RX buffers, [`NET_RX_COUNT`] x [`BUF_LEN`] |
//! | 0x3d4000..0x3e4000 | virtio-net TX buffers, [`NET_TX_COUNT`] x [`BUF_LEN`] |
//!
//! Everything past the image is touched only when used, so an idle VM restored from a
//! snapshot shares it with its siblings. Nothing here is zeroed at boot: guest memory starts
//! zeroed, and the file table takes an all-zero entry for a free slot.

/// RX queue rings (the page also holds the TX and event queues, and the event buffers: an
/// agent request writes one ring page instead of three).
pub const RX_RING: usize = 0x20_0000;
/// TX queue rings.
pub const TX_RING: usize = RX_RING + 0x200;
/// Event queue rings.
pub const EV_RING: usize = RX_RING + 0x600;
/// Event buffers (one u32 each, 8 bytes apart).
pub const EVENT_BUFS: usize = RX_RING + 0x800;
/// RX buffers.
pub const RX_BUFS: usize = 0x21_0000;
/// TX buffers.
pub const TX_BUFS: usize = 0x22_0000;
/// Top of the ring-3 stack.
pub const USER_STACK_TOP: usize = 0x24_0000;
/// Per-connection receive storage.
pub const CONN_RX: usize = 0x24_0000;
/// Per-connection reply buffers.
pub const CONN_OUT: usize = 0x2a_0000;
/// Exec output scratch.
pub const SCRATCH: usize = 0x33_0000;
/// Bytes of Exec output scratch.
pub const SCRATCH_LEN: usize = 8192;
/// The file table: [`NODE_COUNT`] entries (path, kind, mode, size, mtime, data slot).
pub const FILES: usize = 0x34_0000;
/// Bytes of the file table's entry pages.
pub const FILE_TABLE_LEN: usize = 0x3000;
/// File data: slot `i`'s bytes are at `FILE_DATA + i * FILE_MAX_LEN`.
pub const FILE_DATA: usize = FILES + FILE_TABLE_LEN;
/// Most files and directories (`/` not counted) the probe holds at once.
pub const NODE_COUNT: usize = 32;
/// Most files the probe holds at once (data slots).
pub const FILE_COUNT: usize = 8;
/// Largest file, in bytes.
pub const FILE_MAX_LEN: usize = 64 << 10;
/// Longest file path, in bytes (the protocol allows 4096; the probe keeps paths in its table).
pub const FILE_PATH_MAX: usize = 255;
/// virtio-net RX queue rings (the page also holds the TX queue's).
pub const NET_RX_RING: usize = FILE_DATA + FILE_COUNT * FILE_MAX_LEN;
/// virtio-net TX queue rings.
pub const NET_TX_RING: usize = NET_RX_RING + 0x400;
/// virtio-net RX buffers.
pub const NET_RX_BUFS: usize = NET_RX_RING + 0x1000;
/// virtio-net TX buffers.
pub const NET_TX_BUFS: usize = NET_RX_BUFS + NET_RX_COUNT as usize * BUF_LEN;
/// virtio-net RX queue entries (and buffers).
pub const NET_RX_COUNT: u16 = 32;
/// virtio-net TX queue entries (and buffers; at most 32, one bit each in a `u32`).
pub const NET_TX_COUNT: u16 = 32;
/// End of the probe's memory (must fit the smallest guest, 4 MiB).
pub const END: usize = NET_TX_BUFS + NET_TX_COUNT as usize * BUF_LEN;

/// Entries in the RX and TX queues (and buffers of each).
pub const RX_COUNT: u16 = 16;
/// TX queue entries.
pub const TX_COUNT: u16 = 32;
/// Event queue entries.
pub const EV_COUNT: u16 = 4;
/// One RX or TX buffer (packet header included).
pub const BUF_LEN: usize = 2048;
/// Most simultaneous agent connections.
pub const MAX_CONNS: usize = 48;
/// Receive storage per connection: the largest request frame the agent accepts.
pub const CONN_RX_LEN: usize = 8192;
/// Reply buffer per connection.
pub const CONN_OUT_LEN: usize = 12288;

const _: () = assert!(END <= 4 << 20);
const _: () = assert!(RX_RING + crate::virtq::footprint(RX_COUNT) <= TX_RING);
const _: () = assert!(TX_RING + crate::virtq::footprint(TX_COUNT) <= EV_RING);
const _: () = assert!(EV_RING + crate::virtq::footprint(EV_COUNT) <= EVENT_BUFS);
const _: () = assert!(EVENT_BUFS + 8 * EV_COUNT as usize <= RX_RING + 0x1000);
const _: () = assert!(RX_BUFS + RX_COUNT as usize * BUF_LEN <= TX_BUFS);
const _: () = assert!(TX_BUFS + TX_COUNT as usize * BUF_LEN <= USER_STACK_TOP - 0x1_0000);
const _: () = assert!(CONN_RX + MAX_CONNS * CONN_RX_LEN <= CONN_OUT);
const _: () = assert!(CONN_OUT + MAX_CONNS * CONN_OUT_LEN <= SCRATCH);
const _: () = assert!(SCRATCH + SCRATCH_LEN <= FILES);
const _: () = assert!(NET_RX_RING.is_multiple_of(0x1000));
const _: () = assert!(NET_RX_RING + crate::virtq::footprint(NET_RX_COUNT) <= NET_TX_RING);
const _: () = assert!(NET_TX_RING + crate::virtq::footprint(NET_TX_COUNT) <= NET_RX_BUFS);
const _: () = assert!(NET_TX_COUNT <= 32);
const _: () = assert!(FILES.is_multiple_of(0x1000) && FILE_DATA.is_multiple_of(0x1000));
