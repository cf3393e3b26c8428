//! Std framing: a buffered frame reader, frame encoding into a `Vec`, and deadline-bound socket I/O.
//!
//! Owns reading whole frames from a byte stream ([`FrameReader`]: partial reads, several frames per
//! read, oversize lengths rejected from the first four bytes before any allocation) and the
//! per-operation deadline ([`DeadlineIo`]) the client uses so a call's total time is bounded, not
//! each syscall's. It does not decode bodies or know requests from replies.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::error::{EncodeError, FrameError};
use crate::frame::frame_len;
use crate::limits::{LENGTH_PREFIX_LEN, MAX_FRAME_LEN};

/// Receive buffer a reader starts with (and returns to after a large frame).
const INITIAL_CAPACITY: usize = 8 * 1024;

/// A buffer larger than this is released once it holds no bytes.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Why [`FrameReader::read_frame`] returned no frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The peer closed the stream; `buffered` bytes of an unfinished frame were pending.
    #[error("connection closed by peer ({buffered} bytes of an unfinished frame pending)")]
    Closed {
        /// Bytes of a partial frame left over (0: closed cleanly between frames).
        buffered: usize,
    },
    /// Reading failed (including a read timeout, as `WouldBlock` or `TimedOut`).
    #[error("reading a frame: {0}")]
    Io(io::Error),
    /// The length prefix is invalid or too large; the stream is out of sync.
    #[error("bad frame from peer: {0}")]
    Frame(FrameError),
}

/// Reads whole frames from a byte stream through an internal buffer.
///
/// Errors leave the buffered bytes in place, so after `Interrupted` or a timeout the next call
/// continues the same frame (the client never does: it drops a connection that timed out).
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame_len: usize,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buffered())
            .field("capacity", &self.buf.len())
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

impl FrameReader {
    /// A reader accepting frames up to `max_frame_len` bytes (clamped to `MAX_FRAME_LEN`).
    pub fn new(max_frame_len: usize) -> Self {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame_len: max_frame_len.min(MAX_FRAME_LEN),
        }
    }

    /// The largest frame accepted.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Size of the internal buffer (bounded by the largest frame read recently).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Frees the buffer if it holds no bytes (an idle connection then costs no buffer; the
    /// next read allocates one again).
    pub fn release_idle(&mut self) {
        if self.start == self.end {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Adds bytes that were read off the stream by someone else (e.g. after a handshake line).
    pub fn prime(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(bytes);
        self.end = self.buf.len();
    }

    /// Takes the bytes received but not yet returned as frames, leaving the reader empty (for
    /// a connection that stops carrying frames, e.g. after TcpConnected).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let rest = self
            .buf
            .get(self.start..self.end)
            .unwrap_or_default()
            .to_vec();
        self.start = 0;
        self.end = 0;
        rest
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads until one whole frame is buffered and returns it (length prefix included).
    ///
    /// Reads as much as the stream offers, so following frames may already be buffered. A length
    /// prefix beyond [`max_frame_len`](Self::max_frame_len) fails at once: nothing is allocated
    /// for it and its body is never read.
    pub fn read_frame<R: Read + ?Sized>(&mut self, src: &mut R) -> Result<&[u8], ReadFrameError> {
        loop {
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            let want =
                match frame_len(pending, self.max_frame_len).map_err(ReadFrameError::Frame)? {
                    Some(len) if pending.len() >= len => {
                        let range = self.start..self.start + len;
                        self.start += len;
                        if self.start == self.end {
                            self.start = 0;
                            self.end = 0;
                        }
                        return Ok(self.buf.get(range).unwrap_or_default());
                    }
                    Some(len) => len,
                    None => LENGTH_PREFIX_LEN,
                };
            self.make_room(want);
            let spare = self.buf.get_mut(self.end..).unwrap_or_default();
            match src.read(spare) {
                Ok(0) => {
                    return Err(ReadFrameError::Closed {
                        buffered: self.buffered(),
                    });
                }
                Ok(n) => self.end += n.min(spare.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadFrameError::Io(e)),
            }
        }
    }

    /// Ensures the buffer can hold a frame of `want` bytes starting at `start`.
    fn make_room(&mut self, want: usize) {
        if self.start == self.end && self.buf.len() > SHRINK_ABOVE {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
        if self.start + want > self.buf.len() || self.end == self.buf.len() {
            self.compact();
        }
        let target = want.max(INITIAL_CAPACITY.min(self.max_frame_len));
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
    }
}

/// Encodes a frame into `out`, replacing its contents and reusing its allocation.
///
/// Runs `encode` once on an empty buffer to learn the size (a counting pass that copies nothing),
/// then once for real.
pub fn encode_into_vec(
    out: &mut Vec<u8>,
    encode: impl Fn(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    out.clear();
    let needed = match encode(&mut []) {
        Ok(n) => n,
        Err(EncodeError::BufferTooSmall { needed, .. }) => needed,
        Err(e) => return Err(e),
    };
    out.resize(needed, 0);
    let n = encode(out)?;
    out.truncate(n);
    Ok(())
}

/// A Unix stream whose reads and writes all end by one deadline.
///
/// Before each syscall the socket's timeout is set to the time left, so a call made of several
/// reads still ends by its deadline. Running out of time yields `io::ErrorKind::TimedOut`.
#[derive(Debug)]
pub struct DeadlineIo<'s> {
    stream: &'s UnixStream,
    deadline: Instant,
}

impl<'s> DeadlineIo<'s> {
    /// I/O on `stream` that must finish by `deadline`.
    pub fn new(stream: &'s UnixStream, deadline: Instant) -> Self {
        DeadlineIo { stream, deadline }
    }

    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

fn timed_out(e: io::Error) -> io::Error {
    // SO_RCVTIMEO/SO_SNDTIMEO expiry surfaces as EAGAIN.
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
    } else {
        e
    }
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.remaining()?))?;
        let mut stream = self.stream;
        stream.read(buf).map_err(timed_out)
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        let mut stream = self.stream;
        stream.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ping, Request};

    /// A reader that hands out at most `chunk` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn stream_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut stream = Vec::new();
        let mut frame = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let req = Request::Ping(Ping { payload: p });
            encode_into_vec(&mut frame, |out| req.encode(i as u64, out)).unwrap();
            stream.extend_from_slice(&frame);
        }
        stream
    }

    #[test]
    fn partial_reads_and_many_frames_per_read() {
        let big = vec![7u8; 100_000];
        let stream = stream_of(&[b"a", &big, b"", b"tail"]);
        for chunk in [1, 3, 17, 4096, usize::MAX] {
            let mut src = Trickle {
                data: &stream,
                chunk,
            };
            let mut reader = FrameReader::new(MAX_FRAME_LEN);
            for i in 0..4u64 {
                let frame = reader.read_frame(&mut src).unwrap();
                let (h, _) = Request::decode(frame).unwrap();
                assert_eq!(h.request_id, i);
            }
            assert!(matches!(
                reader.read_frame(&mut src),
                Err(ReadFrameError::Closed { buffered: 0 })
            ));
        }
    }

    #[test]
    fn oversize_length_is_rejected_before_allocating() {
        let mut src: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3];
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(ReadFrameError::Frame(FrameError::LengthTooLarge { .. }))
        ));
        assert!(reader.capacity() <= INITIAL_CAPACITY);
    }

    #[test]
    fn close_mid_frame_reports_pending_bytes() {
        let stream = stream_of(&[b"hello"]);
        let mut src: &[u8] = &stream[..stream.len() - 2];
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(ReadFrameError::Closed { buffered }) if buffered == stream.len() - 2
        ));
    }

    #[test]
    fn primed_bytes_come_first() {
        let stream = stream_of(&[b"x", b"y"]);
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        reader.prime(&stream[..5]);
        let mut src: &[u8] = &stream[5..];
        assert_eq!(
            Request::decode(reader.read_frame(&mut src).unwrap())
                .unwrap()
                .0
                .request_id,
            0
        );
        assert_eq!(
            Request::decode(reader.read_frame(&mut src).unwrap())
                .unwrap()
                .0
                .request_id,
            1
        );
    }

    #[test]
    fn bytes_after_a_frame_can_be_taken() {
        let mut stream = stream_of(&[b"x"]);
        stream.extend_from_slice(b"raw");
        let mut src: &[u8] = &stream;
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        reader.read_frame(&mut src).unwrap();
        assert_eq!(reader.take_buffered(), b"raw");
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn buffer_shrinks_after_a_large_frame() {
        let big = vec![1u8; 500_000];
        let stream = stream_of(&[&big, b"small"]);
        let mut src: &[u8] = &stream;
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        reader.read_frame(&mut src).unwrap();
        assert!(reader.capacity() >= 500_000);
        reader.read_frame(&mut src).unwrap();
        assert!(reader.capacity() <= INITIAL_CAPACITY);
    }

    #[test]
    fn deadline_io_times_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut io = DeadlineIo::new(&a, Instant::now() + Duration::from_millis(30));
        let started = Instant::now();
        let err = io.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
