//! `PUT/PATCH/GET /machine-config`: vCPUs and memory.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most vCPUs per VM (Firecracker's limit).
pub const MAX_VCPUS: u8 = 32;
/// Largest guest (MiB).
pub const MAX_MEM_MIB: u32 = 256 * 1024;

/// Huge page backing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages.
    Transparent,
    /// hugetlbfs 2 MiB pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// vCPUs, memory and related switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs (1..=32).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (must be false).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (must be false: no diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages (only "None").
    #[serde(default)]
    pub huge_pages: HugePages,
    /// CPU template (only absent or "None").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

impl MachineConfig {
    /// Range and feature checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpu_count) {
            return Err(ConfigError::new(
                "vcpu_count",
                format!(
                    "must be between 1 and {MAX_VCPUS} (got {})",
                    self.vcpu_count
                ),
            ));
        }
        if !(4..=MAX_MEM_MIB).contains(&self.mem_size_mib) {
            return Err(ConfigError::new(
                "mem_size_mib",
                format!(
                    "must be between 4 and {MAX_MEM_MIB} (got {})",
                    self.mem_size_mib
                ),
            ));
        }
        if self.smt {
            return Err(ConfigError::new(
                "smt",
                "simultaneous multithreading is not supported",
            ));
        }
        if self.track_dirty_pages {
            return Err(ConfigError::new(
                "track_dirty_pages",
                "dirty page tracking is not supported",
            ));
        }
        if self.huge_pages != HugePages::None {
            return Err(ConfigError::new("huge_pages", "only \"None\" is supported"));
        }
        if let Some(t) = &self.cpu_template
            && t != "None"
        {
            return Err(ConfigError::new(
                "cpu_template",
                format!("CPU template {t:?} is not supported"),
            ));
        }
        Ok(())
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_size_mib) << 20
    }
}

/// `PATCH /machine-config`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// New vCPU count.
    pub vcpu_count: Option<u8>,
    /// New memory size.
    pub mem_size_mib: Option<u32>,
    /// SMT.
    pub smt: Option<bool>,
    /// Dirty tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<HugePages>,
    /// CPU template.
    pub cpu_template: Option<String>,
}

impl MachineConfigPatch {
    /// Applies the patch to a copy of `base` and validates the result.
    pub fn apply(&self, base: &MachineConfig) -> Result<MachineConfig, ConfigError> {
        let mut m = base.clone();
        if let Some(v) = self.vcpu_count {
            m.vcpu_count = v;
        }
        if let Some(v) = self.mem_size_mib {
            m.mem_size_mib = v;
        }
        if let Some(v) = self.smt {
            m.smt = v;
        }
        if let Some(v) = self.track_dirty_pages {
            m.track_dirty_pages = v;
        }
        if let Some(v) = self.huge_pages {
            m.huge_pages = v;
        }
        if let Some(v) = &self.cpu_template {
            m.cpu_template = Some(v.clone());
        }
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_json;

    #[test]
    fn validation() {
        let ok: MachineConfig = from_json(
            br#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
            "machine-config",
        )
        .unwrap();
        ok.validate().unwrap();
        let zero: MachineConfig =
            from_json(br#"{"vcpu_count": 0, "mem_size_mib": 128}"#, "m").unwrap();
        assert_eq!(zero.validate().unwrap_err().field, "vcpu_count");
        let err =
            from_json::<MachineConfig>(br#"{"mem_size_mib": 128}"#, "machine-config").unwrap_err();
        assert!(err.message.contains("missing field `vcpu_count`"), "{err}");
        let err = from_json::<MachineConfig>(
            br#"{"vcpu_count": 300, "mem_size_mib": 1}"#,
            "machine-config",
        )
        .unwrap_err();
        assert_eq!(err.field, "machine-config.vcpu_count");
        let p: MachineConfigPatch = from_json(br#"{"mem_size_mib": 64}"#, "m").unwrap();
        assert_eq!(p.apply(&ok).unwrap().mem_size_mib, 64);
        let p: MachineConfigPatch = from_json(br#"{"smt": true}"#, "m").unwrap();
        assert_eq!(p.apply(&ok).unwrap_err().field, "smt");
        let hp: MachineConfig = from_json(
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#,
            "m",
        )
        .unwrap();
        assert_eq!(hp.validate().unwrap_err().field, "huge_pages");
    }
}
