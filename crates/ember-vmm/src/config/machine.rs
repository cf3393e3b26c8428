//! What ember-vmm adds to the API's check of `PUT|PATCH /machine-config`
//! (`ember_fc_api::MachineConfiguration`): guest memory between [`MIN_MEM_MIB`] and
//! [`MAX_MEM_MIB`], and none of the switches it does not implement (SMT, dirty page tracking,
//! huge pages, CPU templates).

use ember_fc_api::{FieldError, HugePages, MachineConfiguration};

/// Smallest guest (MiB).
pub const MIN_MEM_MIB: u32 = 4;
/// Largest guest (MiB).
pub const MAX_MEM_MIB: u32 = 256 * 1024;

/// The machine before any `PUT /machine-config` (Firecracker's: 1 vCPU, 128 MiB), with the
/// defaults written out as `GET /machine-config` reports them.
pub fn default_machine() -> MachineConfiguration {
    MachineConfiguration::default().with_defaults()
}

/// The API's check, then ember-vmm's: memory range and unsupported switches.
pub fn validate_machine(m: &MachineConfiguration) -> Result<(), FieldError> {
    m.validate()?;
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&m.mem_size_mib) {
        return Err(FieldError::new(
            "mem_size_mib",
            format!(
                "must be between {MIN_MEM_MIB} and {MAX_MEM_MIB} (got {})",
                m.mem_size_mib
            ),
        ));
    }
    if m.smt == Some(true) {
        return Err(FieldError::new(
            "smt",
            "simultaneous multithreading is not supported",
        ));
    }
    if m.track_dirty_pages == Some(true) {
        return Err(FieldError::new(
            "track_dirty_pages",
            "dirty page tracking is not supported",
        ));
    }
    if m.huge_pages.is_some_and(|h| h != HugePages::None) {
        return Err(FieldError::new("huge_pages", "only \"None\" is supported"));
    }
    if let Some(t) = &m.cpu_template
        && t != "None"
    {
        return Err(FieldError::new(
            "cpu_template",
            format!("CPU template {t:?} is not supported"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_json;
    use ember_fc_api::MachineConfigurationUpdate;

    #[test]
    fn validation() {
        let ok: MachineConfiguration = from_json(
            br#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
            "machine-config",
        )
        .unwrap();
        validate_machine(&ok).unwrap();
        let zero: MachineConfiguration =
            from_json(br#"{"vcpu_count": 0, "mem_size_mib": 128}"#, "m").unwrap();
        assert_eq!(validate_machine(&zero).unwrap_err().field, "vcpu_count");
        let small: MachineConfiguration =
            from_json(br#"{"vcpu_count": 1, "mem_size_mib": 3}"#, "m").unwrap();
        assert_eq!(validate_machine(&small).unwrap_err().field, "mem_size_mib");
        let err = from_json::<MachineConfiguration>(br#"{"mem_size_mib": 128}"#, "machine-config")
            .unwrap_err();
        assert!(err.message.contains("missing field `vcpu_count`"), "{err}");
        let err = from_json::<MachineConfiguration>(
            br#"{"vcpu_count": 300, "mem_size_mib": 1}"#,
            "machine-config",
        )
        .unwrap_err();
        assert_eq!(err.field, "machine-config.vcpu_count");
        let base = ok.with_defaults();
        let p: MachineConfigurationUpdate = from_json(br#"{"mem_size_mib": 64}"#, "m").unwrap();
        assert_eq!(p.apply(&base).mem_size_mib, 64);
        let p: MachineConfigurationUpdate = from_json(br#"{"smt": true}"#, "m").unwrap();
        assert_eq!(validate_machine(&p.apply(&base)).unwrap_err().field, "smt");
        let hp: MachineConfiguration = from_json(
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#,
            "m",
        )
        .unwrap();
        assert_eq!(validate_machine(&hp).unwrap_err().field, "huge_pages");
        let none: MachineConfiguration = from_json(
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "None", "cpu_template": "None"}"#,
            "m",
        )
        .unwrap();
        validate_machine(&none).unwrap();
    }
}
