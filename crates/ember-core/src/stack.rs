//! [`StackKey`]: what a warm pool bucket, a template snapshot and a pooled VM are keyed by.
//!
//! A stack is a template microVM image at a version with a machine shape. Two requests for the same
//! key may be served by the same pre-restored VMs, so every part that matters for compatibility is
//! in the key. The constructor is the only way in, so a `StackKey` in hand is always valid.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::validate_id;

/// Longest stack name accepted, in bytes.
pub const MAX_STACK_NAME_LEN: usize = 48;
/// Longest stack version accepted, in bytes.
pub const MAX_STACK_VERSION_LEN: usize = 32;
/// Most vCPUs a microVM may have.
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory accepted, in MiB.
pub const MIN_MEM_MIB: u32 = 16;
/// Largest guest memory accepted, in MiB (256 GiB).
pub const MAX_MEM_MIB: u32 = 256 * 1024;

/// Identifies a pool bucket: stack name, version, vCPU count and memory size.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawStackKey")]
pub struct StackKey {
    name: String,
    version: String,
    vcpu_count: u8,
    mem_size_mib: u32,
}

/// The unvalidated wire shape of a [`StackKey`]; deserialization goes through [`StackKey::new`].
#[derive(Deserialize)]
struct RawStackKey {
    name: String,
    version: String,
    vcpu_count: u8,
    mem_size_mib: u32,
}

impl TryFrom<RawStackKey> for StackKey {
    type Error = VmError;
    fn try_from(raw: RawStackKey) -> Result<Self, VmError> {
        StackKey::new(raw.name, raw.version, raw.vcpu_count, raw.mem_size_mib)
    }
}

impl StackKey {
    /// Validates every part and builds the key.
    ///
    /// `name` and `version` follow the identifier rules of [`validate_id`] with shorter limits
    /// ([`MAX_STACK_NAME_LEN`], [`MAX_STACK_VERSION_LEN`]); `vcpu_count` is 1..=[`MAX_VCPUS`];
    /// `mem_size_mib` is [`MIN_MEM_MIB`]..=[`MAX_MEM_MIB`].
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        vcpu_count: u8,
        mem_size_mib: u32,
    ) -> Result<Self, VmError> {
        let name = name.into();
        let version = version.into();
        validate_id("stack.name", &name)?;
        if name.len() > MAX_STACK_NAME_LEN {
            return Err(VmError::invalid_spec(
                "stack.name",
                format!("{name:?} is longer than {MAX_STACK_NAME_LEN} bytes"),
            ));
        }
        validate_id("stack.version", &version)?;
        if version.len() > MAX_STACK_VERSION_LEN {
            return Err(VmError::invalid_spec(
                "stack.version",
                format!("{version:?} is longer than {MAX_STACK_VERSION_LEN} bytes"),
            ));
        }
        validate_vcpus("stack.vcpu_count", vcpu_count)?;
        validate_mem("stack.mem_size_mib", mem_size_mib)?;
        Ok(Self {
            name,
            version,
            vcpu_count,
            mem_size_mib,
        })
    }

    /// The stack (template) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// vCPUs of every VM in this stack.
    pub fn vcpu_count(&self) -> u8 {
        self.vcpu_count
    }

    /// Guest memory of every VM in this stack, in MiB.
    pub fn mem_size_mib(&self) -> u32 {
        self.mem_size_mib
    }

    /// A compact form made only of identifier characters, for use inside VM ids and file names:
    /// `alpha-1.0.0-2c-256m`.
    pub fn slug(&self) -> String {
        format!(
            "{}-{}-{}c-{}m",
            self.name, self.version, self.vcpu_count, self.mem_size_mib
        )
    }
}

impl fmt::Display for StackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({} vCPU, {} MiB)",
            self.name, self.version, self.vcpu_count, self.mem_size_mib
        )
    }
}

/// Checks a vCPU count against 1..=[`MAX_VCPUS`], naming `field` in the error.
pub fn validate_vcpus(field: &str, vcpus: u8) -> Result<(), VmError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(VmError::invalid_spec(
            field,
            format!("{vcpus} is out of range; 1 to {MAX_VCPUS} vCPUs are allowed"),
        ));
    }
    Ok(())
}

/// Checks a memory size against [`MIN_MEM_MIB`]..=[`MAX_MEM_MIB`], naming `field` in the error.
pub fn validate_mem(field: &str, mib: u32) -> Result<(), VmError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
        return Err(VmError::invalid_spec(
            field,
            format!("{mib} MiB is out of range; {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB are allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_key_and_slug() {
        let k = StackKey::new("alpha", "1.0.0", 2, 256).unwrap();
        assert_eq!(k.slug(), "alpha-1.0.0-2c-256m");
        assert_eq!(k.to_string(), "alpha@1.0.0 (2 vCPU, 256 MiB)");
        crate::id::validate_id("slug", &k.slug()).unwrap();
    }

    #[test]
    fn each_bad_part_is_named() {
        let cases = [
            (StackKey::new("", "1", 1, 128), "stack.name"),
            (StackKey::new("a/b", "1", 1, 128), "stack.name"),
            (StackKey::new("x".repeat(49), "1", 1, 128), "stack.name"),
            (StackKey::new("a", "1 0", 1, 128), "stack.version"),
            (StackKey::new("a", "1", 0, 128), "stack.vcpu_count"),
            (StackKey::new("a", "1", 33, 128), "stack.vcpu_count"),
            (StackKey::new("a", "1", 1, 8), "stack.mem_size_mib"),
        ];
        for (result, field) in cases {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let k = StackKey::new("alpha", "1.0.0", 1, 128).unwrap();
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(
            json,
            r#"{"name":"alpha","version":"1.0.0","vcpu_count":1,"mem_size_mib":128}"#
        );
        assert_eq!(serde_json::from_str::<StackKey>(&json).unwrap(), k);
        let bad = r#"{"name":"al pha","version":"1","vcpu_count":1,"mem_size_mib":128}"#;
        let err = serde_json::from_str::<StackKey>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stack.name"), "{err}");
    }
}
