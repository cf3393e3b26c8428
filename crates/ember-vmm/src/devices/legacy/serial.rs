//! COM1: a 16550A UART (vm-superio) whose output goes to stdout, a file or nowhere, and whose
//! interrupt is GSI 4 of the irqchip, pulsed with `KVM_IRQ_LINE`. Its registers are part of the snapshot.
//!
//! **The console log's size limit.** A guest decides how much it prints, so output going to a
//! regular file (`--serial-out FILE`, or a stdout redirected to one, as ember's runtime does)
//! is bounded by [`SerialConfig::limit_bytes`]: once the file passes the limit it is cut to a
//! line saying so followed by its last [`KEPT_TAIL`] bytes, and output goes on after them. The
//! file holds at most about the limit, and its end — what a crash report wants — is always the
//! guest's latest output. Pipes and terminals are not limited (their reader decides). The
//! serial device runs on vCPU threads, which is why their seccomp list has `ftruncate`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_superio::Serial;
use vm_superio::serial::{NoEvents, SerialState};

use crate::devices::IrqLine;
use crate::devices::bus::BusDevice;
use crate::snapshot::codec::{DecodeError, Reader, Writer};
use crate::timing::now_ns;

/// COM1's port base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_GSI: u32 = 4;

/// Where serial output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout (Firecracker's behaviour).
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    Sink,
}

/// Where serial output goes, and how large a console log file may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// The destination.
    pub output: SerialOutput,
    /// Cut a regular-file destination once it passes this many bytes (see the module docs);
    /// `None`: never.
    pub limit_bytes: Option<u64>,
}

/// Bytes of the latest output kept when a console log is cut.
pub const KEPT_TAIL: u64 = 4096;

/// Where the bytes go.
enum SinkKind {
    Stdout(io::Stdout),
    File(File),
    Discard,
}

/// A size-limited regular file: the bytes in it, the limit, and the last [`KEPT_TAIL`] bytes
/// written (kept here: the file may be write-only, as a redirected stdout is).
#[derive(Debug)]
struct Limit {
    size: u64,
    max: u64,
    tail: VecDeque<u8>,
}

impl Limit {
    fn wrote(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        let room = KEPT_TAIL as usize;
        let bytes = &bytes[bytes.len().saturating_sub(room)..];
        let over = (self.tail.len() + bytes.len()).saturating_sub(room);
        self.tail.drain(..over);
        self.tail.extend(bytes);
    }
}

/// The writer behind the UART; records when the first complete line left the guest (for
/// timings: boot -> banner, restore -> first output).
pub struct SerialSink {
    kind: SinkKind,
    limit: Option<Limit>,
    first_line_ns: Arc<AtomicU64>,
}

impl SerialSink {
    /// Opens the destination; `first_line_ns` receives CLOCK_MONOTONIC of the first `\n`.
    pub fn open(config: &SerialConfig, first_line_ns: Arc<AtomicU64>) -> io::Result<SerialSink> {
        let mut kind = match &config.output {
            SerialOutput::Stdout => SinkKind::Stdout(io::stdout()),
            SerialOutput::File(p) => {
                SinkKind::File(OpenOptions::new().create(true).append(true).open(p)?)
            }
            SerialOutput::Sink => SinkKind::Discard,
        };
        let mut limit = None;
        if let Some(max) = config.limit_bytes {
            // A stdout that is a regular file is written through a duplicate of it (same
            // open file, same offset), so that it can be cut like a `--serial-out` file.
            if let SinkKind::Stdout(out) = &kind {
                let dup = File::from(out.as_fd().try_clone_to_owned()?);
                if dup.metadata()?.is_file() {
                    kind = SinkKind::File(dup);
                }
            }
            if let SinkKind::File(f) = &kind {
                let meta = f.metadata()?;
                if meta.is_file() {
                    limit = Some(Limit {
                        size: meta.len(),
                        max,
                        tail: VecDeque::with_capacity(KEPT_TAIL as usize),
                    });
                }
            }
        }
        Ok(SerialSink {
            kind,
            limit,
            first_line_ns,
        })
    }

    /// Cuts the file to a notice and its last [`KEPT_TAIL`] bytes (see the module docs).
    fn cut(file: &mut File, limit: &mut Limit) -> io::Result<()> {
        // At most half the limit, so that a small limit is not passed again at once.
        let keep = (limit.tail.len() as u64).min(limit.max / 2);
        file.set_len(0)?;
        // For a file not opened to append (a redirected stdout); harmless for one that is.
        file.seek(SeekFrom::Start(0))?;
        let notice = format!(
            "[ember-vmm: the console log passed its {} byte limit; all but its last {keep} bytes were dropped]\n",
            limit.max
        );
        file.write_all(notice.as_bytes())?;
        limit.tail.drain(..limit.tail.len() - keep as usize);
        let (a, b) = limit.tail.as_slices();
        file.write_all(a)?;
        file.write_all(b)?;
        limit.size = (notice.len() as u64) + keep;
        Ok(())
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Stamped before the bytes leave, so whoever sees the line also sees the stamp.
        if buf.contains(&b'\n') && self.first_line_ns.load(Ordering::Relaxed) == 0 {
            self.first_line_ns.store(now_ns(), Ordering::Relaxed);
        }
        let mut cut_failed = false;
        let n = match &mut self.kind {
            SinkKind::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(buf)?;
                lock.flush()?;
                buf.len()
            }
            SinkKind::File(f) => {
                let n = f.write(buf)?;
                if let Some(limit) = &mut self.limit {
                    limit.wrote(&buf[..n]);
                    if limit.size > limit.max
                        && let Err(e) = Self::cut(f, limit)
                    {
                        tracing::warn!(
                            error = %e,
                            "cannot cut the console log to its limit; dropping further output"
                        );
                        cut_failed = true;
                    }
                }
                n
            }
            SinkKind::Discard => buf.len(),
        };
        if cut_failed {
            // Bounded either way: what the guest prints from now on is not kept.
            self.kind = SinkKind::Discard;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.kind {
            SinkKind::Stdout(s) => s.flush(),
            SinkKind::File(f) => f.flush(),
            SinkKind::Discard => Ok(()),
        }
    }
}

/// The UART on the port bus.
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, SerialSink>,
}

impl SerialDevice {
    /// A UART in reset state.
    pub fn new(irq: IrqLine, out: SerialSink) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }

    /// A UART with restored registers.
    pub fn from_state(
        state: &SerialState,
        irq: IrqLine,
        out: SerialSink,
    ) -> io::Result<SerialDevice> {
        let uart = Serial::from_state(state, irq, NoEvents, out)
            .map_err(|e| io::Error::other(format!("restoring serial state: {e:?}")))?;
        Ok(SerialDevice { uart })
    }

    /// Current registers.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Queues console input for the guest (raising the receive interrupt if enabled); returns
    /// how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = ?e, "serial input dropped");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first()
            && let Err(e) = self.uart.write(offset as u8, b)
        {
            tracing::debug!(error = ?e, "serial write failed");
        }
    }
}

/// Appends a UART state.
pub fn encode_state(s: &SerialState, w: &mut Writer) {
    for b in [
        s.baud_divisor_low,
        s.baud_divisor_high,
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.line_status,
        s.modem_control,
        s.modem_status,
        s.scratch,
    ] {
        w.u8(b);
    }
    w.bytes(&s.in_buffer);
}

/// Decodes a UART state.
pub fn decode_state(r: &mut Reader<'_>) -> Result<SerialState, DecodeError> {
    let mut regs = [0u8; 9];
    for b in regs.iter_mut() {
        *b = r.u8("serial registers")?;
    }
    let in_buffer = r.bytes("serial input buffer")?.to_vec();
    if in_buffer.len() > 64 {
        return Err(DecodeError::Invalid {
            what: "serial input buffer",
            detail: "longer than the FIFO".into(),
        });
    }
    Ok(SerialState {
        baud_divisor_low: regs[0],
        baud_divisor_high: regs[1],
        interrupt_enable: regs[2],
        interrupt_identification: regs[3],
        line_control: regs[4],
        line_status: regs[5],
        modem_control: regs[6],
        modem_status: regs[7],
        scratch: regs[8],
        in_buffer,
    })
}

/// A port range that absorbs everything (COM2-4: no UART there).
pub struct Absent;

impl BusDevice for Absent {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_limit_keeps_the_last_bytes_written_however_they_come() {
        let mut limit = Limit {
            size: 10,
            max: 100,
            tail: VecDeque::new(),
        };
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in bytes[..5_000].chunks(7) {
            limit.wrote(chunk);
        }
        limit.wrote(&bytes[5_000..]);
        assert_eq!(limit.size, 10 + 10_000);
        let kept: Vec<u8> = limit.tail.iter().copied().collect();
        assert_eq!(kept, bytes[bytes.len() - KEPT_TAIL as usize..]);
        limit.wrote(b"x");
        assert_eq!(limit.tail.len(), KEPT_TAIL as usize);
        assert_eq!(limit.tail.back(), Some(&b'x'));
    }

    #[test]
    fn a_cut_file_holds_the_notice_then_the_tail_and_output_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let config = SerialConfig {
            output: SerialOutput::File(path.clone()),
            limit_bytes: Some(8192),
        };
        let mut sink = SerialSink::open(&config, Arc::new(AtomicU64::new(0))).unwrap();
        for i in 0..2_000 {
            sink.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 8192, "{} bytes", text.len());
        assert!(text.starts_with("[ember-vmm: the console log passed its 8192 byte limit"));
        assert!(text.ends_with("line 1999\n"), "{text}");
        // The smallest limit the VMM accepts: a cut keeps half of it, so it is not passed
        // again at once.
        let small = dir.path().join("small.log");
        let config = SerialConfig {
            output: SerialOutput::File(small.clone()),
            limit_bytes: Some(8192),
        };
        let mut sink = SerialSink::open(&config, Arc::new(AtomicU64::new(0))).unwrap();
        sink.write_all(&[b'a'; 8193]).unwrap();
        let len = std::fs::metadata(&small).unwrap().len();
        assert!(len < 4096 + 200, "{len} bytes after one cut");
        // A pipe-like destination (none here: discarded output) has no limit to apply.
        let discard = SerialConfig {
            output: SerialOutput::Sink,
            limit_bytes: Some(1),
        };
        let sink = SerialSink::open(&discard, Arc::new(AtomicU64::new(0))).unwrap();
        assert!(sink.limit.is_none());
    }
}
