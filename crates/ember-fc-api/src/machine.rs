//! `PUT|GET /machine-config` ([`MachineConfiguration`]) and `PATCH /machine-config`
//! ([`MachineConfigurationUpdate`]): vCPUs, memory and the switches around them.
//!
//! API-level check: `vcpu_count` within the swagger's 1..=[`MAX_VCPUS`]. Memory limits and
//! which switches a VMM supports (SMT, dirty tracking, huge pages, CPU templates) are the
//! VMM's to check. Unset switches are left out of a request; [`MachineConfiguration::with_defaults`]
//! writes Firecracker's defaults out, as a server reports them.

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// Most vCPUs per microVM (the swagger's maximum).
pub const MAX_VCPUS: u8 = 32;

/// `MachineConfiguration.huge_pages`: what backs guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// hugetlbfs 2 MiB pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config` and `GET /machine-config` — `MachineConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// vCPUs (1 to [`MAX_VCPUS`]; Firecracker wants 1 or an even number with SMT).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86 only; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking, for diff snapshots (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// What backs guest memory (default `None`: 4 KiB pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// Deprecated static CPU template (`C3`, `T2`, ..., `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfiguration {
    /// Firecracker's machine before any `PUT /machine-config`: 1 vCPU, 128 MiB, switches unset.
    fn default() -> Self {
        MachineConfiguration::new(1, 128)
    }
}

impl MachineConfiguration {
    /// `vcpu_count` vCPUs and `mem_size_mib` MiB, every switch unset (left to the VMM's
    /// defaults and out of the request).
    pub fn new(vcpu_count: u8, mem_size_mib: u32) -> Self {
        MachineConfiguration {
            vcpu_count,
            mem_size_mib,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
            cpu_template: None,
        }
    }

    /// API-level check: the vCPU count is in range.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpu_count) {
            return Err(FieldError::new(
                "vcpu_count",
                format!(
                    "must be between 1 and {MAX_VCPUS} (got {})",
                    self.vcpu_count
                ),
            ));
        }
        Ok(())
    }

    /// The same configuration with Firecracker's defaults written out for the unset switches
    /// (`smt`, `track_dirty_pages`, `huge_pages`), as `GET /machine-config` reports them.
    pub fn with_defaults(mut self) -> Self {
        self.smt.get_or_insert(false);
        self.track_dirty_pages.get_or_insert(false);
        self.huge_pages.get_or_insert(HugePages::None);
        self
    }

    /// Guest memory in bytes.
    pub fn mem_size_bytes(&self) -> u64 {
        u64::from(self.mem_size_mib) << 20
    }
}

/// `PATCH /machine-config`: the fields of [`MachineConfiguration`] to change (pre-boot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigurationUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New guest memory size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u32>,
    /// Simultaneous multithreading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl MachineConfigurationUpdate {
    /// `base` with this update's fields applied (not validated: check the result).
    pub fn apply(&self, base: &MachineConfiguration) -> MachineConfiguration {
        let mut m = base.clone();
        if let Some(v) = self.vcpu_count {
            m.vcpu_count = v;
        }
        if let Some(v) = self.mem_size_mib {
            m.mem_size_mib = v;
        }
        if self.smt.is_some() {
            m.smt = self.smt;
        }
        if self.track_dirty_pages.is_some() {
            m.track_dirty_pages = self.track_dirty_pages;
        }
        if self.huge_pages.is_some() {
            m.huge_pages = self.huge_pages;
        }
        if self.cpu_template.is_some() {
            m.cpu_template = self.cpu_template.clone();
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_carry_only_what_is_set() {
        assert_eq!(
            serde_json::to_value(MachineConfiguration::new(1, 128)).unwrap(),
            json!({"vcpu_count": 1, "mem_size_mib": 128})
        );
        assert_eq!(
            serde_json::to_value(MachineConfiguration::default().with_defaults()).unwrap(),
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                   "track_dirty_pages": false, "huge_pages": "None"})
        );
        let hp: MachineConfiguration = serde_json::from_value(
            json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}),
        )
        .unwrap();
        assert_eq!(hp.huge_pages, Some(HugePages::Hugetlbfs2M));
        assert!(
            serde_json::from_value::<MachineConfiguration>(
                json!({"vcpu_count": 1, "mem_size_mib": 128, "color": 1})
            )
            .is_err()
        );
    }

    #[test]
    fn vcpu_range_and_updates() {
        assert_eq!(
            MachineConfiguration::new(0, 128)
                .validate()
                .unwrap_err()
                .field,
            "vcpu_count"
        );
        assert!(MachineConfiguration::new(33, 128).validate().is_err());
        MachineConfiguration::new(32, 128).validate().unwrap();
        let base = MachineConfiguration::default().with_defaults();
        let u = MachineConfigurationUpdate {
            mem_size_mib: Some(64),
            smt: Some(true),
            ..Default::default()
        };
        let m = u.apply(&base);
        assert_eq!((m.vcpu_count, m.mem_size_mib, m.smt), (1, 64, Some(true)));
        assert_eq!(m.huge_pages, Some(HugePages::None));
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"mem_size_mib":64,"smt":true}"#
        );
    }
}
