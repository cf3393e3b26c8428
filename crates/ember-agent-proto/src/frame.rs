//! Frame layer: the length prefix and the fixed 16-byte header.
//!
//! Owns how a frame starts (`u32 LE length | u8 version | u8 kind | u16 LE flags | u64 LE request
//! id`), how a receiver learns a frame's size from its first four bytes (rejecting oversize
//! lengths before anything is read or allocated), and how a body is wrapped into a frame. The
//! header layout is frozen for every protocol version, so a peer can always skip or answer a frame
//! it does not understand. It knows nothing about message bodies.

use crate::codec::Writer;
use crate::error::{DecodeError, EncodeError, FieldError, FrameError};
use crate::kind::Kind;
use crate::limits::{HEADER_LEN, LENGTH_PREFIX_LEN, MAX_FRAME_LEN};

/// The fixed fields of a frame header (the length prefix is implied by the frame's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version the body is encoded in.
    pub version: u8,
    /// Raw message kind (see [`Kind`]); kept raw so unknown kinds can be answered.
    pub kind: u8,
    /// Request id chosen by the host; a reply carries its request's id.
    pub request_id: u64,
}

impl Header {
    /// The kind, if this version knows it.
    pub const fn known_kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }
}

/// The size of the frame starting at `buf[0]`, once its length prefix is in `buf`.
///
/// Returns `Ok(None)` while fewer than four bytes are buffered. Rejects a prefix smaller than the
/// header or a frame larger than `max_frame_len` (clamped to [`MAX_FRAME_LEN`]) without looking
/// further, so a reader never allocates or waits for an oversize frame.
pub fn frame_len(buf: &[u8], max_frame_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    let mut bytes = [0u8; LENGTH_PREFIX_LEN];
    bytes.copy_from_slice(prefix);
    let len = u32::from_le_bytes(bytes);
    let max = max_frame_len.min(MAX_FRAME_LEN);
    let frame_len = u64::from(len) + LENGTH_PREFIX_LEN as u64;
    if frame_len < HEADER_LEN as u64 {
        return Err(FrameError::LengthTooSmall { len });
    }
    if frame_len > max as u64 {
        return Err(FrameError::LengthTooLarge { frame_len, max });
    }
    // Bounded by MAX_FRAME_LEN above, so it fits in usize everywhere.
    Ok(Some(frame_len as usize))
}

/// Splits exactly one frame into its header and body.
///
/// `frame` must hold one whole frame and nothing else (as handed out by
/// [`FrameBuffer`](crate::FrameBuffer) or a `FrameReader`). Version and kind are not checked here.
pub fn split_frame(frame: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let available = frame.len();
    let total = match frame_len(frame, MAX_FRAME_LEN)? {
        Some(total) => total,
        None => {
            return Err(DecodeError::Incomplete {
                needed: HEADER_LEN,
                available,
            });
        }
    };
    if available < total {
        return Err(DecodeError::Incomplete {
            needed: total,
            available,
        });
    }
    if available > total {
        return Err(FrameError::LengthMismatch {
            frame_len: total,
            buffer_len: available,
        }
        .into());
    }
    let (head, body) = frame
        .split_at_checked(HEADER_LEN)
        .ok_or(DecodeError::Incomplete {
            needed: HEADER_LEN,
            available,
        })?;
    let mut fixed = [0u8; HEADER_LEN];
    fixed.copy_from_slice(head);
    let flags = u16::from_le_bytes([fixed[6], fixed[7]]);
    if flags != 0 {
        return Err(FrameError::ReservedFlags { flags }.into());
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&fixed[8..16]);
    let header = Header {
        version: fixed[4],
        kind: fixed[5],
        request_id: u64::from_le_bytes(id),
    };
    Ok((header, body))
}

/// Encodes a frame whose body `write_body` produces, enforcing `max_frame_len`.
pub(crate) fn encode_with(
    header: Header,
    kind: Kind,
    out: &mut [u8],
    max_frame_len: usize,
    write_body: impl FnOnce(&mut Writer<'_>) -> Result<(), FieldError>,
) -> Result<usize, EncodeError> {
    let available = out.len();
    let mut w = Writer::new(out, 0, kind);
    w.u32(0); // patched below
    w.u8(header.version);
    w.u8(header.kind);
    w.u16(0);
    w.u64(header.request_id);
    write_body(&mut w)?;
    let needed = w.pos();
    let max = max_frame_len.min(MAX_FRAME_LEN);
    if needed > max {
        return Err(EncodeError::FrameTooLarge { needed, max });
    }
    let len = u32::try_from(needed - LENGTH_PREFIX_LEN)
        .map_err(|_| EncodeError::FrameTooLarge { needed, max })?;
    match out.get_mut(..LENGTH_PREFIX_LEN) {
        Some(prefix) if needed <= available => prefix.copy_from_slice(&len.to_le_bytes()),
        _ => return Err(EncodeError::BufferTooSmall { needed, available }),
    }
    Ok(needed)
}

/// Encodes a frame with an arbitrary header and an opaque, unvalidated body.
///
/// For extensions and tests (for example a request kind this version does not define). Enforces
/// only the frame-size limit; the kind and version are written as given.
pub fn encode_raw_frame(header: Header, body: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    // The kind is only used for error context; a raw body cannot produce field errors.
    encode_with(header, Kind::Unsupported, out, MAX_FRAME_LEN, |w| {
        w.raw(body);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_needs_the_prefix_and_checks_bounds() {
        assert_eq!(frame_len(&[12, 0, 0], 4096), Ok(None));
        assert_eq!(frame_len(&[12, 0, 0, 0], 4096), Ok(Some(16)));
        assert_eq!(
            frame_len(&[11, 0, 0, 0], 4096),
            Err(FrameError::LengthTooSmall { len: 11 })
        );
        assert_eq!(
            frame_len(&[0xff, 0xff, 0xff, 0xff], 4096),
            Err(FrameError::LengthTooLarge {
                frame_len: u64::from(u32::MAX) + 4,
                max: 4096
            })
        );
        // The limit is clamped to the protocol's absolute maximum.
        let over = (MAX_FRAME_LEN as u32 - 3).to_le_bytes();
        assert!(frame_len(&over, usize::MAX).is_err());
    }

    #[test]
    fn raw_frame_round_trips_through_split() {
        let header = Header {
            version: 7,
            kind: 0x42,
            request_id: 0x1122_3344_5566_7788,
        };
        let mut out = [0u8; 64];
        let n = encode_raw_frame(header, b"body", &mut out).unwrap();
        assert_eq!(n, HEADER_LEN + 4);
        assert_eq!(&out[..4], &16u32.to_le_bytes());
        let (h, body) = split_frame(&out[..n]).unwrap();
        assert_eq!(h, header);
        assert_eq!(body, b"body");
        assert!(matches!(
            split_frame(&out[..n + 1]),
            Err(DecodeError::Frame(FrameError::LengthMismatch { .. }))
        ));
        assert!(matches!(
            split_frame(&out[..n - 1]),
            Err(DecodeError::Incomplete { .. })
        ));
    }

    #[test]
    fn reserved_flags_are_rejected() {
        let mut out = [0u8; 16];
        let header = Header {
            version: 1,
            kind: 2,
            request_id: 1,
        };
        encode_raw_frame(header, b"", &mut out).unwrap();
        out[7] = 0x80;
        assert_eq!(
            split_frame(&out),
            Err(DecodeError::Frame(FrameError::ReservedFlags {
                flags: 0x8000
            }))
        );
    }

    #[test]
    fn small_buffer_reports_the_size_needed() {
        let mut out = [0u8; 10];
        let header = Header {
            version: 1,
            kind: 2,
            request_id: 1,
        };
        assert_eq!(
            encode_raw_frame(header, b"abc", &mut out),
            Err(EncodeError::BufferTooSmall {
                needed: 19,
                available: 10
            })
        );
    }
}
