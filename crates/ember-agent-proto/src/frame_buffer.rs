//! [`FrameBuffer`]: reassembles frames from a byte stream inside a caller's buffer (no_std).
//!
//! Owns the receive side of framing for agents without an allocator: bytes arrive in any chunking
//! (a vsock packet may hold half a frame or three frames), whole frames come out as slices of the
//! same buffer, and an oversize length prefix is rejected as soon as its four bytes are in. It does
//! not decode bodies (see [`Session`](crate::Session)) and does no I/O.

use crate::error::FrameError;
use crate::frame::frame_len;
use crate::limits::MAX_FRAME_LEN;

/// Reassembles frames from stream bytes inside a borrowed buffer.
///
/// Feed bytes with [`push`](Self::push) (or write into [`spare`](Self::spare) and
/// [`commit`](Self::commit)), then take frames with [`next_frame`](Self::next_frame) until it
/// returns `Ok(None)`. After an error the stream is out of sync: close the connection and
/// [`clear`](Self::clear) the buffer.
#[derive(Debug)]
pub struct FrameBuffer<'b> {
    buf: &'b mut [u8],
    start: usize,
    end: usize,
    max_frame_len: usize,
}

impl<'b> FrameBuffer<'b> {
    /// A reassembler over `buf`; the largest frame it accepts is `buf.len()` (at most `MAX_FRAME_LEN`).
    pub fn new(buf: &'b mut [u8]) -> Self {
        let max_frame_len = buf.len().min(MAX_FRAME_LEN);
        FrameBuffer {
            buf,
            start: 0,
            end: 0,
            max_frame_len,
        }
    }

    /// The largest frame accepted (what the agent announces as its `max_frame_len`).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Bytes received but not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Forgets everything buffered (for a new connection).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Hands out the bytes received after the last frame taken and forgets them, for a
    /// connection that stops carrying frames (after TcpConnected they belong to the pipe).
    pub fn take_rest(&mut self) -> &[u8] {
        let range = self.start..self.end;
        self.start = 0;
        self.end = 0;
        self.buf.get(range).unwrap_or_default()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Free space to receive into; follow with [`commit`](Self::commit).
    pub fn spare(&mut self) -> &mut [u8] {
        self.compact();
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// Marks `n` bytes written into [`spare`](Self::spare) as received (clamped to its size).
    pub fn commit(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Copies as much of `bytes` as fits; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = bytes.len().min(spare.len());
        if let (Some(dst), Some(src)) = (spare.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.commit(n);
        n
    }

    /// The next whole frame, if one is buffered.
    ///
    /// Fails as soon as a length prefix announces a frame smaller than the header or larger than
    /// [`max_frame_len`](Self::max_frame_len).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = self.buf.get(self.start..self.end).unwrap_or_default();
        let Some(len) = frame_len(pending, self.max_frame_len)? else {
            return Ok(None);
        };
        if pending.len() < len {
            return Ok(None);
        }
        let range = self.start..self.start + len;
        self.start += len;
        if self.start == self.end {
            // Nothing left: the next receive starts at the front without a copy. The frame's bytes
            // stay in place until the caller's borrow of them ends.
            self.start = 0;
            self.end = 0;
        }
        Ok(self.buf.get(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ping, Request};

    fn frames(payloads: &[&[u8]]) -> ([u8; 512], usize) {
        let mut out = [0u8; 512];
        let mut n = 0;
        for (i, p) in payloads.iter().enumerate() {
            n += Request::Ping(Ping { payload: p })
                .encode(i as u64, &mut out[n..])
                .unwrap();
        }
        (out, n)
    }

    #[test]
    fn reassembles_across_any_chunking() {
        let (stream, len) = frames(&[b"a", b"", b"hello world"]);
        for chunk in 1..=len {
            let mut storage = [0u8; 64];
            let mut fb = FrameBuffer::new(&mut storage);
            let mut seen = 0;
            for piece in stream[..len].chunks(chunk) {
                let mut piece = piece;
                while !piece.is_empty() {
                    let taken = fb.push(piece);
                    piece = &piece[taken..];
                    while let Some(frame) = fb.next_frame().unwrap() {
                        let (h, _) = Request::decode(frame).unwrap();
                        assert_eq!(h.request_id, seen);
                        seen += 1;
                    }
                }
            }
            assert_eq!(seen, 3);
            assert_eq!(fb.buffered(), 0);
        }
    }

    #[test]
    fn the_rest_after_a_frame_is_handed_out_once() {
        let (stream, len) = frames(&[b"a"]);
        let mut storage = [0u8; 64];
        let mut fb = FrameBuffer::new(&mut storage);
        fb.push(&stream[..len]);
        fb.push(b"raw bytes");
        assert!(fb.next_frame().unwrap().is_some());
        assert_eq!(fb.take_rest(), b"raw bytes");
        assert_eq!(fb.buffered(), 0);
        assert_eq!(fb.take_rest(), b"");
    }

    #[test]
    fn oversize_prefix_is_rejected_at_once() {
        let mut storage = [0u8; 64];
        let mut fb = FrameBuffer::new(&mut storage);
        fb.push(&1000u32.to_le_bytes());
        assert!(matches!(
            fb.next_frame(),
            Err(FrameError::LengthTooLarge { max: 64, .. })
        ));
    }

    #[test]
    fn full_buffer_stops_taking_bytes() {
        let mut storage = [0u8; 20];
        let mut fb = FrameBuffer::new(&mut storage);
        assert_eq!(fb.push(&[0u8; 30]), 20);
        assert_eq!(fb.spare().len(), 0);
    }
}
