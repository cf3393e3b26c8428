//! The microVM state inside a snapshot and its sections.
//!
//! | id | section | contents |
//! |----|---------|----------|
//! | 1 | memory | region count, then (guest address, size) per region |
//! | 2 | config | the `VmConfig` as JSON (small, human-readable, not on a hot path) |
//! | 3 | vm | clock, PIC master/slave, IOAPIC, PIT ([`VmState`]) |
//! | 4 | vcpu | one per vCPU, in index order ([`VcpuState`]) |
//! | 5 | legacy devices | COM1 and i8042 registers ([`LegacyState`]) |
//! | 6 | host | TSC kHz of the host that saved (informational) |
//! | 7 | virtio device | one per virtio device, in slot order ([`DeviceSnapshot`]: type, id, MMIO window, GSI, transport registers and queues, the device's own bytes) |
//! | 8 | vmgenid | the VM generation id's guest address (u64) and its Generic Event Device's GSI (u32) ([`VmGenIdState`]) |
//!
//! Sections 1-6 must appear (vcpu at least once), section 7 as often as the VM has virtio
//! devices, section 8 at most once (every boot of a version-4 build writes it; without it
//! a restore writes no generation id); unknown ids are an error, since the format version
//! governs the layout (version 2 added section 7, version 4 section 8, which a version 3
//! file must not have).

use super::SnapshotError;
use super::codec::{Reader, Writer};
use super::format::{ContainerWriter, SnapshotId, read_container};
use crate::devices::legacy::LegacyState;
use crate::devices::virtio::manager::{DeviceSnapshot, MAX_DEVICES};
use crate::devices::vmgenid::VmGenIdState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

/// Guest memory layout.
pub const SECTION_MEMORY: u16 = 1;
/// Machine configuration (JSON).
pub const SECTION_CONFIG: u16 = 2;
/// VM-wide KVM state.
pub const SECTION_VM: u16 = 3;
/// One vCPU.
pub const SECTION_VCPU: u16 = 4;
/// Legacy devices.
pub const SECTION_LEGACY_DEVICES: u16 = 5;
/// Host information.
pub const SECTION_HOST: u16 = 6;
/// One virtio device.
pub const SECTION_VIRTIO_DEVICE: u16 = 7;
/// The VM generation id (format version 4).
pub const SECTION_VMGENID: u16 = 8;

/// Everything a restore needs besides guest memory.
#[derive(Debug, Clone)]
pub struct MicrovmState {
    /// The id pairing this state with its memory file (in the container's header; the memory
    /// file's trailer carries the same one).
    pub snapshot_id: SnapshotId,
    /// `(guest address, size)` per RAM region; the memory file holds them back to back.
    pub memory_regions: Vec<(u64, u64)>,
    /// The machine configuration as JSON.
    pub config_json: Vec<u8>,
    /// VM-wide KVM state.
    pub vm: VmState,
    /// Per-vCPU state, index order.
    pub vcpus: Vec<VcpuState>,
    /// COM1 and i8042.
    pub legacy: LegacyState,
    /// TSC frequency of the saving host, kHz (0 if unknown).
    pub host_tsc_khz: u32,
    /// Virtio devices, in slot order.
    pub virtio: Vec<DeviceSnapshot>,
    /// The VM generation id's address and GSI, if the guest was given one.
    pub vmgenid: Option<VmGenIdState>,
}

impl MicrovmState {
    /// Total guest memory in bytes.
    pub fn memory_size(&self) -> u64 {
        self.memory_regions.iter().map(|r| r.1).sum()
    }

    /// Encodes the complete snapshot file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut c = ContainerWriter::new(self.snapshot_id);
        c.section(SECTION_MEMORY, |w| {
            w.u32(self.memory_regions.len() as u32);
            for &(gpa, size) in &self.memory_regions {
                w.u64(gpa);
                w.u64(size);
            }
        });
        c.section(SECTION_CONFIG, |w| w.raw(&self.config_json));
        c.section(SECTION_VM, |w| self.vm.encode(w));
        for v in &self.vcpus {
            c.section(SECTION_VCPU, |w| v.encode(w));
        }
        c.section(SECTION_LEGACY_DEVICES, |w| self.legacy.encode(w));
        c.section(SECTION_HOST, |w: &mut Writer| w.u32(self.host_tsc_khz));
        for d in &self.virtio {
            c.section(SECTION_VIRTIO_DEVICE, |w| d.encode(w));
        }
        if let Some(g) = &self.vmgenid {
            c.section(SECTION_VMGENID, |w| g.encode(w));
        }
        c.finish()
    }

    /// Validates and decodes a snapshot file.
    pub fn from_bytes(bytes: &[u8]) -> Result<MicrovmState, SnapshotError> {
        let container = read_container(bytes)?;
        let mut memory_regions = None;
        let mut config_json = None;
        let mut vm = None;
        let mut vcpus = Vec::new();
        let mut legacy = None;
        let mut host_tsc_khz = None;
        let mut virtio = Vec::new();
        let mut vmgenid = None;
        let sec = |section: &'static str| move |source| SnapshotError::Section { section, source };
        let dup = |name: &str| SnapshotError::Structure(format!("duplicate {name} section"));
        for (id, body) in container.sections {
            let mut r = Reader::new(body);
            match id {
                SECTION_MEMORY => {
                    let n = r.count("region count", 16).map_err(sec("memory"))?;
                    let mut regions = Vec::with_capacity(n);
                    for _ in 0..n {
                        let gpa = r.u64("region address").map_err(sec("memory"))?;
                        let size = r.u64("region size").map_err(sec("memory"))?;
                        regions.push((gpa, size));
                    }
                    r.finish("memory section").map_err(sec("memory"))?;
                    if memory_regions.replace(regions).is_some() {
                        return Err(dup("memory"));
                    }
                }
                SECTION_CONFIG => {
                    if config_json.replace(body.to_vec()).is_some() {
                        return Err(dup("config"));
                    }
                }
                SECTION_VM => {
                    let s = VmState::decode(&mut r).map_err(sec("vm"))?;
                    r.finish("vm section").map_err(sec("vm"))?;
                    if vm.replace(s).is_some() {
                        return Err(dup("vm"));
                    }
                }
                SECTION_VCPU => {
                    let s = VcpuState::decode(&mut r).map_err(sec("vcpu"))?;
                    r.finish("vcpu section").map_err(sec("vcpu"))?;
                    vcpus.push(s);
                }
                SECTION_LEGACY_DEVICES => {
                    let s = LegacyState::decode(&mut r).map_err(sec("legacy devices"))?;
                    r.finish("legacy devices section")
                        .map_err(sec("legacy devices"))?;
                    if legacy.replace(s).is_some() {
                        return Err(dup("legacy devices"));
                    }
                }
                SECTION_HOST => {
                    host_tsc_khz = Some(r.u32("tsc khz").map_err(sec("host"))?);
                }
                SECTION_VIRTIO_DEVICE => {
                    let d = DeviceSnapshot::decode(&mut r).map_err(sec("virtio device"))?;
                    r.finish("virtio device section")
                        .map_err(sec("virtio device"))?;
                    if virtio.len() == MAX_DEVICES
                        || virtio
                            .iter()
                            .any(|o: &DeviceSnapshot| o.gsi == d.gsi || o.mmio_base == d.mmio_base)
                    {
                        return Err(SnapshotError::Structure(format!(
                            "virtio device {:?} overlaps another or exceeds the device limit",
                            d.id
                        )));
                    }
                    virtio.push(d);
                }
                SECTION_VMGENID if container.version >= 4 => {
                    let g = VmGenIdState::decode(&mut r).map_err(sec("vmgenid"))?;
                    r.finish("vmgenid section").map_err(sec("vmgenid"))?;
                    if vmgenid.replace(g).is_some() {
                        return Err(dup("vmgenid"));
                    }
                }
                other => {
                    return Err(SnapshotError::Structure(format!(
                        "unknown section id {other}"
                    )));
                }
            }
        }
        let missing = |name: &str| SnapshotError::Structure(format!("missing {name} section"));
        let memory_regions = memory_regions.ok_or_else(|| missing("memory"))?;
        if memory_regions.is_empty() || memory_regions.iter().any(|r| r.1 == 0 || r.1 % 4096 != 0) {
            return Err(SnapshotError::Structure("invalid memory layout".into()));
        }
        if vcpus.is_empty() || vcpus.len() > 254 {
            return Err(SnapshotError::Structure(format!(
                "{} vCPU sections",
                vcpus.len()
            )));
        }
        Ok(MicrovmState {
            snapshot_id: container.snapshot_id,
            memory_regions,
            config_json: config_json.ok_or_else(|| missing("config"))?,
            vm: vm.ok_or_else(|| missing("vm"))?,
            vcpus,
            legacy: legacy.ok_or_else(|| missing("legacy devices"))?,
            host_tsc_khz: host_tsc_khz.unwrap_or(0),
            virtio,
            vmgenid,
        })
    }
}

// The sample state is also the fuzz targets' seed (`crate::fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::legacy::i8042;
    use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_msr_entry, kvm_pit_state2};

    pub(crate) fn sample_state() -> MicrovmState {
        let mut w = Writer::default();
        i8042::encode_state(&i8042_state(), &mut w);
        let v = w.into_vec();
        let i8042 = i8042::decode_state(&mut Reader::new(&v)).unwrap();
        let vcpu = VcpuState {
            cpuid: vec![kvm_bindings::kvm_cpuid_entry2 {
                function: 1,
                eax: 7,
                ..Default::default()
            }],
            mp_state: Default::default(),
            regs: kvm_bindings::kvm_regs {
                rip: 0x10_0000,
                rax: 5,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Box::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 99,
                ..Default::default()
            }],
            events: Default::default(),
            tsc_khz: Some(2_600_000),
        };
        MicrovmState {
            snapshot_id: SnapshotId([0x5a; 16]),
            memory_regions: vec![(0, 128 << 20)],
            config_json: br#"{"machine-config":{"vcpu_count":1,"mem_size_mib":128}}"#.to_vec(),
            vm: VmState {
                clock: kvm_clock_data {
                    clock: 12345,
                    ..Default::default()
                },
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip {
                    chip_id: 1,
                    ..Default::default()
                },
                ioapic: kvm_irqchip {
                    chip_id: 2,
                    ..Default::default()
                },
                pit: kvm_pit_state2::default(),
            },
            vcpus: vec![vcpu.clone(), vcpu],
            legacy: LegacyState {
                serial: Default::default(),
                i8042,
            },
            host_tsc_khz: 2_600_000,
            virtio: vec![DeviceSnapshot {
                device_type: 19,
                id: "vsock".into(),
                mmio_base: crate::devices::virtio::manager::MMIO_BASE,
                gsi: 5,
                transport: crate::devices::virtio::mmio::TransportState {
                    status: 15,
                    acked_features: 1 << 32,
                    features_select: 0,
                    driver_features_select: 0,
                    queue_select: 0,
                    config_generation: 0,
                    interrupt_status: 0,
                    active: true,
                    queues: vec![virtio_queue::QueueState::default(); 3],
                },
                device: vec![3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x40],
            }],
            vmgenid: Some(VmGenIdState::BOOT),
        }
    }

    fn i8042_state() -> i8042::I8042State {
        let exit = std::sync::Arc::new(crate::exit::ExitSignal::new().unwrap());
        let dev = i8042::I8042::new(
            crate::devices::IrqLine::Eventfd(vmm_sys_util::eventfd::EventFd::new(0).unwrap()),
            exit,
        );
        dev.state()
    }

    #[test]
    fn state_round_trip() {
        let s = sample_state();
        let bytes = s.to_bytes();
        let back = MicrovmState::from_bytes(&bytes).unwrap();
        assert_eq!(back.snapshot_id, s.snapshot_id);
        assert_eq!(back.memory_regions, s.memory_regions);
        assert_eq!(back.config_json, s.config_json);
        assert_eq!(back.vm.clock.clock, 12345);
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.vcpus[1].regs.rip, 0x10_0000);
        assert_eq!(back.vcpus[0].msrs[0].data, 99);
        assert_eq!(back.vcpus[0].tsc_khz, Some(2_600_000));
        assert_eq!(back.legacy.i8042, s.legacy.i8042);
        assert_eq!(back.virtio, s.virtio);
        assert_eq!(back.vmgenid, s.vmgenid);
        // The encoding is deterministic.
        assert_eq!(back.to_bytes(), bytes);
    }

    /// `state` encoded as a version 3 file (the header's version patched, the CRC redone).
    #[cfg(test)]
    fn as_version_3(state: &MicrovmState) -> Vec<u8> {
        let mut bytes = state.to_bytes();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn vmgenid_section_is_optional_once_and_new_in_version_4() {
        let mut s = sample_state();
        s.vmgenid = None;
        let back = MicrovmState::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.vmgenid, None);
        // A version 3 file (no generation id) still decodes...
        let back = MicrovmState::from_bytes(&as_version_3(&s)).unwrap();
        assert_eq!(back.vmgenid, None);
        assert_eq!(back.virtio, s.virtio);
        // ...but must not carry the section version 4 added.
        let e = MicrovmState::from_bytes(&as_version_3(&sample_state())).unwrap_err();
        assert!(e.to_string().contains("unknown section id 8"), "{e}");
        // Twice is refused.
        let mut c = ContainerWriter::new(s.snapshot_id);
        let full = sample_state().to_bytes();
        for (id, body) in read_container(&full).unwrap().sections {
            c.section(id, |w| w.raw(body));
        }
        c.section(SECTION_VMGENID, |w| VmGenIdState::BOOT.encode(w));
        let e = MicrovmState::from_bytes(&c.finish()).unwrap_err();
        assert!(e.to_string().contains("duplicate vmgenid"), "{e}");
        // Versions before 3 and after 4 are refused, naming both ends.
        let mut old = as_version_3(&s);
        old[8] = 2;
        let e = MicrovmState::from_bytes(&old).unwrap_err().to_string();
        assert!(
            e.contains("version 2") && e.contains("versions 3 to 4"),
            "{e}"
        );
    }

    #[test]
    fn corruption_is_detected() {
        let bytes = sample_state().to_bytes();
        for i in (0..bytes.len()).step_by(97) {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            assert!(
                MicrovmState::from_bytes(&b).is_err(),
                "corruption at {i} accepted"
            );
        }
        for n in [0, 7, 23, 100, bytes.len() - 1] {
            assert!(MicrovmState::from_bytes(&bytes[..n]).is_err());
        }
    }
}
