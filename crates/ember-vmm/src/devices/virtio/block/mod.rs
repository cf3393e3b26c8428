//! virtio-blk backed by a raw host file: `IN`, `OUT`, `FLUSH` and `GET_ID`, a read-only flag,
//! and a bandwidth/ops rate limiter, at the queue level (no transport here).
//!
//! - Capacity is the file size in 512-byte sectors (a trailing partial sector is not
//!   exposed); every request is bounds-checked against it with checked arithmetic.
//! - Read-only drives are opened `O_RDONLY`, offer VIRTIO_BLK_F_RO, and fail `OUT` with
//!   `IOERR`.
//! - `cache_type` follows Firecracker: `Writeback` offers VIRTIO_BLK_F_FLUSH and a flush
//!   `fsync`s the file; `Unsafe` (the default) does not offer it and a flush is a no-op.
//! - I/O is synchronous (`read(2)`/`write(2)` straight into and out of guest memory; no
//!   O_DIRECT).
//! - `GET_ID` answers the drive id, truncated or zero-padded to 20 bytes.
//! - The used length is the bytes written into guest memory plus the status byte.
//!
//! A request the device refuses (see [`request`]: beyond the disk, not whole sectors, a
//! write to a read-only drive, an unknown type, an I/O error) ends with an error status byte
//! and is counted in the device's [`DeviceHealth`]; a chain no correct driver builds (a
//! loop, a buffer outside guest memory, data in the wrong direction, no header or no status
//! byte) or an impossible available index breaks the device instead (see
//! [`super::health`]). A rate-limited request stays in the queue (the available index is
//! rewound) until the limiter's timer event. At most [`BUDGET`] requests per call.

mod device;
pub mod request;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use ember_fc_api::{CacheType, Drive, RateLimiter as RateLimiterConfig};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_ID_BYTES};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use self::request::{Request, RequestError};
use super::desc_chain::Chain;
use super::health::{DeviceHealth, ErrorKind};
use super::wakeup::BUDGET;
use super::{
    QueueOutcome, RestoreError, VIRTIO_F_VERSION_1, add_used, feature, pop_head, read_config_bytes,
    ring,
};
use crate::rate_limiter::{Clock, RateLimiter, RateLimiterError};
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// Errors opening a drive.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened or measured.
    #[error("drive {id}: {path}: {source}")]
    Open {
        /// Drive id.
        id: String,
        /// Host path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The backing file is not a regular file or block device of usable size.
    #[error("drive {id}: {path}: {detail}")]
    Unusable {
        /// Drive id.
        id: String,
        /// Host path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The configuration has no `path_on_host`.
    #[error("drive {0}: no path_on_host")]
    NoPath(String),
    /// The rate limiter configuration.
    #[error("drive {id}: rate_limiter: {source}")]
    RateLimiter {
        /// Drive id.
        id: String,
        /// Why.
        source: RateLimiterError,
    },
    /// Creating the device's wake-up eventfd.
    #[error("drive {id}: creating its kick eventfd: {source}")]
    Kick {
        /// Drive id.
        id: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters of one drive (tests and debugging).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    /// Bytes read from the file into the guest.
    pub read_bytes: u64,
    /// Bytes written to the file from the guest.
    pub write_bytes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Requests completed with IOERR or UNSUPP, or without a status.
    pub failed: u64,
    /// Times processing stopped on the rate limiter.
    pub throttled: u64,
}

/// How to open a drive (what the API configuration says, plus the limiter's clock).
#[derive(Debug, Clone)]
pub struct BlockParams {
    /// Drive id (also the GET_ID answer).
    pub id: String,
    /// Host file.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
    /// Flush behaviour.
    pub cache_type: CacheType,
    /// Rate limits.
    pub rate_limiter: Option<RateLimiterConfig>,
    /// The limiter's clock.
    pub clock: Clock,
}

impl BlockParams {
    /// Parameters from a validated `PUT /drives` body.
    pub fn from_config(cfg: &Drive) -> Result<BlockParams, BlockError> {
        let path = cfg
            .path_on_host
            .as_ref()
            .ok_or_else(|| BlockError::NoPath(cfg.drive_id.clone()))?;
        Ok(BlockParams {
            id: cfg.drive_id.clone(),
            path: path.clone(),
            read_only: cfg.is_read_only.unwrap_or(false),
            cache_type: cfg.cache_type.unwrap_or(CacheType::Unsafe),
            rate_limiter: cfg.rate_limiter,
            clock: Clock::Monotonic,
        })
    }
}

/// One virtio-blk device model.
#[derive(Debug)]
pub struct Block {
    params: BlockParams,
    file: File,
    nsectors: u64,
    limiter: RateLimiter,
    stats: BlockStats,
    /// Its kick and limiter-timer plumbing while active (see `device.rs`).
    wakeups: super::wakeup::SingleQueueWakeups,
    /// Chains (frames) handled per call before yielding ([`BUDGET`]).
    budget: u32,
    /// The chain being served (its vector is reused).
    chain: Chain,
}

fn open_disk(p: &BlockParams) -> Result<(File, u64), BlockError> {
    let open_err = |source| BlockError::Open {
        id: p.id.clone(),
        path: p.path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!p.read_only)
        .open(&p.path)
        .map_err(open_err)?;
    let size = disk_size(&file, &p.path).map_err(open_err)?;
    if size < SECTOR_SIZE {
        return Err(BlockError::Unusable {
            id: p.id.clone(),
            path: p.path.clone(),
            detail: format!("{size} bytes is smaller than one sector"),
        });
    }
    if size % SECTOR_SIZE != 0 {
        tracing::warn!(
            drive = %p.id,
            size,
            "disk size is not a multiple of 512; the last partial sector is not exposed"
        );
    }
    Ok((file, size / SECTOR_SIZE))
}

fn disk_size(file: &File, path: &Path) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    if !meta.file_type().is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is neither a regular file nor a block device",
                path.display()
            ),
        ));
    }
    // Block devices report 0 in st_size; their end is their size.
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// The drives in slot order: the root device first (so a Linux guest sees it as `/dev/vda`),
/// the others in configuration order.
pub fn slot_order(drives: &[Drive]) -> impl Iterator<Item = &Drive> {
    let root = drives.iter().filter(|d| d.is_root_device);
    root.chain(drives.iter().filter(|d| !d.is_root_device))
}

/// The kernel command line arguments for the root drive, as Firecracker adds them:
/// ` root=/dev/vda` (or ` root=PARTUUID=<partuuid>`) and ` ro` or ` rw`; empty without a root
/// drive.
pub fn root_args(drives: &[Drive]) -> String {
    let Some(root) = drives.iter().find(|d| d.is_root_device) else {
        return String::new();
    };
    let dev = match &root.partuuid {
        Some(uuid) => format!("PARTUUID={uuid}"),
        None => "/dev/vda".to_string(),
    };
    let mode = if root.is_read_only.unwrap_or(false) {
        "ro"
    } else {
        "rw"
    };
    format!(" root={dev} {mode}")
}

/// Checks that the drive `cfg` describes can be opened (the file exists, is a regular file
/// or block device of at least one sector, and opens with the configured access); nothing is
/// kept open.
pub fn check_config(cfg: &Drive) -> Result<(), BlockError> {
    open_disk(&BlockParams::from_config(cfg)?).map(drop)
}

impl Block {
    /// Opens the backing file and builds the rate limiter.
    pub fn new(params: BlockParams) -> Result<Block, BlockError> {
        let (file, nsectors) = open_disk(&params)?;
        let limiter = RateLimiter::with_clock(params.rate_limiter.as_ref(), params.clock.clone())
            .map_err(|source| BlockError::RateLimiter {
            id: params.id.clone(),
            source,
        })?;
        let wakeups =
            super::wakeup::SingleQueueWakeups::new().map_err(|source| BlockError::Kick {
                id: params.id.clone(),
                source,
            })?;
        Ok(Block {
            params,
            file,
            nsectors,
            limiter,
            stats: BlockStats::default(),
            wakeups,
            budget: BUDGET,
            chain: Chain::default(),
        })
    }

    /// Drive id.
    pub fn id(&self) -> &str {
        &self.params.id
    }

    /// Capacity in 512-byte sectors.
    pub fn nsectors(&self) -> u64 {
        self.nsectors
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.params.read_only
    }

    /// The host file.
    pub fn path(&self) -> &Path {
        &self.params.path
    }

    /// Device feature bits offered to the driver.
    pub fn avail_features(&self) -> u64 {
        let mut f = feature(VIRTIO_F_VERSION_1);
        if self.params.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.params.cache_type == CacheType::Writeback {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    /// Reads the configuration space (`capacity` in sectors; the rest reads as zero).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.nsectors.to_le_bytes(), offset, data);
    }

    /// The GET_ID answer: the drive id, zero-padded to 20 bytes.
    pub fn device_id(&self) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let src = self.params.id.as_bytes();
        let n = src.len().min(id.len());
        id[..n].copy_from_slice(&src[..n]);
        id
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
                tracing::error!(drive = %self.params.id, error = %e, "rate limiter timer");
                false
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Serves the available requests, in order, until the queue is empty, the rate limiter
    /// refuses one (which then stays available), [`BUDGET`] were served (`more`), or the ring
    /// breaks the device (reported to `health`).
    pub fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        health: &DeviceHealth,
    ) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        let mut budget = self.budget;
        let mut chain = std::mem::take(&mut self.chain);
        while let Some(head) = pop_head(queue, mem, health) {
            if budget == 0 {
                ring::unpop(queue);
                out.more = true;
                break;
            }
            budget -= 1;
            chain.walk_into(mem, queue, head);
            let status_at = request::status_location(&chain);
            let parsed = Request::parse(mem, &chain, self.nsectors, self.params.read_only);
            let (status, written) = match parsed {
                Ok(req) => {
                    if !self.limiter.consume_request(req.cost_bytes()) {
                        ring::unpop(queue);
                        self.stats.throttled += 1;
                        out.throttled = true;
                        break;
                    }
                    self.execute(mem, &chain, &req, health)
                }
                Err(e) if e.is_fatal() => {
                    // Left at the bad chain (`GET /ember/devices` shows where it stopped).
                    ring::unpop(queue);
                    self.stats.failed += 1;
                    health.break_device(ErrorKind::Chain, format_args!("request {head}: {e}"));
                    break;
                }
                Err(e) => {
                    health.report(ErrorKind::Request, format_args!("request {head}: {e}"));
                    (e.status(), 0)
                }
            };
            if status != request::VIRTIO_BLK_S_OK {
                self.stats.failed += 1;
            }
            let len = match status_at {
                Some(addr) => match request::write_status(mem, addr, status) {
                    Ok(()) => written.saturating_add(1),
                    Err(e) => {
                        health.report(
                            ErrorKind::Request,
                            format_args!("request {head}: status byte: {e}"),
                        );
                        0
                    }
                },
                None => 0,
            };
            if !add_used(queue, mem, head, len, &mut out, health) {
                break;
            }
        }
        self.chain = chain;
        out
    }

    /// Runs a parsed request; returns the status and the bytes written to guest memory.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &Chain,
        req: &Request,
        health: &DeviceHealth,
    ) -> (u8, u32) {
        let id = self.device_id();
        match request::execute(mem, &mut self.file, chain, req, &self.params, id) {
            Ok(done) => {
                self.stats.read_bytes += done.read_bytes;
                self.stats.write_bytes += done.write_bytes;
                self.stats.flushes += u64::from(done.flushed);
                (request::VIRTIO_BLK_S_OK, done.to_guest)
            }
            Err(RequestError::Io(e)) => {
                health.report(ErrorKind::Backend, format_args!("block I/O failed: {e}"));
                (request::VIRTIO_BLK_S_IOERR, 0)
            }
            Err(e) => (e.status(), 0),
        }
    }

    /// Appends the device's snapshot state: id, capacity, read-only flag, limiter buckets.
    pub fn encode_state(&self, w: &mut Writer) {
        w.bytes(self.params.id.as_bytes());
        w.u64(self.nsectors);
        w.u8(u8::from(self.params.read_only));
        self.limiter.encode(w);
    }

    /// Opens the drive from `params` and applies the state [`Block::encode_state`] saved
    /// (the limiter's budgets). The id and read-only flag must match the configuration; a
    /// capacity change is only logged (the guest keeps the size it saw).
    pub fn restore(params: BlockParams, r: &mut Reader<'_>) -> Result<Block, RestoreError> {
        let invalid = |detail: String| DecodeError::Invalid {
            what: "block device state",
            detail,
        };
        let id = r.bytes("drive id")?;
        let nsectors = r.u64("drive capacity")?;
        let read_only = r.u8("drive read-only flag")? != 0;
        if id != params.id.as_bytes() || read_only != params.read_only {
            return Err(RestoreError::State(invalid(format!(
                "saved drive {:?} (read-only {read_only}) does not match the configured {:?} \
                 (read-only {})",
                String::from_utf8_lossy(id),
                params.id,
                params.read_only
            ))));
        }
        let limiter = RateLimiter::decode(r, params.clock.clone())?;
        let mut block = Block::new(params).map_err(|e| RestoreError::Backend(e.to_string()))?;
        if block.nsectors != nsectors {
            tracing::warn!(
                drive = %block.params.id,
                saved = nsectors,
                now = block.nsectors,
                "disk size changed since the snapshot"
            );
        }
        block.limiter = limiter;
        Ok(block)
    }
}
