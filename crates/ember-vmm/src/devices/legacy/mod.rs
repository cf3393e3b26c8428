//! The legacy PC devices a microVM needs: COM1 ([`serial`]), the i8042 ([`i8042`]) for resets
//! and Ctrl+Alt+Del, the CMOS clock ([`rtc`], stateless: it reads the host's time) and
//! absorbing ranges for the other COM ports. Port 0x61 (speaker) and
//! the PIT/PIC ports are handled in the kernel; anything else reads as all-ones.

pub mod i8042;
pub mod rtc;
pub mod serial;

use std::sync::{Arc, Mutex};

use vm_superio::serial::SerialState;

use self::i8042::{I8042, I8042_BASE, I8042_LEN, I8042State};
use self::rtc::{RTC_BASE, RTC_LEN, Rtc};
use self::serial::{Absent, COM1_BASE, SerialDevice, SerialSink};
use crate::arch::x86_64::acpi::PortDevice;
use crate::devices::IrqLine;
use crate::devices::bus::{Bus, BusOverlap};
use crate::exit::ExitSignal;
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// The legacy devices as the ACPI DSDT describes them (`PNP0501` COM1, `PNP0B00` RTC), so
/// a kernel on a hardware-reduced ACPI platform maps COM1's interrupt. The RTC is described
/// without one (it raises none; Linux's `rtc_cmos` then runs without alarms, and ISA IRQ 8
/// stays free for a virtio device). The i8042 is not
/// described: the FADT says there is none, Linux skips probing it, and `reboot=k` still
/// resets through it.
pub fn acpi_devices() -> [PortDevice; 2] {
    [
        PortDevice {
            name: "COM1",
            pnp_id: "PNP0501",
            port: COM1_BASE as u16,
            len: 8,
            gsi: Some(serial::COM1_GSI),
        },
        PortDevice {
            name: "RTC_",
            pnp_id: "PNP0B00",
            port: RTC_BASE as u16,
            len: RTC_LEN as u8,
            gsi: None,
        },
    ]
}

/// Saved state of the legacy devices.
#[derive(Debug, Clone)]
pub struct LegacyState {
    /// COM1 registers.
    pub serial: SerialState,
    /// i8042 registers and buffer.
    pub i8042: I8042State,
}

impl LegacyState {
    /// Appends the encoding.
    pub fn encode(&self, w: &mut Writer) {
        serial::encode_state(&self.serial, w);
        i8042::encode_state(&self.i8042, w);
    }
    /// Decodes it.
    pub fn decode(r: &mut Reader<'_>) -> Result<LegacyState, DecodeError> {
        Ok(LegacyState {
            serial: serial::decode_state(r)?,
            i8042: i8042::decode_state(r)?,
        })
    }
}

/// The legacy devices of one VM.
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
}

impl LegacyDevices {
    /// Creates the devices (from `state` when restoring) and puts them on `pio`.
    pub fn attach(
        pio: &mut Bus,
        serial_irq: IrqLine,
        kbd_irq: IrqLine,
        out: SerialSink,
        exit: Arc<ExitSignal>,
        state: Option<&LegacyState>,
    ) -> Result<LegacyDevices, LegacyError> {
        let (serial, i8042) = match state {
            Some(s) => (
                SerialDevice::from_state(&s.serial, serial_irq, out)
                    .map_err(LegacyError::Serial)?,
                I8042::from_state(&s.i8042, kbd_irq, exit),
            ),
            None => (
                SerialDevice::new(serial_irq, out),
                I8042::new(kbd_irq, exit),
            ),
        };
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = Arc::new(Mutex::new(i8042));
        pio.insert(COM1_BASE, 8, serial.clone())?;
        pio.insert(I8042_BASE, I8042_LEN, i8042.clone())?;
        pio.insert(RTC_BASE, RTC_LEN, Arc::new(Mutex::new(Rtc::new())))?;
        for base in [0x2f8, 0x3e8, 0x2e8] {
            pio.insert(base, 8, Arc::new(Mutex::new(Absent)))?;
        }
        Ok(LegacyDevices { serial, i8042 })
    }

    /// Current state (VM paused).
    pub fn state(&self) -> LegacyState {
        let serial = match self.serial.lock() {
            Ok(s) => s.state(),
            Err(p) => p.into_inner().state(),
        };
        let i8042 = match self.i8042.lock() {
            Ok(d) => d.state(),
            Err(p) => p.into_inner().state(),
        };
        LegacyState { serial, i8042 }
    }

    /// Feeds console input to COM1; returns the bytes accepted.
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        match self.serial.lock() {
            Ok(mut s) => s.enqueue_input(bytes),
            Err(p) => p.into_inner().enqueue_input(bytes),
        }
    }

    /// Injects Ctrl+Alt+Del; false if the controller's buffer is full.
    pub fn send_ctrl_alt_del(&self) -> bool {
        match self.i8042.lock() {
            Ok(mut d) => d.trigger_ctrl_alt_del(),
            Err(p) => p.into_inner().trigger_ctrl_alt_del(),
        }
    }
}

/// Errors attaching legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// Restoring the UART failed.
    #[error("serial device: {0}")]
    Serial(std::io::Error),
    /// Port ranges collide.
    #[error(transparent)]
    Bus(#[from] BusOverlap),
}
