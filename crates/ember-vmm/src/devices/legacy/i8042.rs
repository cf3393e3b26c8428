//! A minimal i8042 keyboard controller: enough for Linux's driver to probe it, for the guest
//! to reset the machine (command 0xfe on port 0x64, or pulsing the reset line through the
//! output port) and for the host to inject Ctrl+Alt+Del (scan codes plus IRQ 1).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::devices::IrqLine;
use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};
use crate::snapshot::codec::{DecodeError, Reader, Writer};
use vm_superio::Trigger;

/// Port base (data at +0, status/command at +4).
pub const I8042_BASE: u64 = 0x60;
/// Ports covered.
pub const I8042_LEN: u64 = 5;
/// Keyboard interrupt line.
pub const KBD_GSI: u32 = 1;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const BUF_SIZE: usize = 16;

/// Controller state that goes into a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I8042State {
    status: u8,
    control: u8,
    outp: u8,
    cmd: u8,
    buf: Vec<u8>,
}

/// The controller.
pub struct I8042 {
    st: I8042State,
    buf: VecDeque<u8>,
    irq: IrqLine,
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller after power-on.
    pub fn new(irq: IrqLine, exit: Arc<ExitSignal>) -> I8042 {
        I8042 {
            st: I8042State {
                status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
                control: CB_POST_OK | CB_KBD_INT,
                outp: 0,
                cmd: 0,
                buf: Vec::new(),
            },
            buf: VecDeque::with_capacity(BUF_SIZE),
            irq,
            exit,
        }
    }

    /// A controller with restored state.
    pub fn from_state(state: &I8042State, irq: IrqLine, exit: Arc<ExitSignal>) -> I8042 {
        let mut dev = I8042::new(irq, exit);
        dev.st = state.clone();
        dev.buf = state.buf.iter().copied().collect();
        dev.st.buf.clear();
        dev
    }

    /// Current state.
    pub fn state(&self) -> I8042State {
        let mut st = self.st.clone();
        st.buf = self.buf.iter().copied().collect();
        st
    }

    fn push(&mut self, byte: u8) -> bool {
        if self.buf.len() >= BUF_SIZE {
            return false;
        }
        self.buf.push_back(byte);
        self.st.status |= SB_OUT_DATA_AVAIL;
        true
    }

    fn pop(&mut self) -> u8 {
        let b = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.st.status &= !SB_OUT_DATA_AVAIL;
        }
        b
    }

    fn interrupt(&self) {
        if self.st.control & CB_KBD_INT != 0
            && let Err(e) = self.irq.trigger()
        {
            tracing::warn!(error = %e, "i8042 interrupt failed");
        }
    }

    /// Queues Ctrl+Alt+Del (scan code set 2, as Firecracker sends it) and raises IRQ 1.
    pub fn trigger_ctrl_alt_del(&mut self) -> bool {
        let ok = [0x14u8, 0x11, 0xe0, 0x71].iter().all(|&b| self.push(b));
        self.interrupt();
        ok
    }

    fn reset(&self) {
        self.exit.request(ExitReason::GuestReset);
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            OFS_STATUS => self.st.status,
            OFS_DATA => {
                let b = self.pop();
                if !self.buf.is_empty() {
                    self.interrupt();
                }
                b
            }
            _ => 0xff,
        };
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            OFS_STATUS => {
                self.st.status |= SB_COMMAND;
                match v {
                    0x20 => {
                        let c = self.st.control;
                        self.push(c);
                    }
                    0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.st.cmd = v,
                    0xa7 | 0xa8 | 0xad | 0xae => {}
                    0xaa => {
                        self.push(0x55);
                    }
                    0xab => {
                        self.push(0x00);
                    }
                    0xc0 => {
                        self.push(0x00);
                    }
                    0xd0 => {
                        let o = self.st.outp;
                        self.push(o);
                    }
                    0xfe => self.reset(),
                    0xf0..=0xff if v & 1 == 0 => self.reset(),
                    _ => {}
                }
            }
            OFS_DATA => {
                self.st.status &= !SB_COMMAND;
                match std::mem::take(&mut self.st.cmd) {
                    0x60 => self.st.control = v,
                    0xd1 => {
                        self.st.outp = v;
                        if v & 1 == 0 {
                            self.reset();
                        }
                    }
                    0xd2 => {
                        self.push(v);
                        self.interrupt();
                    }
                    0xd3 | 0xd4 => {}
                    _ => {
                        // A command to the keyboard itself: acknowledge it.
                        self.push(0xfa);
                        self.interrupt();
                    }
                }
            }
            _ => {}
        }
    }
}

/// Appends the controller state.
pub fn encode_state(s: &I8042State, w: &mut Writer) {
    w.u8(s.status);
    w.u8(s.control);
    w.u8(s.outp);
    w.u8(s.cmd);
    w.bytes(&s.buf);
}

/// Decodes the controller state.
pub fn decode_state(r: &mut Reader<'_>) -> Result<I8042State, DecodeError> {
    let status = r.u8("i8042 status")?;
    let control = r.u8("i8042 control")?;
    let outp = r.u8("i8042 output port")?;
    let cmd = r.u8("i8042 command")?;
    let buf = r.bytes("i8042 buffer")?.to_vec();
    if buf.len() > BUF_SIZE {
        return Err(DecodeError::Invalid {
            what: "i8042 buffer",
            detail: "too long".into(),
        });
    }
    Ok(I8042State {
        status,
        control,
        outp,
        cmd,
        buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn dev() -> (I8042, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (
            I8042::new(IrqLine::Eventfd(EventFd::new(0).unwrap()), exit.clone()),
            exit,
        )
    }

    #[test]
    fn reset_command_requests_exit() {
        let (mut d, exit) = dev();
        d.write(OFS_STATUS, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn ctrl_alt_del_and_state_round_trip() {
        let (mut d, exit) = dev();
        assert!(d.trigger_ctrl_alt_del());
        let mut b = [0u8];
        d.read(OFS_STATUS, &mut b);
        assert_eq!(b[0] & SB_OUT_DATA_AVAIL, 1);
        d.read(OFS_DATA, &mut b);
        assert_eq!(b[0], 0x14);
        let mut w = Writer::default();
        encode_state(&d.state(), &mut w);
        let v = w.into_vec();
        let st = decode_state(&mut Reader::new(&v)).unwrap();
        let mut d2 = I8042::from_state(&st, IrqLine::Eventfd(EventFd::new(0).unwrap()), exit);
        d2.read(OFS_DATA, &mut b);
        assert_eq!(b[0], 0x11);
    }
}
