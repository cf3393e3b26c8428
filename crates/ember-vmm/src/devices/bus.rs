//! Address-range buses: port I/O and MMIO exits are dispatched to the device covering the
//! address. Unclaimed reads return all-ones (an empty bus), unclaimed writes are dropped.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    /// Handles a read; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
pub struct BusOverlap {
    /// Base of the rejected range.
    pub base: u64,
    /// Its length.
    pub len: u64,
}

/// Sorted, non-overlapping ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<(u64, u64)> = self.ranges.iter().map(|(b, l, _)| (*b, *l)).collect();
        f.debug_struct("Bus").field("ranges", &r).finish()
    }
}

impl Bus {
    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusOverlap> {
        if len == 0
            || self
                .ranges
                .iter()
                .any(|(b, l, _)| base < b + l && *b < base + len)
        {
            return Err(BusOverlap { base, len });
        }
        let pos = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(pos, (base, len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let idx = self
            .ranges
            .partition_point(|(b, _, _)| *b <= addr)
            .checked_sub(1)?;
        let (base, len, dev) = &self.ranges[idx];
        (addr < base + len).then_some((addr - base, dev))
    }

    /// Dispatches a read; returns false if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                match dev.lock() {
                    Ok(mut d) => d.read(offset, data),
                    Err(p) => p.into_inner().read(offset, data),
                }
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                match dev.lock() {
                    Ok(mut d) => d.write(offset, data),
                    Err(p) => p.into_inner().write(offset, data),
                }
                true
            }
            None => false,
        }
    }
}

/// The two buses vCPUs dispatch on.
#[derive(Debug, Default, Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(1)))).unwrap();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Echo(9)))).unwrap();
        assert!(bus.insert(0x3fc, 8, Arc::new(Mutex::new(Echo(0)))).is_err());
        let mut d = [0u8; 1];
        assert!(bus.read(0x3f9, &mut d));
        assert_eq!(d[0], 2);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d[0], 0xff);
        assert!(bus.write(0x60, &[5]));
        assert!(bus.read(0x60, &mut d));
        assert_eq!(d[0], 5);
        assert!(!bus.write(0x61, &[5]));
    }
}
