//! A CMOS real-time clock (MC146818 at ports 0x70/0x71) reading the host's UTC time, so a
//! Linux guest's `rtc_cmos` finds a clock at once (without one, Debian's kernel stalls ~3.5 s
//! probing it) and `hctosys` sets the guest's wall clock.
//!
//! Port 0x70 selects a register (bit 7, NMI masking, is ignored), port 0x71 reads or writes
//! it. The time registers always read the host's current time, in BCD or binary and 24-hour
//! form as status register B says; the guest's writes to them are ignored (its clock is the
//! host's). Update-in-progress never reads as set and no interrupts are raised (alarms,
//! periodic and update interrupts are not emulated). The other CMOS bytes are plain RAM.
//!
//! The device has no snapshot state worth keeping: after a restore it again reads the host's
//! time, which is what a restored guest should see.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::bus::BusDevice;

/// First port (index register).
pub const RTC_BASE: u64 = 0x70;
/// Ports covered (index and data).
pub const RTC_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status B: 24-hour mode.
const B_24H: u8 = 1 << 1;
/// Status B: binary (not BCD) data mode.
const B_BINARY: u8 = 1 << 2;
/// Status D: valid RAM and time.
const D_VRT: u8 = 1 << 7;
/// Status A at reset: 32.768 kHz time base, 1024 Hz periodic rate, no update in progress.
const A_DEFAULT: u8 = 0x26;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year (e.g. 2026).
    pub year: u32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 1 (Sunday) ..= 7 (Saturday), as the RTC counts.
    pub weekday: u32,
}

impl CivilTime {
    /// The UTC time `secs` seconds after the Unix epoch (days to civil date: the proleptic
    /// Gregorian calendar, computed in 400-year eras).
    pub fn from_unix(secs: u64) -> CivilTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // 1970-01-01 was a Thursday (RTC weekday 5).
        let weekday = ((days + 4) % 7) as u32 + 1;
        let z = days + 719_468; // days since 0000-03-01
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400) as u32 + u32::from(month <= 2);
        CivilTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: ((rem % 3600) / 60) as u32,
            second: (rem % 60) as u32,
            weekday,
        }
    }
}

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The CMOS RTC.
pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    clock: fn() -> u64,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC reading the host's clock.
    pub fn new() -> Rtc {
        Self::with_clock(host_unix_seconds)
    }

    /// An RTC reading `clock` (Unix seconds); for tests.
    pub fn with_clock(clock: fn() -> u64) -> Rtc {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = A_DEFAULT;
        ram[usize::from(REG_B)] = B_24H;
        Rtc {
            index: 0,
            ram,
            clock,
        }
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.ram[usize::from(REG_B)] & B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn hours(&self, h: u32) -> u8 {
        if self.ram[usize::from(REG_B)] & B_24H != 0 {
            return self.encode(h);
        }
        // 12-hour mode: 12, 1..11 with bit 7 for PM.
        let pm = if h >= 12 { 0x80 } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | pm
    }

    /// Reads register `reg`.
    pub fn read_register(&mut self, reg: u8) -> u8 {
        let reg = reg & 0x7f;
        let now = || CivilTime::from_unix((self.clock)());
        match reg {
            REG_SECONDS => self.encode(now().second),
            REG_MINUTES => self.encode(now().minute),
            REG_HOURS => self.hours(now().hour),
            REG_WEEKDAY => self.encode(now().weekday),
            REG_DAY => self.encode(now().day),
            REG_MONTH => self.encode(now().month),
            REG_YEAR => self.encode(now().year % 100),
            REG_CENTURY => self.encode(now().year / 100),
            REG_A => self.ram[usize::from(REG_A)] & 0x7f,
            REG_C => 0,
            REG_D => D_VRT,
            r => self.ram[usize::from(r)],
        }
    }

    /// Writes register `reg` (time registers and the read-only C and D are ignored).
    pub fn write_register(&mut self, reg: u8, value: u8) {
        let reg = reg & 0x7f;
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY | REG_C | REG_D => {}
            REG_A => self.ram[usize::from(REG_A)] = value & 0x7f,
            r => self.ram[usize::from(r)] = value,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            1 => self.read_register(self.index),
            _ => 0xff,
        };
        if let Some(first) = data.first_mut() {
            *first = v;
        }
        for b in data.iter_mut().skip(1) {
            *b = 0xff;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v & 0x7f,
            1 => self.write_register(self.index, v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-05 16:56:03 UTC, a Saturday.
    const T: u64 = 1_796_489_763;

    fn fixed() -> u64 {
        T
    }

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(0, &[reg | 0x80]); // NMI-disable bit set, as Linux does
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    #[test]
    fn civil_dates() {
        let t = CivilTime::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        let t = CivilTime::from_unix(T);
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 12, 5, 16, 56, 3, 7)
        );
        // A leap day and the turn of a century.
        let t = CivilTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
        let t = CivilTime::from_unix(4_107_542_400); // 2100-03-01
        assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
    }

    #[test]
    fn reads_bcd_time_and_status() {
        let mut rtc = Rtc::with_clock(fixed);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x03);
        assert_eq!(read(&mut rtc, REG_MINUTES), 0x56);
        assert_eq!(read(&mut rtc, REG_HOURS), 0x16);
        assert_eq!(read(&mut rtc, REG_DAY), 0x05);
        assert_eq!(read(&mut rtc, REG_MONTH), 0x12);
        assert_eq!(read(&mut rtc, REG_YEAR), 0x26);
        assert_eq!(read(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 0x07);
        assert_eq!(read(&mut rtc, REG_A) & 0x80, 0, "never updating");
        assert_eq!(read(&mut rtc, REG_B), B_24H);
        assert_eq!(read(&mut rtc, REG_D), D_VRT);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut rtc = Rtc::with_clock(fixed);
        rtc.write(0, &[REG_B]);
        rtc.write(1, &[B_BINARY]);
        assert_eq!(read(&mut rtc, REG_MINUTES), 56);
        assert_eq!(read(&mut rtc, REG_HOURS), 0x80 | 4, "4 PM");
    }

    #[test]
    fn ram_keeps_bytes_and_time_ignores_writes() {
        let mut rtc = Rtc::with_clock(fixed);
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0xab]);
        assert_eq!(read(&mut rtc, 0x40), 0xab);
        rtc.write(0, &[REG_SECONDS]);
        rtc.write(1, &[0x59]);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x03);
        rtc.write(0, &[REG_D]);
        rtc.write(1, &[0]);
        assert_eq!(read(&mut rtc, REG_D), D_VRT);
        let mut idx = [0u8];
        rtc.read(0, &mut idx);
        assert_eq!(idx[0], REG_D);
    }
}
