//! The snapshot record: [`SnapshotRecord`] (a state file and a memory file, their sizes and
//! checksum, the stack they belong to and, for diff snapshots, their parent), with its validation.
//!
//! Snapshots are immutable once saved: there is no update, only save and remove. Pure values;
//! reading and writing rows is the private `sql` module's job.

use std::path::PathBuf;
use std::time::SystemTime;

use ember_core::{SnapshotId, StackKey};
use serde::{Deserialize, Serialize};

use crate::columns::{path_text, u64_to_sql};
use crate::error::StoreError;

/// Longest checksum accepted, in bytes (`sha512:` and 128 hex digits fit).
pub const MAX_CHECKSUM_LEN: usize = 160;

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its id (the record's key).
    pub id: SnapshotId,
    /// The stack (template) that owns it; snapshots outlive the VM they were taken from.
    pub stack: Option<StackKey>,
    /// The VM state file.
    pub state_path: PathBuf,
    /// The guest memory file.
    pub mem_path: PathBuf,
    /// Size of the state file in bytes.
    pub state_size: u64,
    /// Size of the memory file in bytes.
    pub mem_size: u64,
    /// Checksum of the files, written `<algorithm>:<lowercase hex>` (`crc32:1a2b3c4d`).
    pub checksum: String,
    /// When it was taken (millisecond precision).
    #[serde(with = "ember_core::view::unix_millis")]
    pub created_at: SystemTime,
    /// The snapshot this one is a diff of; must be in the store.
    pub parent: Option<SnapshotId>,
}

impl SnapshotRecord {
    /// Checks every field, naming the first one at fault (`snapshot.<field>`).
    pub fn validate(&self) -> Result<(), StoreError> {
        path_text("snapshot.state_path", &self.state_path)?;
        path_text("snapshot.mem_path", &self.mem_path)?;
        u64_to_sql("snapshot.state_size", self.state_size)?;
        u64_to_sql("snapshot.mem_size", self.mem_size)?;
        validate_checksum(&self.checksum)?;
        if self.parent.as_ref() == Some(&self.id) {
            return Err(StoreError::invalid(
                "snapshot.parent",
                format!("snapshot {} cannot be its own parent", self.id),
            ));
        }
        Ok(())
    }
}

/// `<algorithm>:<hex>`: a lowercase algorithm name of letters and digits, a colon, and lowercase
/// hexadecimal digits, at most [`MAX_CHECKSUM_LEN`] bytes in all.
fn validate_checksum(value: &str) -> Result<(), StoreError> {
    let ok = value.len() <= MAX_CHECKSUM_LEN
        && value.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && !hex.is_empty()
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "snapshot.checksum",
            format!(
                "{value:?} is not '<algorithm>:<lowercase hex>' (like crc32:1a2b3c4d), at most {MAX_CHECKSUM_LEN} bytes"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> SnapshotRecord {
        SnapshotRecord {
            id: SnapshotId::new("s1").unwrap(),
            stack: None,
            state_path: "/snap/s1.state".into(),
            mem_path: "/snap/s1.mem".into(),
            state_size: 4096,
            mem_size: 128 << 20,
            checksum: "crc32:00ff12ab".into(),
            created_at: SystemTime::UNIX_EPOCH,
            parent: None,
        }
    }

    #[test]
    fn checksum_format_is_enforced() {
        snap().validate().unwrap();
        for bad in [
            "",
            "crc32",
            "crc32:",
            ":abcd",
            "CRC32:ab",
            "crc32:XY",
            "sha 256:ab",
        ] {
            let mut s = snap();
            s.checksum = bad.into();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("snapshot.checksum"), "{bad}: {err}");
        }
    }

    #[test]
    fn self_parent_and_huge_sizes_are_rejected() {
        let mut s = snap();
        s.parent = Some(s.id.clone());
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("snapshot.parent")
        );
        let mut s = snap();
        s.mem_size = u64::MAX;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("snapshot.mem_size")
        );
    }
}
