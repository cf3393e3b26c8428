//! One virtio-blk request: parsing a walked chain into a [`Request`] and executing it.
//!
//! Layout (virtio 1.x 5.2.6, any descriptor boundaries): the device-readable bytes are the
//! 16-byte header (`type`, reserved, `sector`) followed by the data of an `OUT`; the
//! device-writable bytes are the data of an `IN` or `GET_ID` followed by the status byte,
//! which is the last byte of the last descriptor.
//!
//! Which failures get which answer:
//! - *fatal* ([`RequestError::is_fatal`]: no correct driver sends it; the device breaks, see
//!   [`crate::devices::virtio::health`]): a malformed chain (loop, index out of range, buffer
//!   outside memory, readable-after-writable, more than 4 GiB), no usable status byte (last
//!   descriptor not device-writable, empty, or outside guest memory), a header shorter than
//!   16 bytes, data in the wrong direction;
//! - a length that is not whole sectors, sectors beyond the capacity, a write to a read-only
//!   drive, a GET_ID buffer too short, or an I/O error: status `IOERR`;
//! - an unknown request type: status `UNSUPP`.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use ember_fc_api::CacheType;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::{BlockParams, SECTOR_SIZE};
use crate::devices::virtio::desc_chain::{Chain, ChainError, ranges, read_stream, write_stream};

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also every malformed request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the request header.
pub const HEADER_LEN: u64 = 16;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The descriptor chain is malformed.
    #[error("malformed chain: {0}")]
    Chain(ChainError),
    /// No device-writable status byte at the end of the chain.
    #[error("no usable status descriptor")]
    NoStatus,
    /// Fewer than 16 device-readable bytes.
    #[error("header is {0} bytes, 16 needed")]
    ShortHeader(u64),
    /// Data buffers of the wrong direction for the request type.
    #[error("{0}")]
    WrongDirection(&'static str),
    /// Data length is not whole sectors.
    #[error("data length {0} is not a multiple of 512")]
    PartialSector(u64),
    /// The request reaches beyond the disk.
    #[error("sectors {sector}+{count} are beyond the capacity of {capacity}")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// OUT on a read-only drive.
    #[error("write to a read-only drive")]
    ReadOnly,
    /// GET_ID with a buffer shorter than 20 bytes.
    #[error("GET_ID buffer of {0} bytes, 20 needed")]
    ShortIdBuffer(u64),
    /// Unknown type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The host file or guest memory failed.
    #[error("I/O: {0}")]
    Io(String),
}

impl RequestError {
    /// True for requests no correct driver sends (see the module docs): the device breaks.
    pub fn is_fatal(&self) -> bool {
        match self {
            RequestError::Chain(e) => e.is_fatal(),
            RequestError::NoStatus
            | RequestError::ShortHeader(_)
            | RequestError::WrongDirection(_) => true,
            _ => false,
        }
    }

    /// The status byte this failure answers.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// Request types served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Flush the host file.
    Flush,
    /// Read the device id.
    GetId,
}

/// A parsed, validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Type.
    pub kind: RequestKind,
    /// First sector (IN/OUT).
    pub sector: u64,
    /// Data bytes moved (IN/OUT), or the ID buffer length (GET_ID).
    pub data_len: u64,
}

/// Where the status byte goes: the last byte of the last descriptor, if that descriptor is
/// device-writable, non-empty and in guest memory.
pub fn status_location(chain: &Chain) -> Option<GuestAddress> {
    let last = chain.descs.last()?;
    (last.writable && last.in_memory && last.len >= 1)
        .then(|| GuestAddress(last.addr.0 + u64::from(last.len) - 1))
}

/// Writes the status byte.
pub fn write_status(
    mem: &GuestMemoryMmap,
    at: GuestAddress,
    status: u8,
) -> Result<(), GuestMemoryError> {
    mem.write_obj(status, at)
}

impl Request {
    /// Validates `chain` as a request to a disk of `capacity` sectors.
    pub fn parse(
        mem: &GuestMemoryMmap,
        chain: &Chain,
        capacity: u64,
        read_only: bool,
    ) -> Result<Request, RequestError> {
        if let Some(e) = chain.error {
            return Err(RequestError::Chain(e));
        }
        if status_location(chain).is_none() {
            return Err(RequestError::NoStatus);
        }
        let readable = chain.readable_len();
        if readable < HEADER_LEN {
            return Err(RequestError::ShortHeader(readable));
        }
        let header = read_header(mem, chain)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        let out_data = readable - HEADER_LEN;
        let in_data = chain.writable_len() - 1;
        let (kind, data_len) = match kind {
            VIRTIO_BLK_T_IN => {
                if out_data != 0 {
                    return Err(RequestError::WrongDirection(
                        "IN request with device-readable data buffers",
                    ));
                }
                (RequestKind::In, in_data)
            }
            VIRTIO_BLK_T_OUT => {
                if in_data != 0 {
                    return Err(RequestError::WrongDirection(
                        "OUT request with device-writable data buffers",
                    ));
                }
                if read_only {
                    return Err(RequestError::ReadOnly);
                }
                (RequestKind::Out, out_data)
            }
            VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, 0),
            VIRTIO_BLK_T_GET_ID => {
                if in_data < u64::from(VIRTIO_BLK_ID_BYTES) {
                    return Err(RequestError::ShortIdBuffer(in_data));
                }
                (RequestKind::GetId, in_data)
            }
            other => return Err(RequestError::Unsupported(other)),
        };
        if matches!(kind, RequestKind::In | RequestKind::Out) {
            if data_len % SECTOR_SIZE != 0 {
                return Err(RequestError::PartialSector(data_len));
            }
            let count = data_len / SECTOR_SIZE;
            if sector.checked_add(count).is_none_or(|end| end > capacity) {
                return Err(RequestError::OutOfRange {
                    sector,
                    count,
                    capacity,
                });
            }
        }
        Ok(Request {
            kind,
            sector,
            data_len,
        })
    }

    /// Bytes charged to the bandwidth bucket (every request also costs one op).
    pub fn cost_bytes(&self) -> u64 {
        match self.kind {
            RequestKind::In | RequestKind::Out => self.data_len,
            RequestKind::Flush | RequestKind::GetId => 0,
        }
    }
}

/// What an executed request did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Done {
    /// Bytes written into guest memory (excluding the status byte).
    pub to_guest: u32,
    /// Bytes read from the file.
    pub read_bytes: u64,
    /// Bytes written to the file.
    pub write_bytes: u64,
    /// A flush reached the file.
    pub flushed: bool,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> RequestError {
    RequestError::Io(format!("{what}: {e}"))
}

/// Executes a request parsed from `chain` against `file`.
pub fn execute(
    mem: &GuestMemoryMmap,
    file: &mut File,
    chain: &Chain,
    req: &Request,
    params: &BlockParams,
    device_id: [u8; VIRTIO_BLK_ID_BYTES as usize],
) -> Result<Done, RequestError> {
    let mut done = Done::default();
    match req.kind {
        RequestKind::In | RequestKind::Out => {
            let offset = req.sector * SECTOR_SIZE;
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io_err("seek", e))?;
            if req.kind == RequestKind::In {
                let rs = ranges(chain.writable(), 0, req.data_len)
                    .ok_or_else(|| io_err("data", "buffers shorter than the request"))?;
                for (addr, n) in rs {
                    mem.read_exact_volatile_from(addr, file, n)
                        .map_err(|e| io_err("reading the disk", e))?;
                }
                done.read_bytes = req.data_len;
                done.to_guest = u32::try_from(req.data_len).unwrap_or(u32::MAX);
            } else {
                let rs = ranges(chain.readable(), HEADER_LEN, req.data_len)
                    .ok_or_else(|| io_err("data", "buffers shorter than the request"))?;
                for (addr, n) in rs {
                    mem.write_all_volatile_to(addr, file, n)
                        .map_err(|e| io_err("writing the disk", e))?;
                }
                done.write_bytes = req.data_len;
            }
        }
        RequestKind::Flush => {
            if params.cache_type == CacheType::Writeback && !params.read_only {
                file.sync_all().map_err(|e| io_err("fsync", e))?;
                done.flushed = true;
            }
        }
        RequestKind::GetId => {
            write_stream(mem, chain.writable(), 0, &device_id)
                .map_err(|e| io_err("writing the id", e))?;
            done.to_guest = VIRTIO_BLK_ID_BYTES;
        }
    }
    Ok(done)
}

/// Reads the 16-byte header of a validated chain.
fn read_header(mem: &GuestMemoryMmap, chain: &Chain) -> Result<[u8; 16], RequestError> {
    let mut h = [0u8; HEADER_LEN as usize];
    read_stream(mem, chain.readable(), 0, &mut h).map_err(|e| io_err("header", e))?;
    Ok(h)
}
