//! What a decoded snapshot must satisfy before a restore touches the VM: a valid CRC only
//! says the file is the one that was written, not that it describes a VM this ember-vmm can
//! run. [`check_restore`] checks the state against itself and against the host, and names
//! the section at fault ([`SnapshotError::Invalid`]):
//!
//! - **config**: every check a boot applies (`VmConfig::validate_for_restore`: unsupported
//!   sections such as `balloon`, `machine-config` features such as `smt`, drives whose file is
//!   missing, interface and vsock fields), except reading the kernel again;
//! - **vcpu**: one section per configured vCPU;
//! - **memory**: page-aligned, non-empty regions, sorted and not overlapping, starting at 0
//!   (the boot structures and real-mode memory live below 1 MiB), none in the 32-bit MMIO gap
//!   or above the highest address ember-vmm maps, holding exactly `mem_size_mib`, laid out as
//!   ember-vmm lays out that size;
//! - **virtio device**: each section is a device kind this build knows, matching one
//!   configured device (drive id, interface id, vsock, entropy), and each configured device
//!   has exactly one section;
//! - **vmgenid**: the id's 16 bytes 8-byte aligned in the e820-reserved system area below
//!   the RSDP and inside the first RAM region, its GSI an IOAPIC pin no other device uses.
//!
//! Host resources that are opened anyway on restore (TAPs, drive files, the vsock socket) are
//! checked by opening them, before anything irreversible (`builder::restore`); the config
//! check above catches a missing drive file earlier, with the field's name.

use super::{MicrovmState, SnapshotError};
use crate::arch::x86_64::layout::{
    FIRST_ADDR_PAST_32BITS, HIMEM_START, MMIO32_START, RSDP_ADDR, SYSTEM_MEM_START, ram_regions,
};
use crate::config::VmConfig;
use crate::config::machine::{MAX_MEM_MIB, validate_machine};
use crate::devices::legacy::i8042::KBD_GSI;
use crate::devices::legacy::serial::COM1_GSI;
use crate::devices::virtio::manager::LAST_GSI;
use crate::devices::virtio::rng::RNG_ID;
use crate::devices::virtio::{TYPE_BLOCK, TYPE_NET, TYPE_RNG, TYPE_VSOCK};
use crate::devices::vmgenid::VMGENID_LEN;

const PAGE: u64 = 4096;

/// The highest guest-physical address (exclusive) a layout of [`MAX_MEM_MIB`] reaches.
pub const MAX_GUEST_ADDR: u64 = FIRST_ADDR_PAST_32BITS + ((MAX_MEM_MIB as u64) << 20);

fn invalid(section: &'static str, detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        section,
        detail: detail.into(),
    }
}

/// Checks `state` with its parsed `config` (the load request's overrides applied). See the
/// module documentation for what is checked.
pub fn check_restore(state: &MicrovmState, config: &VmConfig) -> Result<(), SnapshotError> {
    check_config(config)?;
    check_vcpus(state, config)?;
    check_memory(
        &state.memory_regions,
        config.machine_config.mem_size_bytes(),
    )?;
    check_devices(state, config)?;
    check_vmgenid(state)
}

/// The VM generation id's address and GSI, against the memory layout and the other devices.
pub fn check_vmgenid(state: &MicrovmState) -> Result<(), SnapshotError> {
    let Some(g) = state.vmgenid else {
        return Ok(());
    };
    let len = VMGENID_LEN as u64;
    let ram_end = state.memory_regions.first().map_or(0, |r| r.0 + r.1);
    if g.addr < SYSTEM_MEM_START
        || g.addr > RSDP_ADDR - len
        || !g.addr.is_multiple_of(8)
        || g.addr + len > ram_end
    {
        return Err(invalid(
            "vmgenid",
            format!(
                "address {:#x} is not an 8-byte aligned place for {len} bytes in the reserved                  area {SYSTEM_MEM_START:#x}..{RSDP_ADDR:#x} of guest RAM",
                g.addr
            ),
        ));
    }
    // The PIT (0, and 2 through the override), the i8042, COM1 and the virtio devices.
    let taken = [0, 2, KBD_GSI, COM1_GSI];
    if g.gsi > LAST_GSI || taken.contains(&g.gsi) || state.virtio.iter().any(|d| d.gsi == g.gsi) {
        return Err(invalid(
            "vmgenid",
            format!(
                "GSI {} is not a free IOAPIC pin (0..={LAST_GSI}, not the PIT's, the                  i8042's, COM1's or a virtio device's)",
                g.gsi
            ),
        ));
    }
    Ok(())
}

/// The configuration section, as a boot would check it (but the kernel file).
pub fn check_config(config: &VmConfig) -> Result<(), SnapshotError> {
    validate_machine(&config.machine_config)
        .map_err(|e| invalid("config", format!("machine-config.{e}")))?;
    config
        .validate_for_restore()
        .map_err(|e| invalid("config", e.to_string()))
}

/// One vCPU section per configured vCPU.
pub fn check_vcpus(state: &MicrovmState, config: &VmConfig) -> Result<(), SnapshotError> {
    let want = usize::from(config.machine_config.vcpu_count);
    if state.vcpus.len() != want {
        return Err(invalid(
            "vcpu",
            format!(
                "the configuration has {want} vCPUs (machine-config.vcpu_count) but the \
                 snapshot saved {} vCPU sections",
                state.vcpus.len()
            ),
        ));
    }
    Ok(())
}

/// The memory layout against the configured size and what ember-vmm maps.
pub fn check_memory(regions: &[(u64, u64)], mem_size: u64) -> Result<(), SnapshotError> {
    let bad = |detail: String| invalid("memory", detail);
    if regions.is_empty() {
        return Err(bad("no memory regions".into()));
    }
    let mut prev_end = 0u64;
    let mut total = 0u64;
    for (i, &(gpa, size)) in regions.iter().enumerate() {
        if size == 0 || gpa % PAGE != 0 || size % PAGE != 0 {
            return Err(bad(format!(
                "region {i} ({gpa:#x}, {size:#x} bytes) is empty or not page-aligned"
            )));
        }
        let Some(end) = gpa.checked_add(size) else {
            return Err(bad(format!(
                "region {i} ({gpa:#x}, {size:#x} bytes) overflows"
            )));
        };
        if i == 0 && gpa != 0 {
            return Err(bad(format!(
                "region 0 starts at {gpa:#x}: guest RAM must start at 0 (the boot structures \
                 and real-mode memory live below {HIMEM_START:#x})"
            )));
        }
        if i > 0 && gpa < prev_end {
            return Err(bad(format!(
                "region {i} starts at {gpa:#x}, below the end of region {} ({prev_end:#x}): \
                 regions must be sorted and must not overlap",
                i - 1
            )));
        }
        if gpa < FIRST_ADDR_PAST_32BITS && end > MMIO32_START {
            return Err(bad(format!(
                "region {i} ({gpa:#x}..{end:#x}) overlaps the MMIO gap \
                 {MMIO32_START:#x}..{FIRST_ADDR_PAST_32BITS:#x}"
            )));
        }
        if end > MAX_GUEST_ADDR {
            return Err(bad(format!(
                "region {i} ends at {end:#x}, above the highest guest address ember-vmm maps \
                 ({MAX_GUEST_ADDR:#x})"
            )));
        }
        prev_end = end;
        total += size;
    }
    if total != mem_size {
        return Err(bad(format!(
            "the regions hold {total} bytes but the configuration's machine-config.mem_size_mib \
             is {} MiB ({mem_size} bytes)",
            mem_size >> 20
        )));
    }
    let expected = ram_regions(mem_size);
    if regions != expected.as_slice() {
        return Err(bad(format!(
            "regions {regions:x?} differ from the layout ember-vmm builds for {} MiB \
             ({expected:x?})",
            mem_size >> 20
        )));
    }
    Ok(())
}

/// The virtio device sections against the configured devices, both ways.
pub fn check_devices(state: &MicrovmState, config: &VmConfig) -> Result<(), SnapshotError> {
    let bad = |detail: String| invalid("virtio device", detail);
    // (type, id, what the configuration calls it)
    let mut wanted: Vec<(u32, &str, String)> = Vec::new();
    for (i, d) in config.drives.iter().enumerate() {
        wanted.push((
            TYPE_BLOCK,
            &d.drive_id,
            format!("drives[{i}] ({:?})", d.drive_id),
        ));
    }
    for (i, n) in config.network_interfaces.iter().enumerate() {
        wanted.push((
            TYPE_NET,
            &n.iface_id,
            format!("network-interfaces[{i}] ({:?})", n.iface_id),
        ));
    }
    if config.vsock.is_some() {
        wanted.push((TYPE_VSOCK, "vsock", "vsock".into()));
    }
    if config.entropy.is_some() {
        wanted.push((TYPE_RNG, RNG_ID, "entropy".into()));
    }
    let mut seen = vec![false; wanted.len()];
    for d in &state.virtio {
        let kind = match d.device_type {
            TYPE_BLOCK => "drive",
            TYPE_NET => "network interface",
            TYPE_VSOCK => "vsock device",
            TYPE_RNG => "entropy device",
            other => {
                return Err(bad(format!(
                    "{:?} has device type {other}, which this ember-vmm does not support",
                    d.id
                )));
            }
        };
        let Some(i) = wanted
            .iter()
            .position(|(t, id, _)| *t == d.device_type && *id == d.id)
        else {
            return Err(bad(format!(
                "{:?} ({kind}) is not in the configuration section",
                d.id
            )));
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(bad(format!("{:?} ({kind}) is saved twice", d.id)));
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(bad(format!(
            "the configuration lists {} but no virtio device section saves it",
            wanted[i].2
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::state::tests::sample_state;

    fn config(json: &str) -> VmConfig {
        serde_json::from_str::<VmConfig>(json)
            .unwrap()
            .with_defaults()
    }

    const TWO_VCPUS_VSOCK: &str = r#"{"machine-config": {"vcpu_count": 2, "mem_size_mib": 128},
        "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"}}"#;

    #[test]
    fn the_sample_state_is_valid() {
        check_restore(&sample_state(), &config(TWO_VCPUS_VSOCK)).unwrap();
    }

    #[test]
    fn each_section_is_checked() {
        let s = sample_state();
        let err = |cfg: &str, s: &MicrovmState| check_restore(s, &config(cfg)).unwrap_err();
        let e = err(
            r#"{"machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": true}}"#,
            &s,
        );
        assert!(
            e.to_string().contains("config section: machine-config.smt"),
            "{e}"
        );
        let e = err(
            r#"{"machine-config": {"vcpu_count": 2, "mem_size_mib": 128}, "balloon": {"amount_mib": 1}}"#,
            &s,
        );
        assert!(e.to_string().contains("config section: balloon"), "{e}");
        let e = err(
            r#"{"machine-config": {"vcpu_count": 2, "mem_size_mib": 128},
                "drives": [{"drive_id": "d", "is_root_device": false, "path_on_host": "/nonexistent/disk"}]}"#,
            &s,
        );
        assert!(e.to_string().contains("drives[0].path_on_host"), "{e}");
        let e = err(
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
            &s,
        );
        assert!(e.to_string().contains("vcpu section"), "{e}");
        let e = err(
            r#"{"machine-config": {"vcpu_count": 2, "mem_size_mib": 128}}"#,
            &s,
        );
        assert!(
            e.to_string()
                .contains("virtio device section: \"vsock\" (vsock device) is not in"),
            "{e}"
        );
        let mut no_dev = s.clone();
        no_dev.virtio.clear();
        let e = err(TWO_VCPUS_VSOCK, &no_dev);
        assert!(
            e.to_string()
                .contains("configuration lists vsock but no virtio device"),
            "{e}"
        );
        let mut twice = s.clone();
        twice.virtio.push(s.virtio[0].clone());
        assert!(err(TWO_VCPUS_VSOCK, &twice).to_string().contains("twice"));
        let mut alien = s.clone();
        alien.virtio[0].device_type = 16;
        assert!(
            err(TWO_VCPUS_VSOCK, &alien)
                .to_string()
                .contains("device type 16")
        );
    }

    #[test]
    fn vmgenid_place_and_line() {
        use crate::devices::vmgenid::{GED_GSI, VmGenIdState};
        let cfg = config(TWO_VCPUS_VSOCK);
        let mut s = sample_state();
        s.vmgenid = None;
        check_restore(&s, &cfg).unwrap();
        for (addr, gsi, needle) in [
            (SYSTEM_MEM_START - 8, GED_GSI, "address"),
            (RSDP_ADDR - 8, GED_GSI, "address"),
            (RSDP_ADDR, GED_GSI, "address"),
            (VmGenIdState::BOOT.addr + 4, GED_GSI, "address"),
            (VmGenIdState::BOOT.addr, COM1_GSI, "GSI 4"),
            (VmGenIdState::BOOT.addr, 0, "GSI 0"),
            (VmGenIdState::BOOT.addr, 24, "GSI 24"),
            (VmGenIdState::BOOT.addr, s.virtio[0].gsi, "GSI 5"),
        ] {
            s.vmgenid = Some(VmGenIdState { addr, gsi });
            let e = check_restore(&s, &cfg).unwrap_err().to_string();
            assert!(
                e.contains("vmgenid section") && e.contains(needle),
                "{addr:#x} {gsi}: {e}"
            );
        }
        // Another free pin or place is fine: the guest's DSDT names what the snapshot saved.
        s.vmgenid = Some(VmGenIdState {
            addr: RSDP_ADDR - 16,
            gsi: 23,
        });
        check_restore(&s, &cfg).unwrap();
        // Memory too small to hold the page.
        s.memory_regions = vec![(0, 0x8_0000)];
        assert!(
            check_vmgenid(&s)
                .unwrap_err()
                .to_string()
                .contains("address")
        );
    }

    #[test]
    fn memory_layouts() {
        let mib = |n: u64| n << 20;
        check_memory(&[(0, mib(128))], mib(128)).unwrap();
        check_memory(&ram_regions(mib(4096)), mib(4096)).unwrap();
        for (regions, size, needle) in [
            (vec![], mib(128), "no memory regions"),
            (vec![(0x1000, mib(128))], mib(128), "must start at 0"),
            (
                vec![(0, mib(64)), (mib(32), mib(64))],
                mib(128),
                "must not overlap",
            ),
            (
                vec![(0, mib(64)), (MMIO32_START, mib(64))],
                mib(128),
                "MMIO gap",
            ),
            (vec![(0, 0)], mib(128), "not page-aligned"),
            (vec![(0, mib(128) + 1)], mib(128), "not page-aligned"),
            (vec![(0, mib(64))], mib(128), "mem_size_mib"),
            (
                vec![(0, mib(64)), (mib(64) + 4096, mib(64))],
                mib(128),
                "differ",
            ),
            (
                vec![(0, mib(64)), (MAX_GUEST_ADDR, mib(64))],
                mib(128),
                "highest",
            ),
            (
                vec![(0, mib(64)), (!0xfff_u64, mib(64))],
                mib(128),
                "overflows",
            ),
        ] {
            let e = check_memory(&regions, size).unwrap_err().to_string();
            assert!(
                e.contains("memory section") && e.contains(needle),
                "{regions:x?}: {e}"
            );
        }
    }
}
