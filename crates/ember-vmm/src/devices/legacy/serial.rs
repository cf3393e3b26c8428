//! COM1: a 16550A UART (vm-superio) whose output goes to stdout, a file or nowhere, and whose
//! interrupt is GSI 4 of the irqchip, pulsed with `KVM_IRQ_LINE`. Its registers are part of the snapshot.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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

/// Where the bytes go.
enum SinkKind {
    Stdout(io::Stdout),
    File(File),
    Discard,
}

/// The writer behind the UART; records when the first complete line left the guest (for
/// timings: boot -> banner, restore -> first output).
pub struct SerialSink {
    kind: SinkKind,
    first_line_ns: Arc<AtomicU64>,
}

impl SerialSink {
    /// Opens the destination; `first_line_ns` receives CLOCK_MONOTONIC of the first `\n`.
    pub fn open(out: &SerialOutput, first_line_ns: Arc<AtomicU64>) -> io::Result<SerialSink> {
        let kind = match out {
            SerialOutput::Stdout => SinkKind::Stdout(io::stdout()),
            SerialOutput::File(p) => {
                SinkKind::File(OpenOptions::new().create(true).append(true).open(p)?)
            }
            SerialOutput::Sink => SinkKind::Discard,
        };
        Ok(SerialSink {
            kind,
            first_line_ns,
        })
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Stamped before the bytes leave, so whoever sees the line also sees the stamp.
        if buf.contains(&b'\n') && self.first_line_ns.load(Ordering::Relaxed) == 0 {
            self.first_line_ns.store(now_ns(), Ordering::Relaxed);
        }
        let n = match &mut self.kind {
            SinkKind::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(buf)?;
                lock.flush()?;
                buf.len()
            }
            SinkKind::File(f) => f.write(buf)?,
            SinkKind::Discard => buf.len(),
        };
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
